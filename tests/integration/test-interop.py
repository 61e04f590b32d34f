#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-interop.py: talk to a running keybrokerd with another gRPC stack.

Python grpcio (Debian's, hence /usr/bin/python3) with stubs generated from
proto/ by grpc_tools.protoc into a temporary directory. Checks, over mutual
TLS with a service certificate:
  - grpc.health.v1.Health/Check answers SERVING;
  - WhoAmI names the service role and the certificate's environment;
  - GetDataKey returns the DEK kbctl printed (--expect-dek, base64), 32 bytes;
  - many concurrent GetDataKey calls all return that DEK;
  - GetDataKey for another environment is PERMISSION_DENIED (--other-env);
  - a malformed request is INVALID_ARGUMENT, an unknown method UNIMPLEMENTED,
    an oversized one RESOURCE_EXHAUSTED, and the broker still answers after.
With --expect-refused, only checks that the broker itself (grpcio does no
client-side validity check) refuses the certificate: UNAVAILABLE or
UNAUTHENTICATED.
Prints "ok ..."/"FAIL ..." lines and "N passed, N failed"; exits 1 on failure.
"""
import argparse
import base64
import os
import shutil
import sys
import tempfile

import grpc
from grpc_tools import protoc

SERVICE = "/keybroker.v1.KeyBroker/"

passed = 0
failed = 0


def report(ok, desc, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok   " + desc)
    else:
        failed += 1
        print("FAIL " + desc + (": " + detail if detail else ""))


def status_of(fn):
    """Run fn(); return (grpc.StatusCode, details) of its RpcError, or (OK, result)."""
    try:
        return grpc.StatusCode.OK, fn()
    except grpc.RpcError as e:
        return e.code(), e.details()


def gen_stubs(proto_dir, out_dir):
    args = ["grpc_tools.protoc", "-I" + proto_dir, "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir, os.path.join(proto_dir, "keybroker.proto")]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on " + proto_dir)
    sys.path.insert(0, out_dir)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("KB_ADDR", "127.0.0.1:7443"))
    ap.add_argument("--ca", default=os.environ.get("KB_CA"))
    ap.add_argument("--cert", default=os.environ.get("KB_CERT"))
    ap.add_argument("--key", default=os.environ.get("KB_KEY"))
    ap.add_argument("--tenant")
    ap.add_argument("--env")
    ap.add_argument("--expect-refused", action="store_true",
                    help="only check that the broker refuses this certificate "
                    "(UNAVAILABLE or UNAUTHENTICATED) without a client-side check")
    ap.add_argument("--expect-dek", default=os.environ.get("KBT_EXPECT_DEK"),
                    help="base64 DEK that kbctl printed")
    ap.add_argument("--other-env", help="an environment this certificate may not read")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-message-bytes", type=int, default=65536)
    ap.add_argument("--proto-dir", default=os.path.join(here, "..", "..", "proto"))
    a = ap.parse_args()
    for name in ("ca", "cert", "key"):
        if not getattr(a, name):
            ap.error("--%s (or KB_%s) is required" % (name, name.upper()))
    if not a.expect_refused and not (a.tenant and a.env):
        ap.error("--tenant and --env are required")

    tmp = tempfile.mkdtemp(prefix="kbt-interop.")
    try:
        gen_stubs(os.path.abspath(a.proto_dir), tmp)
        import keybroker_pb2 as pb
        import keybroker_pb2_grpc as pb_grpc

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(
            root_certificates=read(a.ca), private_key=read(a.key),
            certificate_chain=read(a.cert))
        with grpc.secure_channel(a.addr, creds) as ch:
            if a.expect_refused:
                stub = pb_grpc.KeyBrokerStub(ch)
                code, d = status_of(lambda: stub.WhoAmI(pb.WhoAmIRequest(), timeout=10))
                report(code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED),
                       "the broker refuses %s (%s)" % (os.path.basename(a.cert), code),
                       "%s %s" % (code, d))
                return finish()
            grpc.channel_ready_future(ch).result(timeout=20)
            stub = pb_grpc.KeyBrokerStub(ch)
            raw = lambda method: ch.unary_unary(method)  # bytes in, bytes out

            code, r = status_of(lambda: raw("/grpc.health.v1.Health/Check")(b"", timeout=10))
            # HealthCheckResponse{status: SERVING (1)} is the two bytes 08 01.
            report(code == grpc.StatusCode.OK and r == b"\x08\x01",
                   "Health/Check answers SERVING", "%s %r" % (code, r))

            code, r = status_of(lambda: stub.WhoAmI(pb.WhoAmIRequest(), timeout=10))
            want_env = a.tenant + "/" + a.env
            report(code == grpc.StatusCode.OK and r.role == pb.ROLE_SERVICE
                   and want_env in r.environments,
                   "WhoAmI: role service, environment " + want_env, "%s %s" % (code, r))

            req = pb.GetDataKeyRequest(tenant_id=a.tenant, environment=a.env)
            code, r = status_of(lambda: stub.GetDataKey(req, timeout=10))
            ok = code == grpc.StatusCode.OK
            report(ok and len(r.dek) == 32, "GetDataKey returns a 32-byte DEK",
                   "%s %s" % (code, "%d bytes" % len(r.dek) if ok else r))
            dek = r.dek if ok else None
            if a.expect_dek is not None:
                report(dek is not None and base64.b64encode(dek).decode() == a.expect_dek,
                       "GetDataKey DEK equals the one kbctl printed")
            if ok:
                report(r.tenant_id == a.tenant and r.environment == a.env
                       and r.dek_version >= 1,
                       "GetDataKey names tenant, environment and a version >= 1",
                       "tenant_id=%r environment=%r dek_version=%r"
                       % (r.tenant_id, r.environment, r.dek_version))

            futs = [stub.GetDataKey.future(req, timeout=30) for _ in range(a.concurrency)]
            results = [status_of(f.result) for f in futs]
            bad = [c for c, r in results if c != grpc.StatusCode.OK or r.dek != dek]
            report(dek is not None and not bad,
                   "%d concurrent GetDataKey calls all return the DEK" % a.concurrency,
                   "%d wrong: %s" % (len(bad), sorted(set(str(c) for c in bad))))

            if a.other_env:
                oreq = pb.GetDataKeyRequest(tenant_id=a.tenant, environment=a.other_env)
                code, d = status_of(lambda: stub.GetDataKey(oreq, timeout=10))
                report(code == grpc.StatusCode.PERMISSION_DENIED,
                       "GetDataKey %s/%s is PERMISSION_DENIED" % (a.tenant, a.other_env),
                       "%s %s" % (code, d))

            # Field 1 (tenant_id, length-delimited) claiming 100 bytes, giving 1.
            code, d = status_of(lambda: raw(SERVICE + "GetDataKey")(b"\x0a\x64x", timeout=10))
            report(code == grpc.StatusCode.INVALID_ARGUMENT,
                   "a malformed GetDataKey request is INVALID_ARGUMENT", "%s %s" % (code, d))

            code, d = status_of(lambda: raw(SERVICE + "NoSuchMethod")(b"", timeout=10))
            report(code == grpc.StatusCode.UNIMPLEMENTED,
                   "an unknown method is UNIMPLEMENTED", "%s %s" % (code, d))

            big = pb.GetDataKeyRequest(tenant_id="x" * (a.max_message_bytes + 1024),
                                       environment=a.env).SerializeToString()
            code, d = status_of(lambda: raw(SERVICE + "GetDataKey")(big, timeout=10))
            report(code == grpc.StatusCode.RESOURCE_EXHAUSTED,
                   "a request over max_message_bytes is RESOURCE_EXHAUSTED",
                   "%s %s" % (code, d))

            code, r = status_of(lambda: stub.GetDataKey(req, timeout=10))
            report(code == grpc.StatusCode.OK and r.dek == dek,
                   "after the bad requests GetDataKey still returns the DEK", str(code))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return finish()


def finish():
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
