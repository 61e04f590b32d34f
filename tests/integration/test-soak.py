#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-soak.py: the driver of test-soak.sh (64 clients of mixed load).

  test-soak.py --pid PID --tenant T --envs N --seconds S --out DIR
               [--clients 64] [--warmup W]

Set-up (before the clock starts): N environments in tenant T (which has an
active key; every other one is put under it), service certificates for them
(16 environments each, from the PKI in $KBT_PKI), every DEK read once.

Then --clients concurrent clients (grpc.aio, one channel each, so one TLS
connection each) for S seconds:
  - services (most clients): GetDataKey on their certificate's
    environments; every answer must be the DEK read at set-up;
  - admins (1 in 10): CreateEnvironment, ListEnvironments, ListTenants,
    GetTenant, BackupEnvironment, ListBackups, ApplyKey/RevertKey;
  - auditors (1 in 32): ListEvents (filtered, a page), ListCheckpoints,
    GetAuditKey.
Refusals the broker is right to give (RESOURCE_EXHAUSTED when it sheds
load, FAILED_PRECONDITION such as ApplyKey on an environment already under
the key) are counted apart; any other error is unexpected. The broker's
VmRSS (/proc/PID/status) is sampled every second: after the warm-up
(default a quarter of S, at least 5 s), the mean of the last third of the
samples must not exceed the mean of the first third by more than
--max-growth-mib (default 10) MiB plus --max-growth-pct (default 5) percent
of the first third's mean; the series and its trend (MiB/min) are printed.

Prints "ok ..."/"FAIL ..."/"info ..." lines; exits 1 on a failure.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

import grpc
import grpc.aio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402

pb, pb_grpc = kbt_grpc.stubs()
SC = grpc.StatusCode
OK = SC.OK
EXPECTED = (SC.RESOURCE_EXHAUSTED, SC.FAILED_PRECONDITION)

report, info = kbt_grpc.report, kbt_grpc.info


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def aio_channel(cert, key):
    creds = grpc.ssl_channel_credentials(
        root_certificates=kbt_grpc.read(os.environ["KB_CA"]),
        private_key=kbt_grpc.read(key), certificate_chain=kbt_grpc.read(cert))
    # One connection per client: no subchannel shared between channels.
    return grpc.aio.secure_channel(os.environ["KB_ADDR"], creds,
                                   options=[("grpc.use_local_subchannel_pool", 1)])


# ---- set-up (blocking grpc) ----

def setup(a):
    stub = pb_grpc.KeyBrokerStub(kbt_grpc.channel())
    envs = ["s%04d" % i for i in range(a.envs)]

    def retry(fn, req):
        for i in range(50):
            code, r = kbt_grpc.status_of(lambda: fn(req, timeout=30))
            if code != SC.RESOURCE_EXHAUSTED:
                return code, r
            time.sleep(0.05 * (i + 1))
        return code, r

    t0 = time.time()
    bad = []
    for i, e in enumerate(envs):
        code, r = retry(stub.CreateEnvironment, pb.CreateEnvironmentRequest(tenant_id=a.tenant, name=e))
        if code == OK and i % 2 == 0:
            code, r = retry(stub.ApplyKey, pb.EnvironmentRef(tenant_id=a.tenant, name=e))
        if code != OK:
            bad.append((e, code, r))
    report(not bad, "%d environments made (every other one under the tenant key) in %.1f s"
           % (len(envs), time.time() - t0), str(bad[:3]))
    index = kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.out, "certs"),
                                   a.tenant, envs)
    by_cert = {}
    for e, base in index.items():
        by_cert.setdefault(base, []).append(e)
    deks = {}
    for base, names in by_cert.items():
        ch = kbt_grpc.channel(cert=base + ".crt", key=base + ".key")
        s = pb_grpc.KeyBrokerStub(ch)
        for e in names:
            code, r = retry(s.GetDataKey, pb.GetDataKeyRequest(tenant_id=a.tenant, environment=e))
            if code == OK:
                deks[e] = r.dek
        ch.close()
    report(len(deks) == len(envs), "every DEK read once (%d)" % len(deks),
           "%d missing" % (len(envs) - len(deks)))
    return envs, by_cert, deks


# ---- the load ----

class Stats:
    def __init__(self):
        self.calls = {}       # method -> ok count
        self.expected = {}    # "method: STATUS" -> count
        self.unexpected = []  # descriptions
        self.nunexpected = 0
        self.wrong = 0

    def ok(self, m):
        self.calls[m] = self.calls.get(m, 0) + 1

    def refused(self, m, code):
        k = "%s: %s" % (m, code.name)
        self.expected[k] = self.expected.get(k, 0) + 1

    def error(self, what):
        self.nunexpected += 1
        if len(self.unexpected) < 20:
            self.unexpected.append(what)

    def total(self):
        return sum(self.calls.values())


