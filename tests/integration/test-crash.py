#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-crash.py: the driver of test-crash.sh (SIGKILL at random moments).

  test-crash.py --broker BIN --conf CONF --clock FILE --log LOG --pki DIR
                --out DIR --cycles N [--kbctl BIN]

Starts the broker itself (kbt_grpc.Broker, the same wait as lib.sh's
kbt_start: BIN --config CONF, output appended to LOG, its pid in
DIR/broker.pid), sets up three tenants, then runs N cycles of:

  workload -> SIGKILL at a random moment -> checks on the crash image ->
  restart -> checks on the restarted broker

The workload, on several threads: creating environments in tenant "mix"
(each acknowledged one's DEK read at once), ApplyKey/RevertKey there,
GetDataKey on known environments (always the recorded DEK), activating the
other key of tenant "bulk" (BULK customer-managed environments, re-wrapped by
a resumable job), and locking then unlocking tenant "lk" (its key's .pfx as
proof) and unlocking its environments. The test clock (test_clock_file)
moves forward as the rules need: 24 h between activations, 72 h between an
unlock (a key change) and the next lock, 1 h between a lock and the unlock.

After each kill, on a copy of keybroker.db and keybroker-audit.db with their
-wal (the crash image, replayed without touching the originals; with a
PostgreSQL database, the database itself, which the kill leaves as it is):
PRAGMA integrity_check is ok on both (SQLite), store invariants hold (at most one active key
per tenant, an installing key only with a running job, every live
environment has its current DEK row), and the audit chain and its signed
checkpoints verify (kbt_audit.py). After the restart: a job that was running
finishes (done == total) within --job-bound seconds; tenant lk is unlocked
if the kill left it locked (that unlock must succeed); every environment
whose creation was acknowledged exists and returns its original DEK; an
environment whose creation was in flight either does not exist or serves a
DEK (then it is known from there on); integrity_check is ok on the live
databases and the audit chain verifies there too; kbctl audit export +
verify (this kbctl's own verifier) every 4th restart and after the last
kill, with verify --online then. During the workload a wrong DEK fails the
test, and so does an error before the kill that is neither a refusal nor
load shedding, and a broker that ended by itself before the kill.

At the end: a clean SIGTERM stop (exit 0), one active key per tenant and
none installing, lk unlocked, both databases and the chain checked again.

--budget: when the cycles would not fit, each restart from then on reads
every mix and lk DEK but a rotating 1/4 (then 1/8) of bulk's (every one is
read again at the end), and no cycle starts that would end after it.
A GetDataKey racing LockTenant must answer OK or "environment locked",
never the token's error about the key the lock destroyed.

Prints "ok ..."/"FAIL ..." and "info ..." lines; exits 1 on a failure.
"""
import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_audit  # noqa: E402
import kbt_grpc  # noqa: E402

pb, pb_grpc = kbt_grpc.stubs()
SC = grpc.StatusCode
OK = SC.OK
HOUR = 3600
PASSWORD = "crash test password"

# Errors that mean "the broker is gone" (expected only once it was killed).
GONE = (SC.UNAVAILABLE, SC.CANCELLED, SC.DEADLINE_EXCEEDED, SC.UNKNOWN, SC.INTERNAL)
# Answers that are refusals or load shedding, never a fault.
REFUSALS = (SC.FAILED_PRECONDITION, SC.RESOURCE_EXHAUSTED, SC.ALREADY_EXISTS)

report, info = kbt_grpc.report, kbt_grpc.info


# ---- certificates, channels ----

def make_cert(ca_dir, base, ou, cn, uris=(), days=3000):
    """A client certificate valid for `days`: the test clock moves weeks
    ahead and the broker checks validity on its own clock."""
    return kbt_grpc.mint_cert(ca_dir, base, [("OU", ou), ("CN", cn)], uris, days)


# Each channel its own subchannels (none shared with a channel of the
# broker's previous life), reconnecting soon (not grpc.min_reconnect_
# backoff_ms: it is also the connect timeout, too short for a busy broker).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1),
                   ("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 250)]


def channel(addr, ca, base):
    creds = grpc.ssl_channel_credentials(
        root_certificates=kbt_grpc.read(ca), private_key=kbt_grpc.read(base + ".key"),
        certificate_chain=kbt_grpc.read(base + ".crt"))
    return grpc.secure_channel(addr, creds, options=CHANNEL_OPTIONS)


class Conns:
    """The channels of one broker life (made fresh after each restart)."""

    def __init__(self, d):
        self.d = d
        self.mu = threading.Lock()
        self.chans = []
        self.admin = self._stub(d.admin_base)
        self.auditor = self._stub(d.auditor_base)
        self.svc = {}

    def _stub(self, base):
        ch = channel(self.d.addr, self.d.ca, base)
        self.chans.append(ch)
        return pb_grpc.KeyBrokerStub(ch)

    def service(self, tenant, env):
        base = self.d.cert_index[tenant][env]
        with self.mu:
            s = self.svc.get(base)
            if s is None:
                s = self.svc[base] = self._stub(base)
            return s

    def close(self):
        for ch in self.chans:
            ch.close()


def call(fn, req, timeout=20):
    """(code, response-or-details) of one blocking call."""
    return kbt_grpc.status_of(lambda: fn(req, timeout=timeout))


def call_retry(fn, req, timeout=20, tries=60):
    """A call retried while the broker sheds load (RESOURCE_EXHAUSTED)."""
    for i in range(tries):
        code, r = call(fn, req, timeout)
        if code != SC.RESOURCE_EXHAUSTED:
            return code, r
        time.sleep(min(0.02 * (i + 1), 0.5))
    return code, r


parallel = kbt_grpc.parallel


# ---- the clock (the broker process: kbt_grpc.Broker) ----

class Clock:
    """The test clock's offset file (kbt_grpc.clock_move): only ever moved
    forward, one move at a time."""

    def __init__(self, path):
        self.path = path
        self.mu = threading.Lock()
        self.moved = 0

    def bump(self, seconds):
        with self.mu:
            kbt_grpc.clock_move(self.path, seconds)
            self.moved += seconds


# ---- the driver's state ----

class Driver:
    def __init__(self, a):
        self.a = a
        self.addr = os.environ["KB_ADDR"]
        self.ca = os.path.join(a.pki, "ca.crt")
        self.db = None
        self.audit_db = None
        for line in open(a.conf):
            k, _, v = line.partition("=")
            if k.strip() == "database":
                self.db = v.strip()
            elif k.strip() == "audit_database":
                self.audit_db = v.strip()
        # A PostgreSQL database (KBT_DB=postgres): the audit log's tables
        # are in it too unless audit_database says otherwise.
        self.pg = kbt_audit.is_pg(self.db)
        if self.audit_db is None:
            self.audit_db = self.db if self.pg else self.db[:-3] + "-audit.db"
        self.clock = Clock(a.clock)
        self.certs = os.path.join(a.out, "certs")
        os.makedirs(self.certs, exist_ok=True)
        self.admin_base = make_cert(a.pki, os.path.join(self.certs, "admin"), "admin", "kbt-crash-admin",
                                    uris=("kb://platform",))
        # The broker is ready when it serves (a certificate valid for as
        # long as the test clock runs ahead).
        self.broker = kbt_grpc.Broker(a.broker, a.conf, a.log, os.path.join(a.out, "broker.pid"),
                                      self.addr, self.ca, self.admin_base + ".crt",
                                      self.admin_base + ".key")
        self.auditor_base = make_cert(a.pki, os.path.join(self.certs, "auditor"), "auditor",
                                      "kbt-crash-auditor")
        self.cert_index = {}
        # (tenant, env) -> DEK bytes, or None until first read: every
        # environment whose creation was acknowledged.
        self.known = {}
        # (tenant, env) whose creation was sent but not answered.
        self.maybe = set()
        self.mu = threading.Lock()
        self.keys = {}       # tenant -> [key ids]
        self.pfx = {}        # tenant -> .pfx of its active key (lk)
        self.reader_names = {}
        self.mix_next = 0
        self.audit_pub = None
        self.audit_fpr = ""
        self.conns = None
        self.t0 = time.time()
        self.sampling = 0  # 0: every DEK after each restart; else 1/N of bulk's
        self.last_check_full = True
        self.stats = {"cycles": 0, "kills_activation": 0, "kills_lock": 0,
                      "kills_lock_inflight": 0, "kills_create": 0, "acked": 0,
                      "maybe_exist": 0, "maybe_absent": 0, "reads": 0,
                      "dek_checks": 0, "jobs_resumed": 0, "lk_repairs": 0,
                      "refusals": 0, "restart_s": [], "job_finish_s": [], "interrupted": 0}

    def env_names(self, prefix, n, start=0):
        return ["%s%05d" % (prefix, i) for i in range(start, start + n)]

    def issue_service_certs(self, tenant, envs):
        out = os.path.join(self.certs, tenant)
        idx = kbt_grpc.service_certs(self.a.pki, out, tenant, envs, days=3000)
        self.cert_index.setdefault(tenant, {}).update(idx)

    def new_conns(self):
        if self.conns is not None:
            self.conns.close()
        self.conns = Conns(self)
        return self.conns


# ---- set-up ----

def wait_job(stub, job_id, bound):
    """Poll GetJob until the job is not running; (job or None, seconds)."""
    t0 = time.time()
    while time.time() - t0 < bound:
        code, j = call(stub.GetJob, pb.GetJobRequest(id=job_id), timeout=10)
        if code == OK and j.state != pb.JOB_STATE_RUNNING:
            return j, time.time() - t0
        time.sleep(0.05)
    return None, time.time() - t0


def read_deks(d, c, envs, window=48):
    """GetDataKey for each (tenant, env), `window` calls in flight at once
    (grpc futures: lighter than threads); load shedding is retried.
    Returns {(t, e): (code, response-or-details)}."""
    results = {}
    todo = list(envs)
    for attempt in range(60):
        sem = threading.Semaphore(window)

        def done(f, te):
            e = f.exception()
            results[te] = (OK, f.result()) if e is None else (e.code(), e.details())
            sem.release()

        for te in todo:
            sem.acquire()
            f = c.service(*te).GetDataKey.future(
                pb.GetDataKeyRequest(tenant_id=te[0], environment=te[1]), timeout=30)
            f.add_done_callback(lambda f, te=te: done(f, te))
        for _ in range(window):
            sem.acquire()
        todo = [te for te in todo if results[te][0] == SC.RESOURCE_EXHAUSTED]
        if not todo:
            break
        time.sleep(min(0.05 * (attempt + 1), 0.5))
    return results


def setup(d):
    a = d.a
    tm = Timer()
    secs = d.broker.start()
    report(secs is not None, "the broker starts (%.1f s)" % (secs or 0))
    if secs is None:
        return False
    c = d.new_conns()
    s = c.admin
    code, k = call(c.auditor.GetAuditKey, pb.GetAuditKeyRequest())
    report(code == OK and "PUBLIC KEY" in k.public_key_pem, "GetAuditKey gives the audit public key",
           "%s %s" % (code, k))
    if code != OK:
        return False
    d.audit_pub = kbt_audit.load_public_key(k.public_key_pem)
    d.audit_fpr = k.fingerprint
    with open(os.path.join(a.out, "audit-key.pem"), "w") as f:
        f.write(k.public_key_pem)

    for t in ("bulk", "lk", "mix"):
        code, r = call(s.CreateTenant, pb.CreateTenantRequest(id=t, display_name="crash " + t))
        if code != OK:
            report(False, "CreateTenant %s" % t, "%s %s" % (code, r))
            return False
        nkeys = 2 if t == "bulk" else 1
        d.keys[t] = []
        for i in range(nkeys):
            code, g = call(s.GenerateKey, pb.GenerateKeyRequest(tenant_id=t, password=PASSWORD), 60)
            if code != OK:
                report(False, "GenerateKey %s" % t, "%s %s" % (code, g))
                return False
            d.keys[t].append(g.key.id)
            if i == 0:
                d.pfx[t] = g.pfx
        code, j = call(s.ActivateKey, pb.ActivateKeyRequest(tenant_id=t, key_id=d.keys[t][0]))
        if code == OK:
            j, _ = wait_job(s, j.id, 60)
        if code != OK or j is None or j.state != pb.JOB_STATE_DONE:
            report(False, "ActivateKey %s" % t, "%s %s" % (code, j))
            return False
    report(True, "tenants bulk (keys %s), lk and mix, each with an active key"
           % " and ".join(d.keys["bulk"]))
    tm.lap("start and keys")

    plan = {"bulk": d.env_names("b", a.bulk), "lk": d.env_names("l", a.lk_envs),
            "mix": d.env_names("m", a.mix_initial)}
    mix_names = d.env_names("m", a.mix_initial + (a.cycles + 1) * a.creates + 16)
    t0 = time.time()
    for t, envs in plan.items():
        res = parallel(lambda e: call_retry(s.CreateEnvironment, pb.CreateEnvironmentRequest(
            tenant_id=t, name=e)), envs, 12)
        bad = [e for e, (code, _) in res.items() if code != OK]
        if bad:
            report(False, "CreateEnvironment in %s" % t, "%d failed, e.g. %s" % (
                len(bad), [res[e] for e in bad[:3]]))
            return False
        apply = envs if t != "mix" else envs[::2]
        res = parallel(lambda e: call_retry(s.ApplyKey, pb.EnvironmentRef(
            tenant_id=t, name=e)), apply, 12)
        bad = [e for e, (code, _) in res.items() if code != OK]
        if bad:
            report(False, "ApplyKey in %s" % t, "%d failed, e.g. %s" % (
                len(bad), [res[e] for e in bad[:3]]))
            return False
    d.mix_next = a.mix_initial
    report(True, "%d environments made (%d customer-managed in bulk, %d in lk, %d in mix) in %.1f s"
           % (sum(len(v) for v in plan.values()), a.bulk, a.lk_envs, a.mix_initial,
              time.time() - t0))

    t0 = time.time()
    d.issue_service_certs("bulk", plan["bulk"])
    d.issue_service_certs("lk", plan["lk"])
    d.issue_service_certs("mix", mix_names)
    info("service certificates for %d environment names in %.1f s"
         % (len(plan["bulk"]) + len(plan["lk"]) + len(mix_names), time.time() - t0))
    c = d.new_conns()
    t0 = time.time()
    envs = [(t, e) for t, v in plan.items() for e in v]
    res = read_deks(d, c, envs)
    bad = [te for te, (code, r) in res.items() if code != OK or len(r.dek) != 32]
    for te, (code, r) in res.items():
        if code == OK:
            d.known[te] = r.dek
    report(not bad, "every DEK read once (%d) in %.1f s" % (len(envs), time.time() - t0),
           "%d failed, e.g. %s" % (len(bad), [(te, res[te]) for te in bad[:3]]))
    tm.lap("environments, certificates and DEKs")
    info("set-up took %s" % tm)
    # lk may be locked 72 h after its activation; bulk activated 24 h after.
    d.clock.bump(73 * HOUR)
    return not bad


class Timer:
    def __init__(self):
        self.t = time.time()
        self.laps = []

    def lap(self, what):
        now = time.time()
        self.laps.append("%s %.1f s" % (what, now - self.t))
        self.t = now

    def __str__(self):
        return ", ".join(self.laps)


# ---- the crash image ----

def copy_image(src, dst_dir):
    """Copy a database and its -wal (not the -shm, which SQLite rebuilds)
    as they are after the kill; returns the copy's path."""
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, os.path.basename(src))
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(dst + suffix):
            os.unlink(dst + suffix)
    for suffix in ("", "-wal"):
        if os.path.exists(src + suffix):
            shutil.copyfile(src + suffix, dst + suffix)
    return dst


