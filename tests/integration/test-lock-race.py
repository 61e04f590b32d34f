#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-lock-race.py: the grpcio side of test-lock-race.sh (GetDataKey racing
LockTenant, ResetEnvironment and the 28-day sweeper).

  populate --tenant T --envs N --out DIR
      N environments (lr00...) made and put under the tenant's active key
      (ApplyKey); one service certificate for them (from the PKI in
      $KBT_PKI); every DEK read once and saved to DIR/deks.json.
  rounds --tenant T --out DIR --rounds R --lock-key FILE [--password-file PW]
         --clock-file F [--leave-locked]
      --callers concurrent GetDataKey callers (threads, blocking grpc, one
      TLS connection each) read random environments without pause through
      R rounds of: the clock past the 72-hour lock cooldown (F is
      keybrokerd-testclock's offset file), LockTenant with FILE (the active
      key's .pfx and its password, or its .byok), every environment
      refused as locked; the clock past the 1-hour unlock cooldown,
      UnlockTenant with FILE, UnlockEnvironment for each (all at once),
      every DEK the recorded one. Every answer must be OK with the recorded
      DEK or FAILED_PRECONDITION "environment locked"; a call started after
      a lock was acknowledged and ended before its environment's unlock was
      sent must be refused, one outside the locked periods served. Prints
      per round the calls served before the lock, in flight during it (and
      when it returned), refused after it; fails unless every lock had
      calls in flight.
  reset-race --tenant T --out DIR --count K
      Callers on the first K environments while an admin resets them one
      by one (ResetEnvironment destroys the DEK; a new one under the
      platform key). Every answer OK: the recorded DEK (a read from before
      the reset), or the one new DEK (always, for calls started after the
      reset was acknowledged). Then the K environments are put back under
      the tenant key (ApplyKey) and their new DEKs recorded.
  sweep-race --tenant T --out DIR
      Callers on every (locked) environment; DIR/readers-ready tells
      test-lock-race.sh to move the clock past the 28-day retention; the
      sweeper deletes them. Answers: FAILED_PRECONDITION "environment
      locked" or NOT_FOUND saying "deleted", nothing else; NOT_FOUND once
      the environment shows as deleted, and never locked again after a
      NOT_FOUND on it.

Admin calls use KB_CERT/KB_KEY. Prints "ok ..."/"FAIL ..."/"info ..." lines,
exits 1 on a failure.
"""
import argparse
import base64
import concurrent.futures
import json
import os
import random
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402

pb, pb_grpc = kbt_grpc.stubs()
SC = grpc.StatusCode
LOCKED = "environment locked"
report, info = kbt_grpc.report, kbt_grpc.info


def own_channel(cert, key):
    """A channel with its own TLS connection (no subchannel shared)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=kbt_grpc.read(os.environ["KB_CA"]),
        private_key=kbt_grpc.read(key), certificate_chain=kbt_grpc.read(cert))
    return grpc.secure_channel(os.environ["KB_ADDR"], creds,
                               options=[("grpc.use_local_subchannel_pool", 1)])


def admin_stub():
    ch = kbt_grpc.channel()
    stub = pb_grpc.KeyBrokerStub(ch)
    # Connected and handshaken before anything is timed.
    stub.WhoAmI(pb.WhoAmIRequest(), timeout=30)
    return stub


def retry(fn, req, tries=50):
    """A call retried while the broker sheds load; (code, result-or-details)."""
    for i in range(tries):
        code, r = kbt_grpc.status_of(lambda: fn(req, timeout=30))
        if code != SC.RESOURCE_EXHAUSTED:
            return code, r
        time.sleep(0.05 * (i + 1))
    return code, r


def load(out):
    with open(os.path.join(out, "deks.json")) as f:
        deks = {e: base64.b64decode(d) for e, d in json.load(f).items()}
    with open(os.path.join(out, "certs", "index.json")) as f:
        index = json.load(f)
    return deks, index


def save(out, deks):
    tmp = os.path.join(out, "deks.json.tmp")
    with open(tmp, "w") as f:
        json.dump({e: base64.b64encode(d).decode() for e, d in deks.items()}, f)
    os.replace(tmp, os.path.join(out, "deks.json"))


def short(s, n=300):
    s = str(s)
    return s if len(s) <= n else s[:n] + "..."


# ---- the callers ----

