#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-metrics.py: the client side of test-metrics.sh: scrape keybrokerd's
metrics page with a real HTTP client (urllib), parse it with the Prometheus
client library's parser, and check that the numbers move with the calls.

  test-metrics.py calls --metrics URL --pki DIR --tenant T --env E --other E2
      Scrape; 1,000 GetDataKey calls as the service bound to T/E (all must
      answer OK); scrape: keybroker_calls_total{GetDataKey,OK} and the
      GetDataKey latency histogram's count differ by exactly 1,000. Then
      3 refused calls (the service asks for T/E2: PERMISSION_DENIED) and 2
      by the admin (role refused: PERMISSION_DENIED): the PERMISSION_DENIED
      counter moves by exactly 5 and OK by 0. The page is well formed (the
      parser reads it; a HELP and a TYPE for every family); GET of another
      path is 404, POST is 405; the content type is the text format 0.0.4.
  test-metrics.py gauges --metrics URL --cert-end NAME=UNIX... --workers N
          --envs STATE=N...
      Certificate expiry gauges equal each certificate's notAfter; health,
      token, audit and store up; workers; environments by state; build info
      and start time; token and audit histograms counted.
  test-metrics.py names --metrics URL --alerts FILE --dashboard FILE
      The alert rules (YAML) and the dashboard (JSON) parse, and every
      keybroker_ metric either names is on the page.

Connection for gRPC: --addr and --ca, or KB_ADDR and KB_CA.
"""
import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402
from kbt_grpc import report, info  # noqa: E402

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def fetch(url, method="GET"):
    """(status, content type, body text) of one HTTP request."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def scrape(url):
    """{(sample name, frozenset of labels): value} and the raw text."""
    status, ctype, text = fetch(url)
    if status != 200:
        raise SystemExit("scrape %s: HTTP %d" % (url, status))
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text, ctype


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def by_name(samples, name):
    """[(labels dict, value)] of every sample called `name`."""
    return [(dict(k[1]), v) for k, v in samples.items() if k[0] == name]


def stub_for(a, who):
    pb, pb_grpc = kbt_grpc.stubs()
    ch = kbt_grpc.channel(a.addr, a.ca, os.path.join(a.pki, who + ".crt"),
                          os.path.join(a.pki, who + ".key"))
    return pb, pb_grpc.KeyBrokerStub(ch), ch