class PgRows(list):
    def fetchall(self):
        return self

    def fetchone(self):
        return self[0] if self else None


class PgCon:
    """The little of sqlite3's connection that store_invariants uses, on a
    PostgreSQL database through psql: whole-number fields come as ints."""

    def __init__(self, uri):
        self.uri = uri

    def execute(self, sql):
        conv = lambda v: int(v) if v.lstrip("-").isdigit() else v  # noqa: E731
        return PgRows(tuple(conv(v) for v in r) for r in kbt_audit.psql_rows(self.uri, sql))

    def close(self):
        pass


def integrity(path, ro=False):
    """PRAGMA integrity_check's answer ("ok" when fine)."""
    uri = "file:%s%s" % (path, "?mode=ro" if ro else "")
    con = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        rows = con.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)[:500]
    finally:
        con.close()


def store_invariants(path):
    """Problems in the crash image's store (a list of strings)."""
    con = PgCon(path) if kbt_audit.is_pg(path) else sqlite3.connect(path, timeout=30)
    bad = []
    try:
        for t, n in con.execute("SELECT tenant_id, count(*) FROM keys WHERE purpose = 'tenant' "
                                "AND state = 'active' GROUP BY tenant_id HAVING count(*) > 1"):
            bad.append("tenant %s has %d active keys" % (t, n))
        # An activation names the tenant key in key_id and the new KEK it
        # installs in target_key_id: both are the job's.
        running = set()
        for kid, target in con.execute("SELECT key_id, target_key_id FROM jobs "
                                       "WHERE state = 'running'"):
            running.update(k for k in (kid, target) if k)
        for kid, t in con.execute("SELECT id, tenant_id FROM keys WHERE state = 'installing'"):
            if kid not in running:
                bad.append("key %s of %s is installing with no running job" % (kid, t))
        for (n,) in con.execute(
                "SELECT count(*) FROM environments e WHERE e.state != 'deleted' AND NOT EXISTS "
                "(SELECT 1 FROM deks k WHERE k.env_id = e.id AND k.version = e.dek_version)"):
            if n:
                bad.append("%d live environments lack their current DEK row" % n)
        for (n,) in con.execute(
                "SELECT count(*) FROM deks k WHERE NOT EXISTS (SELECT 1 FROM keys y "
                "WHERE y.id = k.key_id)"):
            if n:
                bad.append("%d DEK rows name a key that does not exist" % n)
        jobs = con.execute("SELECT id, tenant_id, done, total FROM jobs WHERE state = 'running'").fetchall()
        lk = con.execute("SELECT state FROM tenants WHERE id = 'lk'").fetchone()
        lk_envs = con.execute("SELECT count(*) FROM environments WHERE tenant_id = 'lk' AND "
                              "state = 'locked'").fetchone()[0]
        return bad, jobs, (lk[0] if lk else None), lk_envs
    finally:
        con.close()