class Callers:
    """`n` GetDataKey callers, each with its own TLS connection (made once,
    kept across rounds). start() runs them (threads, blocking grpc) on
    random environments of `envs` until finish(), which returns every call
    as (t0, t1, env, code, details, dek): monotonic start and end times,
    and the answer's DEK (OK only)."""

    def __init__(self, a, index, n):
        self.tenant = a.tenant
        self.errors = []
        self.channels = []
        self.stubs = []
        bases = sorted(set(index.values()))
        for i in range(n):
            base = bases[i % len(bases)]
            ch = own_channel(base + ".crt", base + ".key")
            grpc.channel_ready_future(ch).result(timeout=30)
            self.channels.append(ch)
            self.stubs.append(pb_grpc.KeyBrokerStub(ch))
        self.rounds = 0

    def loop(self, i, stub, rec):
        rnd = random.Random(1000 * self.rounds + i)
        try:
            while not self.stop.is_set():
                e = rnd.choice(self.envs)
                req = pb.GetDataKeyRequest(tenant_id=self.tenant, environment=e)
                t0 = time.monotonic()
                try:
                    r = stub.GetDataKey(req, timeout=30)
                    t1 = time.monotonic()
                    rec.append((t0, t1, e, SC.OK, "", bytes(r.dek)))
                except grpc.RpcError as err:
                    t1 = time.monotonic()
                    rec.append((t0, t1, e, err.code(), err.details() or "", None))
        except Exception as ex:  # a bug here must not pass as silence
            self.errors.append("caller %d: %r" % (i, ex))

    def start(self, envs):
        self.rounds += 1
        self.envs = list(envs)
        self.stop = threading.Event()
        self.calls = [[] for _ in self.stubs]
        self.threads = [threading.Thread(target=self.loop, args=(i, s, self.calls[i]), daemon=True)
                        for i, s in enumerate(self.stubs)]
        for t in self.threads:
            t.start()

    def wait(self, pred, least, timeout):
        """Until every caller has `least` calls matching pred (or timeout)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(sum(1 for c in list(rec) if pred(c)) >= least for rec in self.calls):
                return True
            time.sleep(0.01)
        return False

    def finish(self, what):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        if self.errors or any(t.is_alive() for t in self.threads):
            report(False, "%s: the callers stop cleanly" % what, "; ".join(self.errors[:5]))
            self.errors = []
        return sorted((c for rec in self.calls for c in rec), key=lambda c: c[0])

    def close(self):
        for ch in self.channels:
            ch.close()


def odd(calls, fmt, limit=10):
    """Up to `limit` calls as lines for a failure message."""
    return "; ".join(fmt(c) for c in calls[:limit]) + (
        " (and %d more)" % (len(calls) - limit) if len(calls) > limit else "")


def describe(c):
    t0, t1, e, code, det, dek = c
    return "%s: %s %s" % (e, code.name, short(det, 200))


# ---- populate ----

def cmd_populate(a):
    stub = admin_stub()
    envs = ["lr%02d" % i for i in range(a.envs)]
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    bad = []
    for e in envs:
        code, r = retry(stub.CreateEnvironment, pb.CreateEnvironmentRequest(tenant_id=a.tenant, name=e))
        if code == SC.OK:
            code, r = retry(stub.ApplyKey, pb.EnvironmentRef(tenant_id=a.tenant, name=e))
            if code == SC.OK and r.mode != pb.ENCRYPTION_MODE_CUSTOMER:
                code, r = SC.UNKNOWN, "mode %s after ApplyKey" % r.mode
        if code != SC.OK:
            bad.append("%s: %s %s" % (e, code.name, short(r)))
    report(not bad, "%d environments created and put under the tenant key (ApplyKey) in %.1f s"
           % (len(envs), time.time() - t0), "; ".join(bad[:5]))
    # Each round moves the broker's clock 73 hours on: certificates for years.
    index = kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.out, "certs"),
                                   a.tenant, envs, days=3650)
    deks = {}
    errs = []
    for base in sorted(set(index.values())):
        ch = own_channel(base + ".crt", base + ".key")
        s = pb_grpc.KeyBrokerStub(ch)
        for e in [e for e in envs if index[e] == base]:
            code, r = retry(s.GetDataKey, pb.GetDataKeyRequest(tenant_id=a.tenant, environment=e))
            if code == SC.OK and len(r.dek) == 32:
                deks[e] = bytes(r.dek)
            else:
                errs.append("%s: %s %s" % (e, code.name, short(r)))
        ch.close()
    report(len(deks) == len(envs), "every DEK read once and recorded (%d)" % len(deks),
           "; ".join(errs[:5]))
    report(len(set(deks.values())) == len(deks), "the %d DEKs are all different" % len(deks))
    save(a.out, deks)
    return 1 if kbt_grpc.failures() else 0


# ---- the lock rounds ----

def locked_answer(c):
    return c[3] == SC.FAILED_PRECONDITION and LOCKED in c[4]


def alive(pid):
    """The broker (pid) still runs (always true without --pid)."""
    if not pid:
        return True
    try:
        os.kill(pid, 0)
        with open("/proc/%d/stat" % pid) as f:  # a zombie has died already
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


_pool = None


def each(fn, items):
    """{item: fn(item)}, all at once (on threads): under load, every call
    waits for its audit event's group commit, so one after the other is slow."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    return dict(zip(items, _pool.map(fn, items)))


