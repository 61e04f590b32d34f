#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""pyload.py: GetDataKey load from a client written outside keybroker:
Python grpcio's asyncio API (grpc.aio), with mutual TLS.

  /usr/bin/python3 tests/bench/pyload.py --addr 127.0.0.1:7443 \\
      --ca var/pki/ca.crt --cert var/pki/service-acme-prod.crt \\
      --key var/pki/service-acme-prod.key --tenant acme --env prod \\
      [--inflight 64] [--seconds 5] [--warmup 1] [--channels 1] [--json]

Keeps --inflight calls in flight (one coroutine each, awaiting one call
after another) for --warmup + --seconds seconds and counts the calls that
started and ended inside the measured window: calls/s, p50/p99/max latency
and errors. Stubs are generated from proto/keybroker.proto with grpc_tools
into --stubs (default: a temporary directory). Use /usr/bin/python3: it is
the interpreter with Debian's grpcio. Exit status 0 unless it could not run.
"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import grpc


def load_stubs(proto_dir, out):
    """keybroker_pb2 and keybroker_pb2_grpc, generated into `out` once."""
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, "keybroker_pb2_grpc.py")):
        from grpc_tools import protoc
        tmp = tempfile.mkdtemp(prefix=".gen.", dir=out)
        args = ["grpc_tools.protoc", "-I" + proto_dir, "--python_out=" + tmp,
                "--grpc_python_out=" + tmp,
                os.path.join(proto_dir, "keybroker.proto")]
        if protoc.main(args) != 0:
            sys.exit("pyload: grpc_tools.protoc failed on " + proto_dir)
        for f in ("keybroker_pb2.py", "keybroker_pb2_grpc.py"):
            os.replace(os.path.join(tmp, f), os.path.join(out, f))
        os.rmdir(tmp)
    sys.path.insert(0, out)
    import keybroker_pb2
    import keybroker_pb2_grpc
    return keybroker_pb2, keybroker_pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def percentile(sorted_v, p):
    """Nearest rank, like kb-bench."""
    if not sorted_v:
        return 0.0
    k = max(0, (len(sorted_v) * p + 99) // 100 - 1)
    return sorted_v[k]


async def run(a, pb, pb_grpc):
    creds = grpc.ssl_channel_credentials(root_certificates=read(a.ca),
                                         private_key=read(a.key),
                                         certificate_chain=read(a.cert))
    channels = [grpc.aio.secure_channel(a.addr, creds)
                for _ in range(a.channels)]
    stubs = [pb_grpc.KeyBrokerStub(ch) for ch in channels]
    req = pb.GetDataKeyRequest(tenant_id=a.tenant, environment=a.env)
    # Connect every channel (TLS handshake) before the clock runs.
    for s in stubs:
        await s.GetDataKey(req, timeout=30)
    lat = []
    errors = [0]
    first_error = []
    start = time.perf_counter() + a.warmup
    end = start + a.seconds

    async def one(stub):
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            ok = True
            try:
                r = await stub.GetDataKey(req, timeout=30)
                ok = len(r.dek) == 32
                if not ok and not first_error:
                    first_error.append("DEK of %d bytes" % len(r.dek))
            except grpc.aio.AioRpcError as e:
                ok = False
                if not first_error:
                    first_error.append("%s: %s" % (e.code().name, e.details()))
            t1 = time.perf_counter()
            if t0 < start or t1 > end:
                continue
            if ok:
                lat.append(t1 - t0)
            else:
                errors[0] += 1

    await asyncio.gather(*(one(stubs[i % len(stubs)])
                           for i in range(a.inflight)))
    for ch in channels:
        await ch.close()
    lat.sort()
    return {
        "client": "python-grpc-aio",
        "grpcio": grpc.__version__,
        "in_flight": a.inflight,
        "channels": a.channels,
        "secs": a.seconds,
        "calls": len(lat),
        "errors": errors[0],
        "rate": len(lat) / a.seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else 0.0,
        "first_error": first_error[0] if first_error else "",
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--addr", default=os.environ.get("KB_ADDR", "127.0.0.1:7443"))
    p.add_argument("--ca", default=os.environ.get("KB_CA"))
    p.add_argument("--cert", default=os.environ.get("KB_CERT"))
    p.add_argument("--key", default=os.environ.get("KB_KEY"))
    p.add_argument("--tenant", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--channels", type=int, default=1,
                   help="channels (TLS connections) the calls share")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--stubs", default=None)
    p.add_argument("--proto", default=os.path.join(here, "..", "..", "proto"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not (a.ca and a.cert and a.key):
        p.error("--ca, --cert and --key (or KB_CA, KB_CERT, KB_KEY) are needed")
    if a.inflight < 1 or a.channels < 1 or a.seconds <= 0:
        p.error("--inflight, --channels and --seconds must be positive")
    pb, pb_grpc = load_stubs(os.path.abspath(a.proto),
                             a.stubs or tempfile.mkdtemp(prefix="pyload-stubs."))
    r = asyncio.run(run(a, pb, pb_grpc))
    if a.json:
        print(json.dumps(r))
    else:
        print("GetDataKey, Python grpc.aio %s, %d in flight on %d channel(s), "
              "%.1f s: %.0f calls/s, p50 %.2f ms, p99 %.2f ms, max %.2f ms, "
              "%d errors%s" % (r["grpcio"], r["in_flight"], r["channels"],
                               r["secs"], r["rate"], r["p50_ms"], r["p99_ms"],
                               r["max_ms"], r["errors"],
                               (" (first: %s)" % r["first_error"])
                               if r["first_error"] else ""))


if __name__ == "__main__":
    main()