def crash_checks(d, n):
    """On copies of both databases as the kill left them."""
    tm = Timer()
    img = os.path.join(d.a.out, "image")
    if d.pg:
        db = adb = d.db  # the server outlives the broker: the database is the image
        if n == 1:
            info("PostgreSQL: the database as the kill left it is checked in place "
                 "(its server was not killed); no integrity_check (SQLite's)")
    else:
        db = copy_image(d.db, img)
        adb = copy_image(d.audit_db, img)
        r1, r2 = integrity(db), integrity(adb)
        report(r1 == "ok" and r2 == "ok", "cycle %d: crash image: integrity_check ok on both databases" % n,
               "keybroker.db: %s; audit: %s" % (r1, r2))
    bad, jobs, lk_state, lk_envs = store_invariants(db)
    report(not bad, "cycle %d: crash image: store invariants hold" % n, "; ".join(bad))
    tm.lap("integrity+invariants")
    r = kbt_audit.verify(adb, d.audit_pub)
    report(r.ok, "cycle %d: crash image: audit chain and checkpoints verify: %s" % (n, r))
    tm.lap("audit chain")
    info("cycle %d: crash image checks took %s" % (n, tm))
    return jobs, lk_state, lk_envs


# ---- after a restart ----

def repair_lk(d, c, n):
    """If the kill left tenant lk locked (or some of its environments), unlock
    it with its key: that must work after any crash."""
    s = c.admin
    code, t = call(s.GetTenant, pb.GetTenantRequest(id="lk"))
    if code != OK:
        report(False, "cycle %d: GetTenant lk" % n, "%s %s" % (code, t))
        return
    did = []
    if t.state == pb.TENANT_STATE_LOCKED:
        d.clock.bump(HOUR + 60)
        req = pb.UnlockTenantRequest(tenant_id="lk", file=d.pfx["lk"], password=PASSWORD)
        code, r = call_retry(s.UnlockTenant, req, timeout=60)
        report(code == OK, "cycle %d: tenant lk, left locked by the kill, unlocks with its key" % n,
               "%s %s" % (code, r))
        if code != OK:
            return
        did.append("tenant")
    locked, token = [], ""
    while True:
        code, r = call_retry(s.ListEnvironments, pb.ListEnvironmentsRequest(
            tenant_id="lk", page_size=1000, page_token=token))
        if code != OK:
            report(False, "cycle %d: ListEnvironments lk" % n, "%s %s" % (code, r))
            return
        locked += [e.name for e in r.environments if e.state == pb.ENVIRONMENT_STATE_LOCKED]
        token = r.next_page_token
        if not token:
            break
    if locked:
        res = parallel(lambda e: call_retry(s.UnlockEnvironment, pb.EnvironmentRef(
            tenant_id="lk", name=e)), locked, 4)
        bad = [(e, res[e]) for e in locked if res[e][0] != OK]
        report(not bad, "cycle %d: %d locked environments of lk unlock" % (n, len(locked)),
               "%d failed: %s" % (len(bad), bad[:3]))
        did.append("%d environments" % len(locked))
    if did:
        d.stats["lk_repairs"] += 1
        info("cycle %d: lk was left locked by the kill: unlocked %s" % (n, " and ".join(did)))