def read_all(stub, tenant, envs):
    """{env: (code, response-or-details)}, one GetDataKey each."""
    return each(lambda e: retry(stub.GetDataKey, pb.GetDataKeyRequest(
        tenant_id=tenant, environment=e)), envs)


def expectations(envs, rounds, t_begin, t_end):
    """Per environment, the intervals in which every call that starts and
    ends inside must be served ("ok") or refused as locked ("locked"):
    served until a lock is sent, refused from its acknowledgement until the
    environment's unlock is sent, served again from that unlock's
    acknowledgement on. Calls across a boundary may be either."""
    iv = {e: [] for e in envs}
    for e in envs:
        since = t_begin
        for rd in rounds:
            iv[e].append((since, rd["lock"][0], "ok", rd["n"]))
            until = rd["unlock"][e][0] if e in rd["unlock"] else t_end
            iv[e].append((rd["lock"][1], until, "locked", rd["n"]))
            since = rd["unlock"][e][1] if e in rd["unlock"] else t_end
        if since < t_end:
            iv[e].append((since, t_end, "ok", len(rounds) + 1))
    return iv


def cmd_rounds(a):
    deks, index = load(a.out)
    envs = sorted(deks)
    stub = admin_stub()
    key_file = kbt_grpc.read(a.lock_key)
    password = kbt_grpc.read(a.password_file).decode().rstrip("\n") if a.password_file else ""
    kind = ".byok" if a.lock_key.endswith(".byok") else ".pfx"
    label = a.label or kind
    lock_req = pb.LockTenantRequest(tenant_id=a.tenant, file=key_file, password=password)
    unlock_req = pb.UnlockTenantRequest(tenant_id=a.tenant, file=key_file, password=password)
    base = index[envs[0]]
    svc = pb_grpc.KeyBrokerStub(own_channel(base + ".crt", base + ".key"))
    cs = Callers(a, index, a.callers)

    # The callers run through every round: locks, unlocks and in between.
    t_begin = time.monotonic()
    cs.start(envs)
    report(cs.wait(lambda c: c[3] == SC.OK, 3, 30),
           "%d GetDataKey callers (one TLS connection each) are served" % a.callers)
    rounds = []
    for r in range(1, a.rounds + 1):
        rd = {"n": r, "unlock": {}}
        rounds.append(rd)
        bad = []
        # Past the 72-hour lock cooldown (after the activation, or the unlock).
        kbt_grpc.clock_move(a.clock_file, 72 * 3600 + 60)
        time.sleep(a.pause)
        ts = time.monotonic()
        code, t = kbt_grpc.status_of(lambda: stub.LockTenant(lock_req, timeout=60))
        rd["lock"] = (ts, time.monotonic())
        if code != SC.OK or t.state != pb.TENANT_STATE_LOCKED \
                or t.locked_environment_count != len(envs):
            bad.append("LockTenant: %s %s" % (code.name, short(t)))
        time.sleep(a.pause)
        res = read_all(svc, a.tenant, envs)
        bad += ["locked, %s: %s %s" % (e, c.name, short(x, 200)) for e, (c, x) in res.items()
                if not (c == SC.FAILED_PRECONDITION and LOCKED in x)]
        what = "%s round %d: LockTenant (grpc, the active key's %s) in %.0f ms while %d " \
            "callers read DEKs: %d environments locked, each refused: %s" \
            % (label, r, kind, (rd["lock"][1] - ts) * 1000, a.callers, len(envs), LOCKED)
        if r == a.rounds and a.leave_locked or not alive(a.pid):
            report(not bad, what, "; ".join(bad[:6]))
            if not alive(a.pid):
                report(False, "%s round %d: the broker (pid %d) is still running"
                       % (label, r, a.pid), "it is gone: see its log")
            break
        # Past the 1-hour unlock cooldown: the tenant, then each environment.
        kbt_grpc.clock_move(a.clock_file, 3600 + 60)
        code, t = kbt_grpc.status_of(lambda: stub.UnlockTenant(unlock_req, timeout=60))
        if code != SC.OK or t.state == pb.TENANT_STATE_LOCKED:
            bad.append("UnlockTenant: %s %s" % (code.name, short(t)))

        def unlock(e):
            t0 = time.monotonic()
            code, x = retry(stub.UnlockEnvironment, pb.EnvironmentRef(tenant_id=a.tenant, name=e))
            rd["unlock"][e] = (t0, time.monotonic())
            return code, x
        for e, (code, x) in each(unlock, envs).items():
            if code != SC.OK or x.state != pb.ENVIRONMENT_STATE_ENABLED:
                bad.append("UnlockEnvironment %s: %s %s" % (e, code.name, short(x, 200)))
        res = read_all(svc, a.tenant, envs)
        bad += ["unlocked, %s: %s" % (e, "another DEK" if c == SC.OK else "%s %s"
                                      % (c.name, short(x, 200)))
                for e, (c, x) in res.items() if not (c == SC.OK and x.dek == deks[e])]
        report(not bad, what + "; unlocked after the 1-hour cooldown (the tenant, then each "
               "environment): every DEK the recorded one", "; ".join(bad[:6]))
        if not alive(a.pid):
            report(False, "%s round %d: the broker (pid %d) is still running" % (label, r, a.pid),
                   "it is gone: see its log")
            break
    time.sleep(a.after)
    t_end = time.monotonic()
    calls = cs.finish("lock rounds")
    cs.close()
    elapsed = t_end - t_begin

    # Every answer, whenever it came.
    ok = [c for c in calls if c[3] == SC.OK]
    other = [c for c in calls if not (c[3] == SC.OK or locked_answer(c))]
    wrong = [c for c in ok if c[5] != deks[c[2]]]
    report(not other and not wrong,
           "%s rounds: all %d GetDataKey answers over %d round(s) OK with the recorded DEK or "
           "FAILED_PRECONDITION \"%s\"" % (label, len(calls), len(rounds), LOCKED),
           "%d other answers: %s; %d OK with another DEK: %s"
           % (len(other), odd(other, describe), len(wrong), odd(wrong, lambda c: c[2])))
    # When: served before each lock, refused from its acknowledgement until
    # the environment is unlocked, served again after.
    iv = expectations(envs, rounds, t_begin, t_end)
    late = []
    per = {rd["n"]: {"ok_before": 0, "refused_after": 0} for rd in rounds}
    for c in calls:
        for lo, hi, want, n in iv[c[2]]:
            if lo <= c[0] and c[1] <= hi:
                got = "ok" if c[3] == SC.OK else "locked" if locked_answer(c) else "other"
                if got != want:
                    late.append((c, want, n, c[0] - lo))
                elif n in per:
                    per[n]["ok_before" if want == "ok" else "refused_after"] += 1
                break
    report(not late, "%s rounds: every call inside a locked period (from the lock's "
           "acknowledgement to the environment's unlock) refused, every call outside one served"
           % label,
           "%d were not: %s" % (len(late), odd(late, lambda x: "round %d, want %s: %s, started "
                                                "%.1f ms into the period"
                                                % (x[2], x[1], describe(x[0]), x[3] * 1000))))
    stats = []
    for rd in rounds:
        ts, ta = rd["lock"]
        during = [c for c in calls if c[0] < ta and c[1] > ts]
        st = dict(per[rd["n"]], round=rd["n"], during=len(during),
                  during_ok=sum(1 for c in during if c[3] == SC.OK),
                  during_refused=sum(1 for c in during if locked_answer(c)),
                  at_ack=sum(1 for c in calls if c[0] < ta < c[1]),
                  bad=sum(1 for c in other if c[0] < ta and c[1] > ts),
                  lock_ms=(ta - ts) * 1000)
        stats.append(st)
        info(label + " round %(round)d: %(ok_before)d calls served before the lock, %(during)d in flight "
             "during the lock call (%(during_ok)d OK, %(during_refused)d refused, %(bad)d other), "
             "%(at_ack)d in flight when it returned, %(refused_after)d refused after it" % st)
    info("%s: %d round(s) in %.1f s: %d calls (%.0f/s), %d in flight during a lock (%d OK, %d "
         "refused), %d other answers"
         % (label, len(rounds), elapsed, len(calls), len(calls) / elapsed,
            sum(x["during"] for x in stats), sum(x["during_ok"] for x in stats),
            sum(x["during_refused"] for x in stats), len(other)))
    report(all(x["during"] > 0 and x["at_ack"] > 0 for x in stats),
           "%s rounds: every lock raced GetDataKey; calls in flight during each lock: %s"
           % (label, "/".join(str(x["during"]) for x in stats)))
    with open(os.path.join(a.out, "rounds-%s-%d.json" % (kind[1:], os.getpid())), "w") as f:
        json.dump(stats, f)
    return 1 if kbt_grpc.failures() else 0


