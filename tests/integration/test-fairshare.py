#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-fairshare.py: the grpcio side of test-fairshare.sh: rate limits and
stream caps against a running keybrokerd.

  test-fairshare.py rate --pki DIR --quiet T/E --flood T/E --flood T/E
                    --identity-rate N --identity-burst N --tenant-rate N
                    --tenant-burst N [--seconds S] [--inflight N]
      The quiet service (certificate DIR/service-T-E) calls GetDataKey one
      call at a time, every 20 ms, for S seconds alone, then for S seconds
      while the first flooding service keeps N calls in flight (grpc.aio,
      a process) as fast as the broker answers, then for S seconds while
      both flood (two services of one tenant, whose rate is below the sum
      of theirs). Checks: every quiet call succeeds; the flooders get only
      OK and RESOURCE_EXHAUSTED, naming rate_per_identity (alone) and
      rate_per_tenant (together), the time to retry, and the trailer
      retry-after-ms saying the same; nobody is served more than the rates
      allow. Prints the quiet service's p50/p99 alone and during each
      flood (not asserted).
  test-fairshare.py streams --pki DIR --cap N
      As the auditor: N TailEvents streams open, the next one is refused
      RESOURCE_EXHAUSTED naming max_streams_per_identity; the admin still
      opens one; a stream that ends frees its slot, whether its client
      cancels it, its deadline passes or its connection closes.
  test-fairshare.py hold --pki DIR --cap N --ready FILE
      As the auditor: N streams open (FILE written once they are), held
      until the broker ends them; exits 0 if every one ended UNAVAILABLE.