async def run_call(st, m, coro):
    """Await one call; count it; the response, or None."""
    try:
        r = await coro
        st.ok(m)
        return r
    except grpc.aio.AioRpcError as e:
        if e.code() in EXPECTED:
            st.refused(m, e.code())
        else:
            st.error("%s: %s: %s" % (m, e.code().name, e.details()))
        return None


async def service_client(st, a, stop, base, names, deks):
    ch = aio_channel(base + ".crt", base + ".key")
    s = pb_grpc.KeyBrokerStub(ch)
    try:
        while not stop.is_set():
            e = random.choice(names)
            r = await run_call(st, "GetDataKey", s.GetDataKey(
                pb.GetDataKeyRequest(tenant_id=a.tenant, environment=e), timeout=30))
            if r is not None and r.dek != deks[e]:
                st.wrong += 1
                st.error("GetDataKey %s: another DEK" % e)
    finally:
        await ch.close()


async def admin_client(st, a, stop, n, envs, created):
    pki = os.environ["KBT_PKI"]
    ch = aio_channel(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
    s = pb_grpc.KeyBrokerStub(ch)
    t = a.tenant
    k = 0
    try:
        while not stop.is_set():
            op = random.choices(["create", "list-envs", "list-tenants", "get-tenant", "backup",
                                 "list-backups", "apply", "revert"],
                                [2, 3, 2, 2, 2, 2, 2, 2])[0]
            e = random.choice(envs)
            if op == "create":
                name = "a%d-%05d" % (n, k)
                k += 1
                if await run_call(st, "CreateEnvironment", s.CreateEnvironment(
                        pb.CreateEnvironmentRequest(tenant_id=t, name=name), timeout=30)):
                    created.append(name)
            elif op == "list-envs":
                await run_call(st, "ListEnvironments", s.ListEnvironments(
                    pb.ListEnvironmentsRequest(tenant_id=t, page_size=100), timeout=30))
            elif op == "list-tenants":
                await run_call(st, "ListTenants", s.ListTenants(pb.ListTenantsRequest(), timeout=30))
            elif op == "get-tenant":
                await run_call(st, "GetTenant", s.GetTenant(pb.GetTenantRequest(id=t), timeout=30))
            elif op == "backup":
                await run_call(st, "BackupEnvironment", s.BackupEnvironment(
                    pb.EnvironmentRef(tenant_id=t, name=e), timeout=30))
            elif op == "list-backups":
                await run_call(st, "ListBackups", s.ListBackups(
                    pb.ListBackupsRequest(tenant_id=t, name=e), timeout=30))
            elif op == "apply":
                await run_call(st, "ApplyKey", s.ApplyKey(pb.EnvironmentRef(tenant_id=t, name=e),
                                                          timeout=30))
            else:
                await run_call(st, "RevertKey", s.RevertKey(pb.EnvironmentRef(tenant_id=t, name=e),
                                                            timeout=30))
    finally:
        await ch.close()


async def auditor_client(st, a, stop):
    pki = os.environ["KBT_PKI"]
    ch = aio_channel(os.path.join(pki, "auditor.crt"), os.path.join(pki, "auditor.key"))
    s = pb_grpc.KeyBrokerStub(ch)
    try:
        while not stop.is_set():
            op = random.choice(["events", "events-tenant", "checkpoints", "key"])
            if op == "events":
                await run_call(st, "ListEvents", s.ListEvents(pb.ListEventsRequest(
                    after_seq=random.randrange(1, 1000), page_size=100), timeout=30))
            elif op == "events-tenant":
                await run_call(st, "ListEvents", s.ListEvents(pb.ListEventsRequest(
                    filter=pb.EventFilter(tenant_id=a.tenant, method="BackupEnvironment"),
                    page_size=50), timeout=30))
            elif op == "checkpoints":
                await run_call(st, "ListCheckpoints", s.ListCheckpoints(
                    pb.ListCheckpointsRequest(), timeout=30))
            else:
                await run_call(st, "GetAuditKey", s.GetAuditKey(pb.GetAuditKeyRequest(), timeout=30))
    finally:
        await ch.close()


async def sampler(a, stop, samples, st, t0):
    """VmRSS and the calls so far, every second (the first at t=0)."""
    nxt = t0
    while not stop.is_set():
        try:
            samples.append((time.time() - t0, rss_kib(a.pid), st.total()))
        except FileNotFoundError:
            st.error("the broker (pid %d) is gone" % a.pid)
            stop.set()
            return
        nxt += 1.0
        await asyncio.sleep(max(0.0, nxt - time.time()))


async def load(a, envs, by_cert, deks):
    st = Stats()
    stop = asyncio.Event()
    samples = []
    created = []
    certs = sorted(by_cert)
    tasks = []
    roles = {"service": 0, "admin": 0, "auditor": 0}
    for i in range(a.clients):
        if i % 32 == 31:
            roles["auditor"] += 1
            tasks.append(auditor_client(st, a, stop))
        elif i % 10 == 9:
            roles["admin"] += 1
            tasks.append(admin_client(st, a, stop, i, envs, created))
        else:
            roles["service"] += 1
            base = certs[i % len(certs)]
            tasks.append(service_client(st, a, stop, base, by_cert[base], deks))
    info("%d clients: %d services, %d admins, %d auditors, %d seconds"
         % (a.clients, roles["service"], roles["admin"], roles["auditor"], a.seconds))
    t0 = time.time()
    running = [asyncio.ensure_future(c) for c in tasks]
    running.append(asyncio.ensure_future(sampler(a, stop, samples, st, t0)))
    try:
        await asyncio.wait_for(stop.wait(), timeout=a.seconds)
    except asyncio.TimeoutError:
        pass
    stop.set()
    elapsed = time.time() - t0
    await asyncio.gather(*running, return_exceptions=True)
    return st, samples, elapsed, created


def mean(v):
    return sum(v) / len(v) if v else 0.0


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = mean([p[0] for p in points])
    my = mean([p[1] for p in points])
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def check_rss(a, samples):
    warm = a.warmup if a.warmup is not None else max(5.0, a.seconds / 4.0)
    after = [(t, kib) for t, kib, _ in samples if t >= warm]
    series = " ".join("%.0f" % (kib / 1024.0) for _, kib, _ in samples)
    info("VmRSS MiB, one sample a second (warm-up %.0f s): %s" % (warm, series))
    if len(after) < 6:
        report(False, "enough RSS samples after the warm-up", "%d samples" % len(after))
        return
    third = len(after) // 3
    first = mean([k for _, k in after[:third]]) / 1024.0
    last = mean([k for _, k in after[-third:]]) / 1024.0
    grow = last - first
    pct = 100.0 * grow / first if first else 0.0
    limit = a.max_growth_mib + first * a.max_growth_pct / 100.0
    per_min = slope([(t, k / 1024.0) for t, k in after]) * 60.0
    if a.no_rss_check:
        print("skip resident memory flat after the warm-up: a sanitizer build (ASan's "
              "quarantine grows by design); first third %.1f MiB, last third %.1f MiB"
              % (first, last), flush=True)
        return
    report(grow <= limit,
           "resident memory flat after the warm-up: first third %.1f MiB, last third %.1f MiB "
           "(%+.1f MiB, %+.1f%%; limit %.1f MiB); trend %+.2f MiB/min"
           % (first, last, grow, pct, limit, per_min))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--envs", type=int, default=256)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--max-growth-pct", type=float, default=5.0)
    ap.add_argument("--max-growth-mib", type=float, default=10.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-rss-check", action="store_true",
                    help="print the RSS series without judging it (sanitizer builds)")
    a = ap.parse_args()
    envs, by_cert, deks = setup(a)
    if len(deks) != len(envs):
        return 1
    st, samples, elapsed, created = asyncio.run(load(a, envs, by_cert, deks))
    total = st.total()
    refused = sum(st.expected.values())
    info("%d calls answered OK in %.1f s: %.0f calls/s" % (total, elapsed, total / elapsed))
    info("by method: %s" % ", ".join("%s %d" % kv for kv in sorted(st.calls.items())))
    info("expected refusals: %d (%s)" % (refused, ", ".join(
        "%s %d" % kv for kv in sorted(st.expected.items())) or "none"))
    info("unexpected errors: %d" % st.nunexpected)
    report(st.nunexpected == 0, "zero unexpected errors from %d clients over %.0f s "
           "(%d calls OK, %d expected refusals)" % (a.clients, elapsed, total, refused),
           "%d: %s" % (st.nunexpected, st.unexpected[:10]))
    report(st.wrong == 0, "every GetDataKey answer was the environment's DEK",
           "%d wrong" % st.wrong)
    gdk = st.calls.get("GetDataKey", 0)
    report(gdk > 0 and gdk >= 0.5 * total, "mostly GetDataKey: %d of %d calls" % (gdk, total))
    admin = sum(v for m, v in st.calls.items() if m not in ("GetDataKey", "ListEvents",
                                                              "ListCheckpoints", "GetAuditKey"))
    aud = sum(st.calls.get(m, 0) for m in ("ListEvents", "ListCheckpoints", "GetAuditKey"))
    report(admin > 0 and aud > 0, "admin calls (%d, %d environments created) and auditor "
           "calls (%d) ran too" % (admin, len(created), aud))
    check_rss(a, samples)
    with open(os.path.join(a.out, "soak.json"), "w") as f:
        json.dump({"calls": st.calls, "expected": st.expected, "unexpected": st.nunexpected,
                   "seconds": elapsed, "rss_kib": [(round(t, 1), k) for t, k, _ in samples],
                   "calls_at": [c for _, _, c in samples]}, f)
    return 1 if kbt_grpc.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