# ---- ResetEnvironment racing GetDataKey ----

def cmd_reset_race(a):
    deks, index = load(a.out)
    targets = sorted(deks)[:a.count]
    stub = admin_stub()
    cs = Callers(a, index, a.callers)
    cs.start(targets)
    cs.wait(lambda c: c[3] == SC.OK, 3, 30)
    acks = {}
    bad = []
    for e in targets:
        time.sleep(0.15)
        ts = time.monotonic()
        code, r = kbt_grpc.status_of(lambda: stub.ResetEnvironment(
            pb.EnvironmentRef(tenant_id=a.tenant, name=e), timeout=60))
        acks[e] = (ts, time.monotonic())
        if code != SC.OK or r.mode != pb.ENCRYPTION_MODE_PLATFORM:
            bad.append("%s: %s %s" % (e, code.name, short(r)))
    last = max(ta for _, ta in acks.values())
    time.sleep(a.after)
    cs.wait(lambda c: c[0] > last, 5, 30)
    calls = cs.finish("reset race")
    cs.close()
    report(not bad, "ResetEnvironment of %d environments while %d callers read them (each "
           "back on the platform key)" % (len(targets), a.callers), "; ".join(bad))

    other = [c for c in calls if c[3] != SC.OK]
    report(not other, "reset race: every answer is OK (%d calls)" % len(calls),
           "%d other answers: %s" % (len(other), odd(other, describe)))
    new = {}
    for e in targets:
        vals = {c[5] for c in calls if c[2] == e and c[3] == SC.OK and c[5] != deks[e]}
        new[e] = vals
    report(all(len(v) == 1 for v in new.values()),
           "reset race: each environment served its old DEK or one single new one",
           "; ".join("%s: %d new values" % (e, len(v)) for e, v in new.items() if len(v) != 1))
    stale = [c for c in calls if c[3] == SC.OK and c[0] > acks[c[2]][1] and c[5] == deks[c[2]]]
    report(not stale, "reset race: no call started after its reset was acknowledged got the "
           "destroyed DEK", "%d did: %s" % (len(stale), odd(stale, lambda c: c[2])))
    during = [c for c in calls if c[0] < acks[c[2]][1] and c[1] > acks[c[2]][0]]
    info("reset race: %d calls, %d in flight during a reset of their environment (%d old DEK, "
         "%d new)" % (len(calls), len(during),
                      sum(1 for c in during if c[3] == SC.OK and c[5] == deks[c[2]]),
                      sum(1 for c in during if c[3] == SC.OK and c[5] != deks[c[2]])))

    # Back under the tenant key; the new DEKs are the recorded ones now.
    bad = []
    ch = own_channel(index[targets[0]] + ".crt", index[targets[0]] + ".key")
    s = pb_grpc.KeyBrokerStub(ch)
    for e in targets:
        code, r = retry(stub.ApplyKey, pb.EnvironmentRef(tenant_id=a.tenant, name=e))
        if code != SC.OK or r.mode != pb.ENCRYPTION_MODE_CUSTOMER:
            bad.append("%s ApplyKey: %s %s" % (e, code.name, short(r)))
            continue
        code, r = retry(s.GetDataKey, pb.GetDataKeyRequest(tenant_id=a.tenant, environment=e))
        if code != SC.OK or len(new[e]) != 1 or r.dek not in new[e] or r.dek == deks[e]:
            bad.append("%s: %s, not the new DEK served after the reset" % (e, code.name))
            continue
        deks[e] = bytes(r.dek)
    ch.close()
    report(not bad, "the %d reset environments are back under the tenant key, with the new "
           "DEK served after the reset; recorded" % len(targets), "; ".join(bad))
    save(a.out, deks)
    return 1 if kbt_grpc.failures() else 0