def after_restart(d, n, jobs, last=False):
    """Checks on the restarted broker (`last`: after the last kill)."""
    c = d.new_conns()
    s = c.admin
    tm = Timer()
    # A job the kill interrupted resumes and finishes: waited for while the
    # other checks run (they read DEKs the job is re-wrapping).
    job_results = []

    def job_waiter():
        for jid, tenant, done, total in jobs:
            ch = channel(d.addr, d.ca, d.admin_base)
            try:
                stub = pb_grpc.KeyBrokerStub(ch)
                j, secs = wait_job(stub, jid, d.a.job_bound)
                # A platform job (the platform key's rotation) has no tenant.
                code, ks = (call(stub.ListKeys, pb.ListKeysRequest(tenant_id=tenant))
                            if tenant else (OK, None))
            finally:
                ch.close()
            job_results.append((jid, tenant, done, total, j, secs, code, ks))

    waiter = threading.Thread(target=job_waiter)
    waiter.start()
    repair_lk(d, c, n)
    tm.lap("lk")

    # Creations whose answer never came: absent, or present and serving.
    with d.mu:
        maybe = sorted(d.maybe)
        d.maybe.clear()
    exist, absent, bad = [], [], []
    for t, e in maybe:
        code, r = call_retry(s.GetEnvironment, pb.GetEnvironmentRequest(tenant_id=t, name=e))
        if code == SC.NOT_FOUND:
            absent.append(e)
            continue
        if code != OK:
            bad.append((e, "GetEnvironment", code, r))
            continue
        code, k = call_retry(c.service(t, e).GetDataKey, pb.GetDataKeyRequest(tenant_id=t, environment=e))
        if code == OK and len(k.dek) == 32:
            exist.append(e)
            with d.mu:
                if (t, e) not in d.known or d.known[(t, e)] is None:
                    d.known[(t, e)] = k.dek
        else:
            bad.append((e, "GetDataKey", code, k))
    d.stats["maybe_exist"] += len(exist)
    d.stats["maybe_absent"] += len(absent)
    if maybe:
        report(not bad, "cycle %d: %d creations in flight at the kill: %d exist and serve a DEK, "
               "%d do not exist" % (n, len(maybe), len(exist), len(absent)), "%s" % bad[:3])
    tm.lap("in-flight")

    # Every acknowledged environment exists and returns its original DEK.
    # (When time runs short, bulk's are read a rotating 1/N at a time,
    # and all of them after the last kill: see run().)
    t0 = time.time()
    with d.mu:
        envs = list(d.known)
    scope = "all %d acknowledged environments" % len(envs)
    if d.sampling and not last:
        bulk = sorted(te for te in envs if te[0] == "bulk")
        part = bulk[n % d.sampling::d.sampling]
        envs = [te for te in envs if te[0] != "bulk"] + part
        scope = ("%d acknowledged environments (all of mix and lk, a rotating 1/%d of "
                 "bulk: %d of %d)" % (len(envs), d.sampling, len(part), len(bulk)))
    d.last_check_full = not (d.sampling and not last)
    res = read_deks(d, c, envs)
    wrong, missing, failed_, first = [], [], [], 0
    for te, (code, r) in res.items():
        if code == OK and len(r.dek) == 32:
            with d.mu:
                if d.known[te] is None:
                    d.known[te] = r.dek
                    first += 1
                elif d.known[te] != r.dek:
                    wrong.append(te)
        elif code == SC.NOT_FOUND:
            missing.append(te)
        else:
            failed_.append((te, code, r))
    d.stats["dek_checks"] += len(envs)
    report(not wrong and not missing and not failed_,
           "cycle %d: %s exist and return their original DEK "
           "(%d first reads recorded; %.1f s)" % (n, scope, first, time.time() - t0),
           "%d wrong DEK %s; %d missing %s; %d failed %s" % (
               len(wrong), wrong[:3], len(missing), missing[:3], len(failed_), failed_[:3]))
    tm.lap("DEKs")

    waiter.join()
    for jid, tenant, done, total, j, secs, code, ks in job_results:
        ok = j is not None and j.state == pb.JOB_STATE_DONE and j.done == j.total == total
        report(ok, "cycle %d: job %s (killed at %d of %d) resumed and finished in %.1f s (bound %d s)"
               % (n, jid, done, total, secs, d.a.job_bound),
               "job now: %s" % (j if j is not None else "still running"))
        d.stats["jobs_resumed"] += 1
        d.stats["job_finish_s"].append(secs)
        if not tenant:
            continue
        states = sorted((k.id, pb.KeyState.Name(k.state)) for k in ks.keys) if code == OK else []
        active = [k for k, st in states if st == "KEY_STATE_ACTIVE"]
        report(code == OK and j is not None and active == [j.key_id] and
               all(st != "KEY_STATE_INSTALLING" for _, st in states),
               "cycle %d: after the job, its key is %s's one active key, none installing"
               % (n, tenant), "%s %s" % (code, states))
    tm.lap("job")

    if not d.pg:
        r1, r2 = integrity(d.db, ro=True), integrity(d.audit_db, ro=True)
        report(r1 == "ok" and r2 == "ok", "cycle %d: integrity_check ok on both live databases" % n,
               "keybroker.db: %s; audit: %s" % (r1, r2))
        tm.lap("integrity")
    r = kbt_audit.verify(d.audit_db, d.audit_pub)
    report(r.ok, "cycle %d: after the restart the audit chain and checkpoints verify: %s" % (n, r))
    # A state change records "started" before it acts: one the kill cut
    # short is followed by the restart's broker.start; none may be open now
    # (nothing changes state while these checks run).
    report(r.ok and not r.open,
           "cycle %d: every state change started before the kill has its outcome or the "
           "restart after it (%d cut short so far)" % (n, r.interrupted),
           "started without an outcome or a restart after it: seq %s" % r.open[:10])
    d.stats["interrupted"] = r.interrupted
    tm.lap("audit chain")
    # kbctl's own verifier on an export: every 4th restart and the last
    # (an export of the whole log grows with every cycle).
    if d.a.kbctl_audit and (n % 4 == 1 or last):
        kbctl_audit_verify(d, n, online=last)
        tm.lap("kbctl audit")
    info("cycle %d: checks took %s" % (n, tm))


