#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-edge-flood.py: TLS handshakes with a certificate the broker must
refuse, as fast as this machine allows, next to a service calling
GetDataKey.

  test-edge-flood.py --addr HOST:PORT --ca CA --cert C --key K
                     --svc-cert C --svc-key K --tenant T --env E
                     [--seconds S] [--max N] [--procs P]

Each flood process opens a TCP connection, does the TLS handshake (ALPN h2)
with --cert/--key and reads until the broker closes: a broker that verifies
client certificates in the handshake answers with an alert (TLS 1.3 sends
it after the client's Finished). A connection the broker accepts counts as
"accepted" (the test wants none). Meanwhile one thread calls GetDataKey as
the service every 20 ms. Prints one JSON line:
{"attempts", "refused", "accepted", "seconds", "dek_ok", "dek_fail",
 "dek_p50_ms", "dek_p99_ms", "dek_errors"}.
"""
import argparse
import json
import multiprocessing
import os
import socket
import ssl
import sys
import threading
import time

import grpc

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import kbt_grpc  # noqa: E402


def flood(addr, ca, cert, key, deadline, quota, out):
    host, port = addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    attempts = refused = accepted = 0
    while attempts < quota and time.monotonic() < deadline:
        attempts += 1
        try:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                with ctx.wrap_socket(s, server_hostname=host) as t:
                    t.settimeout(5)
                    # The server's settings frame (accepted) or its alert.
                    data = t.recv(1)
                    if data:
                        accepted += 1
                    else:
                        refused += 1
        except (ssl.SSLError, ConnectionError, OSError):
            refused += 1
    out.put((attempts, refused, accepted))


def service_loop(addr, ca, cert, key, tenant, env, stop, res):
    pb, pb_grpc = kbt_grpc.stubs()
    ch = kbt_grpc.channel(addr, ca, cert, key)
    stub = pb_grpc.KeyBrokerStub(ch)
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = stub.GetDataKey(pb.GetDataKeyRequest(tenant_id=tenant, environment=env),
                                timeout=10)
            res["lat"].append(time.monotonic() - t0)
            res["ok"] += 1 if len(r.dek) == 32 else 0
        except grpc.RpcError as e:
            res["fail"] += 1
            if len(res["errors"]) < 5:
                res["errors"].append("%s: %s" % (e.code().name, e.details()))
        stop.wait(0.02)
    ch.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for a in ("addr", "ca", "cert", "key", "svc-cert", "svc-key", "tenant", "env"):
        ap.add_argument("--" + a, required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max", type=int, default=100000)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()

    kbt_grpc.stubs()      # generate them once, before the clock runs
    res = {"ok": 0, "fail": 0, "lat": [], "errors": []}
    stop = threading.Event()
    th = threading.Thread(target=service_loop, args=(
        a.addr, a.ca, a.svc_cert, a.svc_key, a.tenant, a.env, stop, res))
    th.start()
    t0 = time.monotonic()
    deadline = t0 + a.seconds
    # Spawned, not forked: a child forked from a process whose gRPC threads
    # are running can hang in gRPC's fork handlers.
    mp = multiprocessing.get_context("spawn")
    q = mp.Queue()
    per = [a.max // a.procs + (1 if i < a.max % a.procs else 0) for i in range(a.procs)]
    procs = [mp.Process(target=flood, args=(
        a.addr, a.ca, a.cert, a.key, deadline, per[i], q)) for i in range(a.procs)]
    for p in procs:
        p.start()
    counts = [q.get(timeout=a.seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    secs = time.monotonic() - t0
    time.sleep(0.5)       # a few service calls after the flood, too
    stop.set()
    th.join()
    lat = sorted(res["lat"])

    def pct(p):
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None
    print(json.dumps({
        "attempts": sum(c[0] for c in counts), "refused": sum(c[1] for c in counts),
        "accepted": sum(c[2] for c in counts), "seconds": round(secs, 1),
        "dek_ok": res["ok"], "dek_fail": res["fail"], "dek_p50_ms": pct(0.5),
        "dek_p99_ms": pct(0.99), "dek_errors": res["errors"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