# ---- the 28-day sweeper racing GetDataKey ----

def deleted_answer(c):
    return c[3] == SC.NOT_FOUND and "deleted" in c[4]


def cmd_sweep_race(a):
    deks, index = load(a.out)
    envs = sorted(deks)
    stub = admin_stub()
    cs = Callers(a, index, a.callers)
    cs.start(envs)
    cs.wait(lambda c: c[3] == SC.FAILED_PRECONDITION, 3, 30)
    open(os.path.join(a.out, "readers-ready"), "w").close()
    gone = {}
    end = time.monotonic() + a.timeout
    errs = []
    while len(gone) < len(envs) and time.monotonic() < end:
        for e in envs:
            if e in gone:
                continue
            code, r = kbt_grpc.status_of(lambda: stub.GetEnvironment(
                pb.GetEnvironmentRequest(tenant_id=a.tenant, name=e), timeout=30))
            if code == SC.OK and r.state == pb.ENVIRONMENT_STATE_DELETED:
                gone[e] = time.monotonic()
            elif code != SC.OK and len(errs) < 5:
                errs.append("%s: %s %s" % (e, code.name, short(r)))
        time.sleep(0.01)
    time.sleep(a.after)
    last = max(gone.values()) if gone else time.monotonic()
    cs.wait(lambda c: c[0] > last, 5, 30)
    calls = cs.finish("sweep race")
    cs.close()
    report(len(gone) == len(envs) and not errs,
           "the sweeper deleted all %d locked environments while %d callers read them"
           % (len(envs), a.callers),
           "%d deleted; %s" % (len(gone), "; ".join(errs)))
    other = [c for c in calls if not (deleted_answer(c) or locked_answer(c))]
    report(not other, "sweep race: every answer is FAILED_PRECONDITION \"%s\" or NOT_FOUND "
           "\"... deleted ...\" (%d calls)" % (LOCKED, len(calls)),
           "%d other answers: %s" % (len(other), odd(other, describe)))
    late = [c for c in calls if c[2] in gone and c[0] > gone[c[2]] and not deleted_answer(c)]
    report(not late, "sweep race: every call started after its environment showed as deleted "
           "was NOT_FOUND", "%d were not: %s" % (len(late), odd(late, describe)))
    first_nf = {}
    for c in calls:
        if deleted_answer(c):
            first_nf[c[2]] = min(first_nf.get(c[2], c[1]), c[1])
    back = [c for c in calls if c[2] in first_nf and c[0] > first_nf[c[2]] and not deleted_answer(c)]
    report(not back, "sweep race: no environment answered locked again after a NOT_FOUND",
           "%d did: %s" % (len(back), odd(back, describe)))
    nf = sum(1 for c in calls if deleted_answer(c))
    info("sweep race: %d calls, %d refused as locked, %d NOT_FOUND (deleted)"
         % (len(calls), len(calls) - nf - len(other), nf))
    return 1 if kbt_grpc.failures() else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, fn):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--tenant", required=True)
        p.add_argument("--callers", type=int, default=16)
        p.add_argument("--after", type=float, default=0.2,
                       help="seconds of calls after the lock, the resets or the sweep")
        p.set_defaults(fn=fn)
        return p

    p = add("populate", cmd_populate)
    p.add_argument("--envs", type=int, default=16)
    p = add("rounds", cmd_rounds)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lock-key", required=True)
    p.add_argument("--password-file", help="the .pfx's password (none for a .byok)")
    p.add_argument("--clock-file", required=True)
    p.add_argument("--leave-locked", action="store_true", help="no unlock after the last round")
    p.add_argument("--pid", type=int, help="the broker's: stop when it is gone")
    p.add_argument("--label", help="names the rounds (default: .pfx or .byok)")
    p.add_argument("--pause", type=float, default=0.1,
                   help="seconds of calls before each lock and after it")
    p = add("reset-race", cmd_reset_race)
    p.add_argument("--count", type=int, default=4)
    p = add("sweep-race", cmd_sweep_race)
    p.add_argument("--timeout", type=float, default=20)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