def kbctl_audit_verify(d, n, online):
    env = dict(os.environ, KB_CERT=d.auditor_base + ".crt", KB_KEY=d.auditor_base + ".key",
               KB_CA=d.ca, KB_ADDR=d.addr)
    exp = os.path.join(d.a.out, "audit-export.jsonl")
    cmds = [("export", [d.a.kbctl, "--timeout", "60", "audit", "export", "--out", exp]),
            ("verify", [d.a.kbctl, "audit", "verify", exp, "--key-fingerprint", d.audit_fpr]),
            ("online", [d.a.kbctl, "--timeout", "60", "audit", "verify", "--online"])]
    for what, cmd in cmds:
        if what == "online" and not online:
            continue  # the export's verification suffices; --online once
        if what == "export" and os.path.exists(exp):
            os.unlink(exp)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        report(p.returncode == 0, "cycle %d: kbctl audit %s exits 0" % (n, what),
               "exit %d: %s %s" % (p.returncode, p.stdout[-300:], p.stderr[-300:]))
        if p.returncode != 0:
            break


# ---- the workload ----

class Workload:
    """Threads that drive the broker until stop; every call's outcome is
    judged: a wrong DEK always fails; an error fails unless it is a refusal,
    load shedding, or came after the kill."""

    def __init__(self, d, n):
        self.d = d
        self.n = n
        self.c = d.conns
        self.stop = threading.Event()
        self.kill_time = None
        self.mu = threading.Lock()
        self.unexpected = []
        self.wrong = []
        self.counts = {"created": 0, "reads": 0, "applied": 0, "reverted": 0,
                       "refused": 0, "activations": 0, "locks": 0, "unlocks": 0,
                       "env_unlocks": 0}
        self.lk_phase = None
        self.act_phase = None
        self.lock_sent = False
        self.own_exit = None

    def judge(self, what, code, r):
        """True if the call was answered OK."""
        if code == OK:
            return True
        with self.mu:
            if code in REFUSALS:
                self.counts["refused"] += 1
            elif self.kill_time is not None and code in GONE:
                pass  # the broker was killed under it
            else:
                self.unexpected.append("%s: %s %s" % (what, code, r))
        return False

    def count(self, k):
        with self.mu:
            self.counts[k] += 1

    def creator(self):
        d, s = self.d, self.c.admin
        made = 0
        while not self.stop.is_set():
            if made < d.a.creates:
                with d.mu:
                    e = "m%05d" % d.mix_next
                    d.mix_next += 1
                    d.maybe.add(("mix", e))
                code, r = call(s.CreateEnvironment, pb.CreateEnvironmentRequest(
                    tenant_id="mix", name=e), timeout=10)
                if not self.judge("CreateEnvironment mix/%s" % e, code, r):
                    if code in REFUSALS and code != SC.ALREADY_EXISTS:
                        with d.mu:  # refused: surely not created
                            d.maybe.discard(("mix", e))
                        made += 1
                    continue
                made += 1
                self.count("created")
                with d.mu:
                    d.maybe.discard(("mix", e))
                    d.known[("mix", e)] = None
                    d.stats["acked"] += 1
                code, k = call(self.c.service("mix", e).GetDataKey,
                               pb.GetDataKeyRequest(tenant_id="mix", environment=e), timeout=10)
                if self.judge("GetDataKey mix/%s" % e, code, k):
                    self.check_dek(("mix", e), k.dek)
                if random.random() < 0.5:
                    code, r = call(s.ApplyKey, pb.EnvironmentRef(tenant_id="mix", name=e), timeout=10)
                    if self.judge("ApplyKey mix/%s" % e, code, r):
                        self.count("applied")
            else:
                with d.mu:
                    mix = [e for (t, e) in d.known if t == "mix"]
                e = random.choice(mix)
                rpc, name = random.choice([(s.ApplyKey, "ApplyKey"), (s.RevertKey, "RevertKey")])
                code, r = call(rpc, pb.EnvironmentRef(tenant_id="mix", name=e), timeout=10)
                if self.judge("%s mix/%s" % (name, e), code, r):
                    self.count("applied" if name == "ApplyKey" else "reverted")
                time.sleep(0.01)

    def check_dek(self, te, dek):
        d = self.d
        with d.mu:
            want = d.known.get(te)
            if want is None:
                d.known[te] = dek
                return
        if dek != want:
            with self.mu:
                self.wrong.append("%s/%s" % te)

    def reader(self):
        d = self.d
        while not self.stop.is_set():
            with d.mu:
                te = random.choice(list(d.known)) if random.random() < 0.05 else None
                if te is None:
                    # Mostly customer-managed bulk environments (the job
                    # re-wraps them) and fresh mix ones.
                    t = random.choice(("bulk", "bulk", "mix", "lk"))
                    names = d.reader_names[t]
                    te = (t, random.choice(names)) if names else None
            if te is None or te not in d.known:
                continue
            code, k = call(self.c.service(*te).GetDataKey,
                           pb.GetDataKeyRequest(tenant_id=te[0], environment=te[1]), timeout=10)
            if code == SC.FAILED_PRECONDITION and te[0] == "lk" and "locked" in k:
                self.count("refused")
                continue
            if self.judge("GetDataKey %s/%s" % te, code, k):
                self.count("reads")
                self.check_dek(te, k.dek)

    def activator(self):
        d, s = self.d, self.c.admin
        code, t = call(s.GetTenant, pb.GetTenantRequest(id="bulk"), timeout=10)
        if not self.judge("GetTenant bulk", code, t):
            return
        other = [k for k in d.keys["bulk"] if k != t.active_key_id][0]
        self.act_phase = "activate"
        code, j = call(s.ActivateKey, pb.ActivateKeyRequest(tenant_id="bulk", key_id=other), timeout=10)
        if not self.judge("ActivateKey bulk %s" % other, code, j):
            self.act_phase = None
            return
        self.count("activations")
        self.act_phase = "job"
        while not self.stop.is_set():
            code, j2 = call(s.GetJob, pb.GetJobRequest(id=j.id), timeout=10)
            if not self.judge("GetJob %s" % j.id, code, j2):
                break
            if j2.state != pb.JOB_STATE_RUNNING:
                if j2.state != pb.JOB_STATE_DONE or j2.done != j2.total:
                    with self.mu:
                        self.unexpected.append("job %s ended %s, %d of %d: %s" % (
                            j.id, pb.JobState.Name(j2.state), j2.done, j2.total, j2.error))
                break
            time.sleep(0.05)
        self.act_phase = None

    def locker(self, delay):
        d, s = self.d, self.c.admin
        if self.stop.wait(delay):
            return
        self.lk_phase = "lock"
        self.lock_sent = True
        req = pb.LockTenantRequest(tenant_id="lk", file=d.pfx["lk"], password=PASSWORD)
        code, r = call(s.LockTenant, req, timeout=30)
        if code == SC.FAILED_PRECONDITION and "72-hour" in r:
            # A repair's unlock counts as a key change: move past it.
            d.clock.bump(73 * HOUR)
            code, r = call(s.LockTenant, req, timeout=30)
        if not self.judge("LockTenant lk", code, r):
            self.lk_phase = None
            return
        self.count("locks")
        d.clock.bump(HOUR + 60)
        self.lk_phase = "unlock"
        req = pb.UnlockTenantRequest(tenant_id="lk", file=d.pfx["lk"], password=PASSWORD)
        code, r = call(s.UnlockTenant, req, timeout=30)
        if not self.judge("UnlockTenant lk", code, r):
            self.lk_phase = None
            return
        self.count("unlocks")
        self.lk_phase = "env-unlock"
        for e in d.reader_names["lk"]:
            if self.stop.is_set():
                break
            code, r = call(s.UnlockEnvironment, pb.EnvironmentRef(tenant_id="lk", name=e), timeout=10)
            if self.judge("UnlockEnvironment lk/%s" % e, code, r):
                self.count("env_unlocks")
        self.lk_phase = None

    def run(self, delay):
        """Run for `delay` seconds, then SIGKILL the broker; returns what
        was in flight at the kill."""
        d = self.d
        with d.mu:
            d.reader_names = {t: [e for (tt, e) in d.known if tt == t] for t in ("bulk", "mix", "lk")}
        th = [threading.Thread(target=self.creator), threading.Thread(target=self.reader),
              threading.Thread(target=self.reader), threading.Thread(target=self.activator),
              threading.Thread(target=self.locker, args=(random.uniform(0, delay),))]
        for t in th:
            t.start()
        time.sleep(delay)
        with self.mu:
            self.kill_time = time.time()
        at_kill = {"lk": self.lk_phase, "activation": self.act_phase}
        self.own_exit = d.broker.kill()
        self.stop.set()
        for t in th:
            t.join(60)
        return at_kill