Connection: --addr and --ca, or KB_ADDR and KB_CA. Report lines as
kbt_grpc.report prints them (lib.sh's kbt_py_report counts them).
"""
import argparse
import asyncio
import multiprocessing
import os
import re
import sys
import threading
import time

import grpc

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import kbt_grpc  # noqa: E402
from kbt_grpc import info, report  # noqa: E402

KB = "/keybroker.v1.KeyBroker/"
RE_ID = re.compile(r'service "[a-z0-9-]+" is over its rate limit \(rate_per_identity = '
                   r'(\d+) calls/s, rate_per_identity_burst = (\d+)\): retry in (\d+) ms')
RE_TENANT = re.compile(r'tenant "([a-z0-9-]+)" is over its rate limit, shared by all its '
                       r'callers \(rate_per_tenant = (\d+) calls/s, rate_per_tenant_burst = '
                       r'(\d+)\): retry in (\d+) ms')


def cert(a, name):
    return os.path.join(a.pki, name + ".crt"), os.path.join(a.pki, name + ".key")


def chan(a, name):
    c, k = cert(a, name)
    return kbt_grpc.channel(a.addr, a.ca, c, k)


def pct(v, p):
    """Nearest rank, like kb-bench."""
    if not v:
        return float("nan")
    v = sorted(v)
    return v[max(0, (len(v) * p + 99) // 100 - 1)]


# ---- rate ----

def flood_main(addr, ca, crt, key, tenant, env, seconds, inflight, q):
    """One flooding service: `inflight` calls always in flight. Puts a dict
    of counts (and a few samples) on q."""
    pb, pb_grpc = kbt_grpc.stubs()
    res = {"who": "%s/%s" % (tenant, env), "ok": 0, "identity": 0, "tenant": 0,
           "other": 0, "trailer": 0, "no_trailer": 0, "samples": [], "others": [],
           "bad_retry": [], "secs": 0.0}

    async def run():
        creds = grpc.ssl_channel_credentials(kbt_grpc.read(ca), kbt_grpc.read(key),
                                             kbt_grpc.read(crt))
        async with grpc.aio.secure_channel(addr, creds) as ch:
            stub = pb_grpc.KeyBrokerStub(ch)
            req = pb.GetDataKeyRequest(tenant_id=tenant, environment=env)
            await ch.channel_ready()
            t0 = time.monotonic()
            end = t0 + seconds

            async def one():
                while time.monotonic() < end:
                    try:
                        r = await stub.GetDataKey(req, timeout=30)
                        res["ok"] += len(r.dek) == 32
                        continue
                    except grpc.aio.AioRpcError as e:
                        code, msg = e.code(), e.details() or ""
                        md = {k: v for k, v in (e.trailing_metadata() or ())}
                    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        res["other"] += 1
                        if len(res["others"]) < 3:
                            res["others"].append("%s: %s" % (code.name, msg))
                        continue
                    m_id, m_t = RE_ID.search(msg), RE_TENANT.search(msg)
                    if m_id:
                        res["identity"] += 1
                    elif m_t:
                        res["tenant"] += 1
                    else:
                        res["other"] += 1
                        if len(res["others"]) < 3:
                            res["others"].append("RESOURCE_EXHAUSTED: " + msg)
                    if len(res["samples"]) < 2 or (m_t and res["tenant"] == 1):
                        res["samples"].append(msg)
                    ms = (m_id or m_t)
                    if "retry-after-ms" in md:
                        res["trailer"] += 1
                        if ms and md["retry-after-ms"] != ms.groups()[-1]:
                            res["bad_retry"].append((md["retry-after-ms"], msg))
                    else:
                        res["no_trailer"] += 1

            await asyncio.gather(*(one() for _ in range(inflight)))
            res["secs"] = time.monotonic() - t0

    asyncio.run(run())
    q.put(res)


def quiet_run(a, stub, pb, tenant, env, seconds):
    """GetDataKey one at a time every 20 ms: (latencies, failures)."""
    lat, fails = [], []
    end = time.monotonic() + seconds
    req = pb.GetDataKeyRequest(tenant_id=tenant, environment=env)
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            r = stub.GetDataKey(req, timeout=10)
            if len(r.dek) == 32:
                lat.append(time.monotonic() - t0)
            else:
                fails.append("a DEK of %d bytes" % len(r.dek))
        except grpc.RpcError as e:
            fails.append("%s: %s" % (e.code().name, e.details()))
        time.sleep(0.02)
    return lat, fails


def flood_phase(a, stub, pb, specs):
    """Flood with the services `specs` (TENANT/ENV each, a process each)
    while the quiet service measures: (its latencies, failures, the floods'
    counts)."""
    qt, qe = a.quiet.split("/")
    q = multiprocessing.Queue()
    procs = []
    for spec in specs:
        t, e = spec.split("/")
        crt, key = cert(a, "service-%s-%s" % (t, e))
        procs.append(multiprocessing.Process(target=flood_main, args=(
            a.addr, a.ca, crt, key, t, e, a.seconds + 1.0, a.inflight, q)))
    for p in procs:
        p.start()
    time.sleep(0.5)        # the flood is at full speed before we measure
    lat, fails = quiet_run(a, stub, pb, qt, qe, a.seconds)
    floods = [q.get(timeout=a.seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return lat, fails, floods


def check_flood(a, f, kind):
    """The checks on one flooder's answers; `kind` is the limit it must
    have met ("identity" or "tenant")."""
    refused = f["identity"] + f["tenant"]
    info("flooder %s: %.1f s, %d served (%.0f/s), %d refused by rate_per_identity, "
         "%d by rate_per_tenant (%.0f calls/s offered), %d other" % (
             f["who"], f["secs"], f["ok"], f["ok"] / f["secs"], f["identity"],
             f["tenant"], (f["ok"] + refused + f["other"]) / f["secs"], f["other"]))
    for s in f["samples"][:3]:
        info("  e.g. RESOURCE_EXHAUSTED: %s" % s)
    samples = " ".join(f["samples"])
    if kind == "identity":
        m = RE_ID.search(samples)
        report(f["identity"] > 0 and m is not None and int(m.group(1)) == a.identity_rate and
               int(m.group(2)) == a.identity_burst,
               "flooder %s is refused RESOURCE_EXHAUSTED naming rate_per_identity = %d, its "
               "burst %d and the time to retry" % (f["who"], a.identity_rate, a.identity_burst),
               str(f["samples"][:2]))
        # The bucket, not the clock: at most the burst plus the rate over the
        # time the flood ran (and a second of slack for the client's clock).
        most = a.identity_burst + a.identity_rate * (f["secs"] + 1.0)
        report(f["ok"] <= most, "flooder %s was served at most what its rate allows "
               "(%d served, at most %d)" % (f["who"], f["ok"], most))
    report(f["other"] == 0, "flooder %s gets no answer but OK and the rate limits' "
           "RESOURCE_EXHAUSTED" % f["who"], str(f["others"]))
    report(f["no_trailer"] == 0 and f["trailer"] == refused and not f["bad_retry"],
           "flooder %s: every refusal carries the trailer retry-after-ms, equal to the "
           "message's retry time (%d of %d)" % (f["who"], f["trailer"], refused),
           str(f["bad_retry"][:2]))


def cmd_rate(a):
    pb, pb_grpc = kbt_grpc.stubs()
    qt, qe = a.quiet.split("/")
    ch = chan(a, "service-%s-%s" % (qt, qe))
    stub = pb_grpc.KeyBrokerStub(ch)
    stub.GetDataKey(pb.GetDataKeyRequest(tenant_id=qt, environment=qe), timeout=10)
    lat = {}

    lat["alone"], fails = quiet_run(a, stub, pb, qt, qe, a.seconds)
    report(not fails and lat["alone"], "the quiet service's %d GetDataKey calls alone all "
           "succeed" % len(lat["alone"]), "; ".join(fails[:3]))

    # One flooder: it meets its identity's rate.
    lat["one flooder"], fails, floods = flood_phase(a, stub, pb, a.flood[:1])
    report(not fails and lat["one flooder"], "the quiet service's %d GetDataKey calls "
           "during %s's flood all succeed" % (len(lat["one flooder"]), a.flood[0]),
           "; ".join(fails[:3]))
    check_flood(a, floods[0], "identity")

    # Two flooders of one tenant: together they meet the tenant's rate.
    lat["two flooders"], fails, floods = flood_phase(a, stub, pb, a.flood)
    report(not fails and lat["two flooders"], "the quiet service's %d GetDataKey calls "
           "during the flood of %s all succeed" % (len(lat["two flooders"]),
                                                   " and ".join(a.flood)),
           "; ".join(fails[:3]))
    for f in floods:
        check_flood(a, f, "tenant")
    tenant = sum(f["tenant"] for f in floods)
    m = RE_TENANT.search(" ".join(s for f in floods for s in f["samples"]))
    report(tenant > 0 and m is not None and int(m.group(2)) == a.tenant_rate and
           int(m.group(3)) == a.tenant_burst,
           "together they are refused RESOURCE_EXHAUSTED naming the tenant, rate_per_tenant "
           "= %d, its burst %d and the time to retry (%d refusals)"
           % (a.tenant_rate, a.tenant_burst, tenant))
    both = sum(f["ok"] for f in floods)
    most = a.tenant_burst + a.tenant_rate * (max(f["secs"] for f in floods) + 1.0)
    report(both <= most, "together they were served at most what the tenant's rate "
           "allows (%d served, at most %d)" % (both, most))
    ch.close()
    for k, v in lat.items():
        info("quiet service %s/%s, GetDataKey one call at a time, %s: p50 %.2f ms, "
             "p99 %.2f ms, max %.2f ms (%d calls)" % (
                 qt, qe, k, 1000 * pct(v, 50), 1000 * pct(v, 99), 1000 * max(v or [0]),
                 len(v)))
    return 0


# ---- streams ----

def tail_fn(ch, pb):
    return ch.unary_stream(KB + "TailEvents",
                           request_serializer=pb.TailEventsRequest.SerializeToString,
                           response_deserializer=pb.Event.FromString)


def open_stream(ch, pb, timeout=60):
    """(iterator, None) once the stream delivered its first event, or
    (None, (code, details))."""
    # The broker's start event, then nothing until the stream ends.
    it = tail_fn(ch, pb)(pb.TailEventsRequest(
        from_start=True, filter=pb.EventFilter(method="broker.start")), timeout=timeout)
    try:
        next(it)
        return it, None
    except grpc.RpcError as e:
        return None, (e.code(), e.details())


def open_within(ch, pb, seconds, timeout=60):
    """Try to open a stream until one opens or `seconds` pass: (iterator,
    seconds it took, last refusal)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < seconds:
        it, err = open_stream(ch, pb, timeout)
        if it is not None:
            return it, time.monotonic() - t0, None
        last = err
        time.sleep(0.1)
    return None, time.monotonic() - t0, last


def refused_as_capped(err, cap):
    return (err is not None and err[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and
            'auditor "auditor" already has %d streams open' % cap in (err[1] or "") and
            "(max_streams_per_identity = %d)" % cap in (err[1] or ""))


def cmd_streams(a):
    pb, _ = kbt_grpc.stubs()
    cap = a.cap
    aud = chan(a, "auditor")
    other = chan(a, "auditor")      # a second connection of the same identity
    held = []
    for i in range(cap - 2):
        it, err = open_stream(aud, pb)
        report(it is not None, "auditor's TailEvents stream %d of %d opens" % (i + 1, cap),
               str(err))
        held.append(it)
    # One more on its own connection, one with a short deadline.
    it_conn, err = open_stream(other, pb)
    report(it_conn is not None, "auditor's stream %d of %d (another connection) opens"
           % (cap - 1, cap), str(err))
    it_deadline, err = open_stream(aud, pb, timeout=3)
    report(it_deadline is not None, "auditor's stream %d of %d (deadline 3 s) opens"
           % (cap, cap), str(err))
    t_deadline = time.monotonic() + 3

    it, err = open_stream(aud, pb)
    report(it is None and refused_as_capped(err, cap), "stream %d is refused "
           "RESOURCE_EXHAUSTED naming max_streams_per_identity = %d" % (cap + 1, cap), str(err))
    if err:
        info("  %s: %s" % (err[0].name, err[1]))
    adm = chan(a, "admin")
    it, err = open_stream(adm, pb)
    report(it is not None, "another identity (the admin) still opens a stream", str(err))
    if it is not None:
        it.cancel()

    # 1. The client cancels one: its slot is free again (the broker notices
    # within its 500 ms poll).
    held[0].cancel()
    it, took, err = open_within(aud, pb, 5)
    report(it is not None, "after the client cancelled a stream, a new one opens (%.1f s)"
           % took, str(err))
    held[0] = it
    it, err = open_stream(aud, pb)
    report(it is None and refused_as_capped(err, cap), "and the cap holds again", str(err))

    # 2. A stream's deadline passes.
    time.sleep(max(0.0, t_deadline - time.monotonic()))
    try:
        for _ in it_deadline:
            pass
        ended = "ended"
    except grpc.RpcError as e:
        ended = e.code().name
    report(ended == "DEADLINE_EXCEEDED", "the 3 s stream ends DEADLINE_EXCEEDED", ended)
    it, took, err = open_within(aud, pb, 5)
    report(it is not None, "after a stream's deadline passed, a new one opens (%.1f s)"
           % took, str(err))
    it_deadline = it

    # 3. The client's connection closes.
    other.close()
    it, took, err = open_within(aud, pb, 5)
    report(it is not None, "after a connection holding a stream closed, a new one opens "
           "(%.1f s)" % took, str(err))
    held.append(it)
    it, err = open_stream(aud, pb)
    report(it is None and refused_as_capped(err, cap), "and the cap holds again", str(err))
    for it in held + [it_deadline]:
        if it is not None:
            it.cancel()
    aud.close()
    adm.close()
    # Let the broker see them go before anything else (test-bad-requests'
    # broker bug B1: a SIGTERM right after a cancelled stream).
    time.sleep(1.0)
    return 0


def cmd_hold(a):
    """N streams held until the broker ends them (its shutdown)."""
    pb, _ = kbt_grpc.stubs()
    ch = chan(a, "auditor")
    its = []
    for _ in range(a.cap):
        it, err = open_stream(ch, pb, timeout=120)
        if it is None:
            print("hold: a stream did not open: %s" % (err,), flush=True)
            return 1
        its.append(it)
    with open(a.ready, "w") as f:
        f.write("ready\n")
    ends = []

    def drain(it):
        try:
            for _ in it:
                pass
            ends.append("ended")
        except grpc.RpcError as e:
            ends.append(e.code().name)

    th = [threading.Thread(target=drain, args=(it,)) for it in its]
    for t in th:
        t.start()
    for t in th:
        t.join()
    ch.close()
    print("hold: the streams ended: %s" % ", ".join(sorted(ends)), flush=True)
    return 0 if ends == ["UNAVAILABLE"] * a.cap else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("KB_ADDR"))
    ap.add_argument("--ca", default=os.environ.get("KB_CA"))
    ap.add_argument("--pki", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rate")
    p.add_argument("--quiet", required=True, help="TENANT/ENV")
    p.add_argument("--flood", action="append", required=True, help="TENANT/ENV")
    p.add_argument("--identity-rate", type=int, required=True)
    p.add_argument("--identity-burst", type=int, required=True)
    p.add_argument("--tenant-rate", type=int, required=True)
    p.add_argument("--tenant-burst", type=int, required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--inflight", type=int, default=32)
    p.set_defaults(fn=cmd_rate)
    p = sub.add_parser("streams")
    p.add_argument("--cap", type=int, required=True)
    p.set_defaults(fn=cmd_streams)
    p = sub.add_parser("hold")
    p.add_argument("--cap", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.set_defaults(fn=cmd_hold)
    a = ap.parse_args()
    kbt_grpc.stubs()       # generate them once, before any clock runs
    rc = a.fn(a)
    print("%d passed, %d failed" % (kbt_grpc.passes(), kbt_grpc.failures()))
    return rc if kbt_grpc.failures() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