def cmd_calls(a):
    svc = "service-%s-%s" % (a.tenant, a.env)
    pb, stub, ch = stub_for(a, svc)
    req = pb.GetDataKeyRequest(tenant_id=a.tenant, environment=a.env)
    stub.GetDataKey(req, timeout=10)  # the connection is up before counting

    before, _, _ = scrape(a.metrics)
    ok = 0
    t0 = time.monotonic()
    for _ in range(1000):
        code, _r = kbt_grpc.status_of(lambda: stub.GetDataKey(req, timeout=10))
        ok += code == grpc.StatusCode.OK
    secs = time.monotonic() - t0
    report(ok == 1000, "1,000 GetDataKey calls all answered OK",
           "%d of 1000 OK" % ok)
    info("1,000 sequential GetDataKey calls in %.2f s (%.0f/s, one client)"
         % (secs, 1000 / secs))
    after, text, ctype = scrape(a.metrics)

    def d(name, **labels):
        return (val(after, name, **labels) or 0) - (val(before, name, **labels) or 0)

    n = d("keybroker_calls_total", method="GetDataKey", code="OK")
    report(n == 1000, "keybroker_calls_total{method=GetDataKey,code=OK} moved by exactly 1,000",
           "moved by %r" % n)
    n = d("keybroker_call_duration_seconds_count", method="GetDataKey")
    report(n == 1000, "the GetDataKey latency histogram's count moved by exactly 1,000",
           "moved by %r" % n)
    n = d("keybroker_call_duration_seconds_bucket", method="GetDataKey", le="+Inf")
    report(n == 1000, "its +Inf bucket too", "moved by %r" % n)
    s = d("keybroker_call_duration_seconds_sum", method="GetDataKey")
    report(0 < s < secs, "its sum grew by more than 0 and less than the wall time of the calls",
           "sum grew by %r s, calls took %.2f s" % (s, secs))
    n = d("keybroker_token_operation_duration_seconds_count", op="decrypt")
    report(n >= 1000, "token decrypts counted: at least one per GetDataKey",
           "moved by %r" % n)
    n = d("keybroker_audit_commit_duration_seconds_count")
    report(1 <= n <= 1000, "audit group commits counted (1 to 1,000 for 1,000 audited calls)",
           "moved by %r" % n)
    report(ctype.startswith("text/plain; version=0.0.4"),
           "content type is the Prometheus text format 0.0.4", ctype)

    # Refusals: exactly where they belong.
    other = pb.GetDataKeyRequest(tenant_id=a.tenant, environment=a.other)
    codes = [kbt_grpc.status_of(lambda: stub.GetDataKey(other, timeout=10))[0]
             for _ in range(3)]
    ch.close()
    pb, astub, ach = stub_for(a, "admin")
    codes += [kbt_grpc.status_of(lambda: astub.GetDataKey(req, timeout=10))[0]
              for _ in range(2)]
    ach.close()
    report(codes == [grpc.StatusCode.PERMISSION_DENIED] * 5,
           "3 calls for another environment and 2 by an admin are refused PERMISSION_DENIED",
           repr(codes))
    before = after
    after, text, _ = scrape(a.metrics)
    n = d("keybroker_calls_total", method="GetDataKey", code="PERMISSION_DENIED")
    report(n == 5, "keybroker_calls_total{method=GetDataKey,code=PERMISSION_DENIED} moved by exactly 5",
           "moved by %r" % n)
    n = d("keybroker_calls_total", method="GetDataKey", code="OK")
    report(n == 0, "and the OK counter did not move", "moved by %r" % n)

    # The page as a whole.
    fams = set()
    for line in text.splitlines():
        m = re.match(r"# (HELP|TYPE) (\S+) ", line)
        if m:
            fams.add((m.group(1), m.group(2)))
    names = {f.name for f in text_string_to_metric_families(text)}
    missing = [n for n in names if ("HELP", n) not in fams and ("HELP", n + "_total") not in fams]
    report(not missing, "every metric family has a HELP line", repr(missing[:5]))
    bad = [n for n in names if not n.startswith("keybroker_")]
    report(not bad, "every metric is named keybroker_*", repr(bad[:5]))
    st, _, _ = fetch(a.metrics.rsplit("/", 1)[0] + "/nothing")
    report(st == 404, "another path answers 404", "HTTP %d" % st)
    st, _, _ = fetch(a.metrics, method="POST")
    report(st == 405, "POST answers 405", "HTTP %d" % st)
    return 0


def cmd_gauges(a):
    samples, text, _ = scrape(a.metrics)
    for spec in a.cert_end:
        which, end = spec.split("=", 1)
        got = [v for l, v in by_name(samples, "keybroker_certificate_expiry_timestamp_seconds")
               if l.get("certificate") == which]
        report(got and all(int(v) == int(end) for v in got) and len(got) == 1,
               "keybroker_certificate_expiry_timestamp_seconds{certificate=%s} is its notAfter (%s)"
               % (which, end), "page has %r" % got)
    for name in ("keybroker_serving", "keybroker_token_up", "keybroker_audit_up",
                 "keybroker_store_up"):
        v = val(samples, name)
        report(v == 1, "%s is 1" % name, "%r" % v)
    v = val(samples, "keybroker_token_retries_total")
    report(v == 0, "keybroker_token_retries_total is 0 (SoftHSMv2 alone, one broker)",
           "%r" % v)
    v = val(samples, "keybroker_workers")
    report(v == a.workers, "keybroker_workers is the configured %d" % a.workers, "%r" % v)
    v = val(samples, "keybroker_workqueue_capacity")
    report(v is not None and v > 0, "keybroker_workqueue_capacity is there", "%r" % v)
    for spec in a.envs:
        state, n = spec.split("=", 1)
        got = sum(v for l, v in by_name(samples, "keybroker_environments")
                  if l.get("state") == state)
        report(got == int(n), "keybroker_environments{state=%s} adds up to %s" % (state, n),
               "%r" % got)
    kinds = sorted(l["kind"] for l, v in by_name(samples, "keybroker_jobs_running"))
    report(kinds == ["activate", "rotate-platform", "upgrade-v2"],
           "keybroker_jobs_running has every job kind (0 when none runs)", repr(kinds))
    bi = by_name(samples, "keybroker_build_info")
    report(len(bi) == 1 and bi[0][1] == 1 and bi[0][0].get("version"),
           "keybroker_build_info names the version", repr(bi))
    st = val(samples, "keybroker_start_time_seconds")
    report(st is not None and abs(time.time() - st) < 600,
           "keybroker_start_time_seconds is within the last minutes", "%r" % st)
    keys = by_name(samples, "keybroker_keys")
    report(any(l.get("purpose") == "platform" and l.get("state") == "active" for l, v in keys),
           "keybroker_keys counts the active platform key", repr(keys[:4]))
    return 0