def final_state(d):
    """After the last restart: each tenant has one active key and none
    installing; lk and its environments are unlocked; every DEK is read
    once more if the last restart's check was a sample."""
    s = d.conns.admin
    if not d.last_check_full:
        with d.mu:
            envs = list(d.known)
        res = read_deks(d, d.conns, envs)
        bad = [te for te, (code, r) in res.items()
               if code != OK or (d.known[te] is not None and r.dek != d.known[te])]
        report(not bad, "at the end, all %d acknowledged environments return their original DEK"
               % len(envs), "%d differ or fail: %s" % (len(bad), [(te, res[te][0]) for te in bad[:5]]))
    for t in ("bulk", "lk", "mix"):
        code, ks = call(s.ListKeys, pb.ListKeysRequest(tenant_id=t))
        states = [pb.KeyState.Name(k.state) for k in ks.keys] if code == OK else []
        report(code == OK and states.count("KEY_STATE_ACTIVE") == 1 and
               "KEY_STATE_INSTALLING" not in states,
               "at the end, tenant %s has one active key and none installing" % t,
               "%s %s" % (code, states))
    code, t = call(s.GetTenant, pb.GetTenantRequest(id="lk"))
    report(code == OK and t.state == pb.TENANT_STATE_ACTIVE and t.locked_environment_count == 0,
           "at the end, tenant lk and its environments are unlocked", "%s %s" % (code, t))