def metric_names(expr):
    return set(re.findall(r"\bkeybroker_[a-z0-9_]+", expr))


def cmd_names(a):
    import yaml
    samples, text, _ = scrape(a.metrics)
    # Sampled, or declared (# TYPE) with no series now: a job metric while
    # no job runs.
    on_page = {k[0] for k in samples} | set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    with open(a.alerts) as f:
        rules = yaml.safe_load(f)
    groups = rules.get("groups") if isinstance(rules, dict) else None
    alerts = [r for g in groups or [] for r in g.get("rules", [])]
    report(bool(alerts) and all("alert" in r and "expr" in r for r in alerts),
           "%s parses (YAML): %d alert rules, each with alert and expr"
           % (os.path.basename(a.alerts), len(alerts)))
    want = {"KeybrokerDown", "KeybrokerErrorRatioHigh", "KeybrokerGetDataKeyLatencyHigh",
            "KeybrokerCertificateExpiringSoon", "KeybrokerTokenDown", "KeybrokerStoreDown",
            "KeybrokerAuditDown", "KeybrokerJobStuck", "KeybrokerAuditCommitSlow"}
    have = {r.get("alert") for r in alerts}
    report(want <= have, "the rules cover down, errors, p99 latency, certificates, token, "
           "store, audit, stuck jobs and slow audit commits", "missing %r" % sorted(want - have))
    with open(a.dashboard) as f:
        dash = json.load(f)
    exprs = [t.get("expr", "") for p in dash.get("panels", []) for t in p.get("targets", [])]
    report(len(exprs) >= 8, "%s parses (JSON): %d panel queries"
           % (os.path.basename(a.dashboard), len(exprs)))
    used = set()
    for e in [r["expr"] for r in alerts] + exprs:
        used |= metric_names(e)
    unknown = sorted(n for n in used if n not in on_page and
                     not any(n == p.rsplit("_", 1)[0] for p in on_page if p.endswith("_bucket")))
    report(not unknown, "every keybroker_ metric the rules and the dashboard use is on the page "
           "(%d names)" % len(used), "not on the page: %r" % unknown)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("KB_ADDR"))
    ap.add_argument("--ca", default=os.environ.get("KB_CA"))
    ap.add_argument("--metrics", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("calls")
    p.add_argument("--pki", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--other", required=True)
    p.set_defaults(fn=cmd_calls)
    p = sub.add_parser("gauges")
    p.add_argument("--cert-end", nargs="+", default=[])
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--envs", nargs="+", default=[])
    p.set_defaults(fn=cmd_gauges)
    p = sub.add_parser("names")
    p.add_argument("--alerts", required=True)
    p.add_argument("--dashboard", required=True)
    p.set_defaults(fn=cmd_names)
    a = ap.parse_args()
    rc = a.fn(a)
    print("%d passed, %d failed" % (kbt_grpc.passes(), kbt_grpc.failures()))
    return 1 if kbt_grpc.failures() else rc


if __name__ == "__main__":
    sys.exit(main())