def run(d):
    a = d.a
    if not setup(d):
        return
    t_start, n_start, per_cycle = time.time(), 0, 0.0
    t_cycles = t_start
    for n in range(1, a.cycles + 1):
        spent = time.time() - d.t0
        per_cycle = ((time.time() - t_start) / (n - 1 - n_start) if n - 1 > n_start
                     else per_cycle)
        if (n - 1 - n_start >= 2 and d.sampling < 8 and
                spent + (a.cycles - n + 1) * per_cycle * 1.1 + 15 > a.budget):
            d.sampling = 4 if not d.sampling else 8
            info("cycle %d: at %.1f s a cycle, %d cycles would end after the time budget (%d s): "
                 "from now on each restart reads the DEKs of every mix and lk environment and a "
                 "rotating 1/%d of bulk's (all of them after the last kill)"
                 % (n, per_cycle, a.cycles, a.budget, d.sampling))
            t_start, n_start = time.time(), n - 1
        if n > 1 and spent + 1.5 * per_cycle + 10 > a.budget:
            report(False, "%d cycles within the time budget (%d s)" % (a.cycles, a.budget),
                   "%.0f s spent after %d cycles: this machine is too slow or too busy "
                   "(KBT_CRASH_BUDGET)" % (spent, n - 1))
            break
        if n > 1:
            # The next activation is 24 h after the last, the next lock 72 h
            # after the last unlock (moved here, after any repair's unlock).
            d.clock.bump(73 * HOUR)
        # Mostly in the middle of the activation; one cycle in five later,
        # near or after its end (the job's last commit, the key switch).
        if random.random() < 0.2:
            delay = random.uniform(a.max_delay, 2 * a.max_delay)
        else:
            delay = random.uniform(a.min_delay, a.max_delay)
        w = Workload(d, n)
        at_kill = w.run(delay)
        d.stats["cycles"] = n
        with d.mu:
            inflight = sum(1 for te in d.maybe)
        report(not w.wrong, "cycle %d: workload for %.2f s then SIGKILL: %s; never a wrong DEK"
               % (n, delay, ", ".join("%s %d" % (k, v) for k, v in w.counts.items() if v)),
               "wrong DEK for %s" % w.wrong[:5])
        report(w.own_exit is None, "cycle %d: the broker was still running when it was killed" % n,
               "it had ended by itself with status %s (a negative status is a signal)" % w.own_exit)
        report(not w.unexpected, "cycle %d: no unexpected error before the kill" % n,
               "%d: %s" % (len(w.unexpected), w.unexpected[:5]))
        d.stats["reads"] += w.counts["reads"]
        d.stats["refusals"] += w.counts["refused"]
        jobs, lk_state, lk_envs = crash_checks(d, n)
        during = []
        if jobs:
            d.stats["kills_activation"] += 1
            during.append("activation (job %s at %d of %d)" % (jobs[0][0], jobs[0][2], jobs[0][3]))
        if at_kill["lk"] is not None or lk_state == "locked" or lk_envs:
            d.stats["kills_lock"] += 1
            if at_kill["lk"] is not None:
                d.stats["kills_lock_inflight"] += 1
            during.append("lock/unlock (%s in flight; lk %s, %d environments locked)"
                          % (at_kill["lk"] or "nothing", lk_state, lk_envs))
        if inflight:
            d.stats["kills_create"] += 1
            during.append("%d creation(s) in flight" % inflight)
        info("cycle %d: killed during %s" % (n, "; ".join(during) or "other calls"))
        secs = d.broker.start()
        report(secs is not None, "cycle %d: the broker restarts after the kill (%.1f s)" % (n, secs or 0),
               "see the broker log")
        if secs is None:
            return
        d.stats["restart_s"].append(secs)
        after_restart(d, n, jobs, last=(n == a.cycles))
        if kbt_grpc.failures() and a.stop_on_failure:
            info("stopping at the first failing cycle (--stop-on-failure)")
            break
    info("%d cycles in %.0f s" % (d.stats["cycles"], time.time() - t_cycles))
    final_state(d)
    # A clean stop at the end: exit 0, and the last checks once more.
    # (Channels closed first: the broker's drain waits for idle connections.)
    d.conns.close()
    d.conns = None
    rc = d.broker.stop()
    report(rc == 0, "the broker exits 0 on SIGTERM after the last cycle", "exit status %s" % rc)
    img = os.path.join(a.out, "image")
    if d.pg:
        bad = store_invariants(d.db)[0]
        report(not bad, "after the clean stop: store invariants hold", "; ".join(bad))
        r = kbt_audit.verify(d.audit_db, d.audit_pub)
    else:
        r1, r2 = integrity(copy_image(d.db, img)), integrity(copy_image(d.audit_db, img))
        report(r1 == "ok" and r2 == "ok", "after the clean stop: integrity_check ok on both databases",
               "%s; %s" % (r1, r2))
        r = kbt_audit.verify_db(os.path.join(img, os.path.basename(d.audit_db)), d.audit_pub)
    report(r.ok, "after the clean stop: audit chain and checkpoints verify: %s" % r)


def summary(d):
    st = d.stats
    rs = st["restart_s"]
    js = st["job_finish_s"]
    info("cycles run: %d" % st["cycles"])
    info("kills during activation: %d (jobs resumed and finished after restart: %d, at most %.1f s)"
         % (st["kills_activation"], st["jobs_resumed"], max(js) if js else 0))
    info("kills during lock/unlock: %d (a lock/unlock call in flight: %d; repairs needed: %d)"
         % (st["kills_lock"], st["kills_lock_inflight"], st["lk_repairs"]))
    info("kills with a creation in flight: %d (afterwards %d existed, %d did not)"
         % (st["kills_create"], st["maybe_exist"], st["maybe_absent"]))
    info("state changes the kills cut short, each a 'started' event with a restart after it: %d"
         % st["interrupted"])
    info("environments acknowledged during the workload: %d; DEK checks after restarts: %d; "
         "workload reads: %d; refusals: %d" % (st["acked"], st["dek_checks"], st["reads"],
                                               st["refusals"]))
    if d.sampling:
        info("time was short: after some restarts bulk's DEKs were read 1/%d at a time"
             % d.sampling)
    if rs:
        info("restart time: mean %.1f s, max %.1f s; test clock moved %.0f days"
             % (sum(rs) / len(rs), max(rs), d.clock.moved / 86400.0))
    with open(os.path.join(d.a.out, "summary.json"), "w") as f:
        json.dump({k: v for k, v in st.items()}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--clock", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kbctl")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--bulk", type=int, default=2000, help="customer-managed environments in bulk")
    ap.add_argument("--lk-envs", type=int, default=50)
    ap.add_argument("--mix-initial", type=int, default=50)
    ap.add_argument("--creates", type=int, default=30, help="mix creations per cycle, at most")
    ap.add_argument("--min-delay", type=float, default=0.3)
    ap.add_argument("--max-delay", type=float, default=2.5)
    ap.add_argument("--job-bound", type=int, default=60)
    ap.add_argument("--budget", type=int, default=100000,
                    help="seconds: start no cycle that would likely end after this")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop-on-failure", action="store_true")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    info("random seed %d (--seed / KBT_CRASH_SEED to replay the same schedule)" % seed)
    a.kbctl_audit = False
    if a.kbctl:
        p = subprocess.run([a.kbctl, "audit", "verify", "--help"], capture_output=True)
        a.kbctl_audit = p.returncode == 0
    if not a.kbctl_audit:
        info("TODO: this kbctl has no 'audit verify' yet: the chain is verified by "
             "kbt_audit.py only (crash images); enable kbctl's export/--online check by "
             "rebuilding kbctl with it (detected automatically)")
    d = Driver(a)

    def on_term(signum, frame):
        raise SystemExit("test-crash.py: signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    try:
        run(d)
    finally:
        if d.broker.alive():
            d.broker.kill()
        if d.conns is not None:
            d.conns.close()
        summary(d)
    return 1 if kbt_grpc.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
