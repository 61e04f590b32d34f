#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-cluster-chaos.py: the driver of test-cluster-chaos.sh (three brokers
on one PostgreSQL database and one token, SIGKILLed at random under load).

  test-cluster-chaos.py --broker BIN --conf C1,C2,C3 --addr A1,A2,A3
                        --log L1,L2,L3 --pki DIR --out DIR --pg-dir DIR
                        --pg-uri URI [--kbctl BIN] [--rounds 20]

Starts the three brokers itself (kbt_grpc.Broker, the same wait as lib.sh's
kbt_start; pids in DIR/broker-N.pid), sets up three tenants with
environments, then runs a mixed load on threads for the whole test:

  readers     GetDataKey as the environments' services, the current
              version and now and then an older one, each answer's DEK
              compared with the first answer seen for that (tenant,
              environment, version) (never another DEK)
  creators    CreateEnvironment as the admin in the three base tenants, the
              new environment's DEK read once at once (RotateDataKey
              instead once they hold MAX_BASE_ENVS each)
  rotator     RotateDataKey, then GetDataKey of the version it returned on
              another broker (recorded), and the current version on a
              third (never older than the acknowledged rotation)
  tenants     CreateTenant, and its first environment (MAX_TENANTS of them)

Each call is a client's with the address list: it goes to a random broker
and, answered UNAVAILABLE (or CANCELLED, DEADLINE_EXCEEDED, load shedding),
to the next, for at most --failover-bound seconds. Every acknowledged write
(the call returned OK; or ALREADY_EXISTS for a retried creation, which
says the first attempt committed) goes into DIR/journal.jsonl at once,
with the DEK's SHA-256 for each version first read (never the DEK).

Rounds (--rounds): the load on all three for a while, SIGKILL of a random
broker, the load on the two others, the killed one restarted and waited
for (SERVING). Then the PostgreSQL server is stopped under the load
(kbt-pg.sh stop): calls fail UNAVAILABLE and every broker's health says
NOT_SERVING; started again on the same data, every broker serves again
by itself, as the same process. Afterwards, from the journal file: every
acknowledged tenant and environment exists, every acknowledged DEK version
exists (the environment's version is at least it) and GetDataKey of that
version returns the DEK first read for it, each read through another
broker than the one that wrote it; the audit chain verifies (kbt_audit.py
on the database, and kbctl audit export + verify with the key pinned);
every broker exits 0 on SIGTERM.

Prints "ok ..."/"FAIL ..." and "info ..." lines (calls, errors by code,
the time from each kill to the next successful call); exits 1 on a failure.
"""
import argparse
import hashlib
import json
import os
import random
import signal
import statistics
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
report, info = kbt_grpc.report, kbt_grpc.info

# Answers after which a client goes on to the next address.
NEXT = (SC.UNAVAILABLE, SC.CANCELLED, SC.DEADLINE_EXCEEDED, SC.RESOURCE_EXHAUSTED)
# The base tenants, their environments made at the start.
BASE_TENANTS = ("ta", "tb", "tc")
BASE_ENVS = 8
PER_CERT = 16  # environments a service certificate names (the broker's limit)
# Caps that bound the service certificates, so the channels (a TLS
# connection each, to each broker, made again after every kill): at most
# 192 environments in each base tenant (12 certificates each) and 128 new
# tenants with one environment each (8 certificates). Past them the
# creators rotate DEKs instead.
MAX_BASE_ENVS = 192
MAX_TENANTS = 128

# A channel reconnects soon after its broker comes back (not gRPC's back-off
# of up to 2 minutes); each its own subchannels. (Not
# grpc.min_reconnect_backoff_ms: it is also the connect timeout, and a TLS
# handshake with a busy broker takes longer.)
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1),
                   ("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 250)]


def sha(dek):
    return hashlib.sha256(dek).hexdigest()


class Journal:
    """Acknowledged writes, one JSON line each, flushed at once; the
    final checks read the file back."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "w")
        self.mu = threading.Lock()

    def add(self, **rec):
        rec["t_us"] = int(time.time() * 1e6)
        with self.mu:
            self.f.write(json.dumps(rec, sort_keys=True) + "\n")
            self.f.flush()

    def close(self):
        with self.mu:
            self.f.close()

    @staticmethod
    def read(path):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]


class Stats:
    """Calls and their outcomes, and the calls' times (for the kill gaps)."""

    def __init__(self):
        self.mu = threading.Lock()
        self.calls = 0
        self.ok = 0
        self.final = {}      # code name -> calls that ended with it
        self.attempts = {}   # code name -> attempts answered so
        self.failovers = 0   # calls answered by another broker than the first
        self.done = []       # (t_end, first broker, ok, t_start, answered by)
        self.bad = []        # unexpected final errors (outside the outage)
        self.outage_codes = {}
        self.wrong = []      # another DEK than the one recorded
        self.stale = []      # a current version older than an acknowledged one


class Cluster:
    """The three brokers, their channels, and calls with failover."""

    def __init__(self, a):
        self.a = a
        self.addrs = a.addr.split(",")
        self.n = len(self.addrs)
        self.ca = os.path.join(a.pki, "ca.crt")
        self.admin_base = os.path.join(a.pki, "admin")
        self.auditor_base = os.path.join(a.pki, "auditor")
        self.brokers = []
        for i, (conf, log) in enumerate(zip(a.conf.split(","), a.log.split(","))):
            self.brokers.append(kbt_grpc.Broker(
                a.broker, conf, log, os.path.join(a.out, "broker-%d.pid" % (i + 1)),
                self.addrs[i], self.ca, self.admin_base + ".crt", self.admin_base + ".key"))
        self.mu = threading.Lock()
        self.chans = {}
        self.stats = Stats()
        self.outage = None  # (start, end or None): the PostgreSQL server down
        self.bound = a.failover_bound  # seconds a call goes on over the list

    def stub(self, base, i):
        with self.mu:
            s = self.chans.get((base, i))
            if s is None:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=kbt_grpc.read(self.ca),
                    private_key=kbt_grpc.read(base + ".key"),
                    certificate_chain=kbt_grpc.read(base + ".crt"))
                ch = grpc.secure_channel(self.addrs[i], creds, options=CHANNEL_OPTIONS)
                s = self.chans[(base, i)] = (ch, pb_grpc.KeyBrokerStub(ch))
            return s[1]

    def close(self):
        with self.mu:
            for ch, _ in self.chans.values():
                ch.close()
            self.chans.clear()

    def in_outage(self, t0, t1):
        o = self.outage
        return o is not None and t1 >= o[0] and (o[1] is None or t0 <= o[1])

    def call(self, base, method, req, first=None, avoid=None, timeout=5, bound=None):
        """A client's call over the address list: (code, response or
        details, broker that answered, tries). Starts at `first` (random;
        not `avoid`) and goes on to the next address on NEXT answers, for
        at most `bound` seconds."""
        bound = self.bound if bound is None else bound
        if first is None:
            choices = [i for i in range(self.n) if i != avoid] or list(range(self.n))
            first = random.choice(choices)
        t0 = time.time()
        i, tries = first, []
        while True:
            fn = getattr(self.stub(base, i), method)
            code, r = kbt_grpc.status_of(lambda: fn(req, timeout=timeout))
            tries.append(code)
            st = self.stats
            with st.mu:
                st.attempts[code.name] = st.attempts.get(code.name, 0) + 1
            if code not in NEXT or time.time() - t0 > bound:
                break
            i = (i + 1) % self.n
            if len(tries) % self.n == 0:
                time.sleep(0.05)  # every address refused: a breath
        t1 = time.time()
        st = self.stats
        with st.mu:
            st.calls += 1
            st.final[code.name] = st.final.get(code.name, 0) + 1
            if code == OK:
                st.ok += 1
                if i != first:
                    st.failovers += 1
            st.done.append((t1, first, code == OK, t0, i))
        return code, r, i, tries

    def unexpected(self, what, code, r, t0, t1):
        st = self.stats
        with st.mu:
            if self.in_outage(t0, t1):
                st.outage_codes[code.name] = st.outage_codes.get(code.name, 0) + 1
            else:
                st.bad.append("%s: %s %s" % (what, code.name, str(r)[:200]))


class World:
    """What the load knows: tenants, environments, DEK versions, certs."""

    def __init__(self, a, cl, journal):
        self.a = a
        self.cl = cl
        self.j = journal
        self.mu = threading.Lock()
        self.tenants = []           # acknowledged tenants
        self.next_env = {}          # tenant -> next environment number
        self.envs = []              # acknowledged (tenant, env)
        self.versions = {}          # (tenant, env) -> acknowledged versions
        self.deks = {}              # (tenant, env, version) -> sha256
        self.certs = {}             # (tenant, chunk) -> base
        self.next_tenant = 0
        self.key = None

    def env_name(self, i):
        return "e%04d" % i

    def cert(self, t, e):
        """The service certificate naming (t, e), made on first use: one
        per PER_CERT environment numbers of a base tenant, one per PER_CERT
        new tenants (their one environment, e0000)."""
        if t in BASE_TENANTS:
            chunk = int(e[1:]) // PER_CERT
            key = (t, chunk)
            uris = ["kb://env/%s/%s" % (t, self.env_name(k))
                    for k in range(chunk * PER_CERT, (chunk + 1) * PER_CERT)]
        else:
            chunk = (int(t[1:]) - 1) // PER_CERT
            key = ("new", chunk)
            uris = ["kb://env/n%04d/%s" % (k, self.env_name(0))
                    for k in range(chunk * PER_CERT + 1, (chunk + 1) * PER_CERT + 1)]
        with self.mu:
            base = self.certs.get(key)
            if base is not None:
                return base
            if self.key is None:
                from cryptography.hazmat.primitives.asymmetric import ec
                self.key = ec.generate_private_key(ec.SECP256R1())
            base = kbt_grpc.mint_cert(
                self.a.pki, os.path.join(self.a.out, "certs", "svc-%s-%d" % key),
                [("OU", "service"), ("CN", "kbt-chaos-%s-%d" % key)], uris, 60, self.key)
            self.certs[key] = base
            return base

    def record_dek(self, t, e, v, dek, how):
        """The DEK read for (t, e, v): recorded the first time, compared
        after that. False if it differs."""
        h = sha(dek)
        with self.mu:
            want = self.deks.get((t, e, v))
            if want is None:
                self.deks[(t, e, v)] = h
        if want is None:
            self.j.add(op="dek", tenant=t, env=e, version=v, sha256=h, how=how)
            return True
        if want != h:
            with self.cl.stats.mu:
                self.cl.stats.wrong.append("%s/%s v%d (%s)" % (t, e, v, how))
            return False
        return True

    def get_dek(self, t, e, version=0, avoid=None, first=None):
        req = pb.GetDataKeyRequest(tenant_id=t, environment=e, version=version)
        t0 = time.time()
        code, r, i, _ = self.cl.call(self.cert(t, e), "GetDataKey", req, first=first, avoid=avoid)
        if code == OK:
            if len(r.dek) != 32 or (version and r.dek_version != version):
                self.cl.unexpected("GetDataKey %s/%s v%d" % (t, e, version), code,
                                   "a DEK of %d bytes, version %d" % (len(r.dek), r.dek_version),
                                   t0, time.time())
                return None, i
            self.record_dek(t, e, r.dek_version, r.dek, "read")
            return r, i
        self.cl.unexpected("GetDataKey %s/%s v%d" % (t, e, version), code, r, t0, time.time())
        return None, i

    def get_dek_raw(self, t, e, v, avoid=None):
        """(code, SHA-256 of the DEK) of GetDataKey version v, recording
        nothing (the final checks)."""
        req = pb.GetDataKeyRequest(tenant_id=t, environment=e, version=v)
        code, r, _, _ = self.cl.call(self.cert(t, e), "GetDataKey", req, avoid=avoid)
        if code != OK:
            return code, None
        if r.dek_version != v:
            return SC.INTERNAL, None
        return OK, sha(r.dek)

    def env_created(self, t, e, how):
        with self.mu:
            self.envs.append((t, e))
            self.versions.setdefault((t, e), set()).add(1)
        self.j.add(op="env", tenant=t, env=e, how=how)

    def create_env(self, t):
        """CreateEnvironment as the admin; (tenant, env) once acknowledged."""
        with self.mu:
            n = self.next_env.get(t, 0)
            self.next_env[t] = n + 1
        e = self.env_name(n)
        self.cert(t, e)  # the certificate ready before the first read
        req = pb.CreateEnvironmentRequest(tenant_id=t, name=e)
        t0 = time.time()
        code, r, _, tries = self.cl.call(self.cl.admin_base, "CreateEnvironment", req)
        if code == OK or (code == SC.ALREADY_EXISTS and len(tries) > 1):
            self.env_created(t, e, "ok" if code == OK else "already-exists-on-retry")
            return (t, e)
        self.cl.unexpected("CreateEnvironment %s/%s" % (t, e), code, r, t0, time.time())
        return None

    def create_tenant(self):
        with self.mu:
            self.next_tenant += 1
            t = "n%04d" % self.next_tenant
        req = pb.CreateTenantRequest(id=t, display_name="chaos " + t)
        t0 = time.time()
        code, r, _, tries = self.cl.call(self.cl.admin_base, "CreateTenant", req)
        if code == OK or (code == SC.ALREADY_EXISTS and len(tries) > 1):
            with self.mu:
                self.tenants.append(t)
            self.j.add(op="tenant", tenant=t, how="ok" if code == OK else "already-exists-on-retry")
            return t
        self.cl.unexpected("CreateTenant %s" % t, code, r, t0, time.time())
        return None

    def rotate(self, t, e):
        req = pb.EnvironmentRef(tenant_id=t, name=e)
        t0 = time.time()
        code, r, i, _ = self.cl.call(self.cl.admin_base, "RotateDataKey", req)
        if code != OK:
            self.cl.unexpected("RotateDataKey %s/%s" % (t, e), code, r, t0, time.time())
            return
        v = r.current_version
        with self.mu:
            self.versions.setdefault((t, e), set()).add(v)
        self.j.add(op="rotate", tenant=t, env=e, version=v, broker=i)
        # That version through another broker (the DEK recorded), and the
        # current version through a third: never older than v.
        k, j = self.get_dek(t, e, version=v, avoid=i)
        others = [x for x in range(self.cl.n) if x not in (i, j)]
        cur, _ = self.get_dek(t, e, first=others[0] if others else None)
        if cur is not None and cur.dek_version < v:
            with self.cl.stats.mu:
                self.cl.stats.stale.append("%s/%s: version %d after RotateDataKey acknowledged %d"
                                           % (t, e, cur.dek_version, v))

    def pick_env(self):
        with self.mu:
            if not self.envs:
                return None, 0
            te = random.choice(self.envs)
            vs = sorted(self.versions.get(te, {1}))
        v = random.choice(vs) if random.random() < 0.2 else 0
        return te, v


class Load:
    def __init__(self, w):
        self.w = w
        self.stop = threading.Event()
        self.th = []
        self.counts = {"reads": 0, "envs": 0, "rotations": 0, "tenants": 0}
        self.mu = threading.Lock()

    def count(self, k):
        with self.mu:
            self.counts[k] += 1

    def reader(self):
        while not self.stop.is_set():
            te, v = self.w.pick_env()
            if te is None:
                time.sleep(0.05)
                continue
            r, _ = self.w.get_dek(te[0], te[1], version=v)
            if r is not None:
                self.count("reads")
                time.sleep(0.002)
            else:
                self.stop.wait(0.05)

    def creator(self):
        while not self.stop.is_set():
            with self.w.mu:
                ts = [t for t in BASE_TENANTS if self.w.next_env.get(t, 0) < MAX_BASE_ENVS]
            if not ts:
                te, _ = self.w.pick_env()  # at the cap: rotations instead
                if te is not None:
                    self.w.rotate(*te)
                    self.count("rotations")
                self.stop.wait(0.03)
                continue
            te = self.w.create_env(random.choice(ts))
            if te is not None:
                self.count("envs")
                self.w.get_dek(*te)
            self.stop.wait(0.03)

    def rotator(self):
        while not self.stop.is_set():
            te, _ = self.w.pick_env()
            if te is not None:
                self.w.rotate(*te)
                self.count("rotations")
            self.stop.wait(0.03)

    def tenant_maker(self):
        while not self.stop.is_set():
            with self.w.mu:
                full = self.w.next_tenant >= MAX_TENANTS
            if full:
                self.stop.wait(0.2)
                continue
            t = self.w.create_tenant()
            if t is not None:
                self.count("tenants")
                te = self.w.create_env(t)
                if te is not None:
                    self.w.get_dek(*te)
            self.stop.wait(0.2)

    def start(self, readers, creators):
        fns = ([self.reader] * readers + [self.creator] * creators
               + [self.rotator, self.tenant_maker])
        self.th = [threading.Thread(target=f, daemon=True) for f in fns]
        for t in self.th:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.th:
            t.join(60)
        return [t for t in self.th if t.is_alive()]


# ---- health ----

def health(cl, i, timeout=2):
    """SERVING, NOT_SERVING or the error's code name, of broker i (a fresh
    channel: kbt_grpc.wait_serving's way)."""
    with kbt_grpc.channel(cl.addrs[i], cl.ca, cl.admin_base + ".crt", cl.admin_base + ".key") as ch:
        fn = ch.unary_unary(kbt_grpc.HEALTH_CHECK)
        code, r = kbt_grpc.status_of(lambda: fn(b"", timeout=timeout))
    if code != OK:
        return code.name
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(r, "status %r" % r)


def wait_health(cl, want, bound):
    """Seconds until every broker says `want`, or None (and the answers)."""
    t0 = time.time()
    last = {}
    while time.time() - t0 < bound:
        last = {i: health(cl, i) for i in range(cl.n)}
        if all(v == want for v in last.values()):
            return time.time() - t0, last
        time.sleep(0.1)
    return None, last


# ---- the phases ----

def setup(cl, w):
    t0 = time.time()
    secs = cl.brokers[0].start()
    report(secs is not None, "broker 1 starts on the fresh database (%.1f s)" % (secs or 0),
           "see its log")
    if secs is None:
        return False
    # One after the other: two brokers starting at the same moment on one
    # SoftHSMv2 token directory sometimes see no token at all (SoftHSMv2
    # reading token files another process is writing; the broker does not
    # look again), a start-up race of its own, not what this test is for.
    for i, b in enumerate(cl.brokers[1:], 2):
        secs = b.start()
        report(secs is not None, "broker %d starts on the same database and token (%.1f s)"
               % (i, secs or 0), "see its log")
        if secs is None:
            return False
    for k, t in enumerate(BASE_TENANTS):
        code, r, _, _ = cl.call(cl.admin_base, "CreateTenant",
                                pb.CreateTenantRequest(id=t, display_name="chaos " + t), first=k % cl.n)
        if code != OK:
            report(False, "CreateTenant %s" % t, "%s %s" % (code, r))
            return False
        with w.mu:
            w.tenants.append(t)
        w.j.add(op="tenant", tenant=t, how="ok")
    made = kbt_grpc.parallel(lambda t: [w.create_env(t) for _ in range(BASE_ENVS)], BASE_TENANTS, 3)
    ok = all(all(x is not None for x in v) for v in made.values())
    report(ok, "tenants %s, each with %d environments, made through all three brokers"
           % (", ".join(BASE_TENANTS), BASE_ENVS), "%s; %s" % (made, cl.stats.bad[:3]))
    with w.mu:
        envs = list(w.envs)
    got = [w.get_dek(t, e, first=k % cl.n)[0] for k, (t, e) in enumerate(envs)]
    report(all(g is not None for g in got), "every environment's DEK read once (%d)" % len(envs),
           "; ".join(cl.stats.bad[:3]))
    info("set-up took %.1f s" % (time.time() - t0))
    return ok and all(g is not None for g in got) and not cl.stats.bad


def kill_gaps(cl, kills):
    """For each kill: from it to the next successful call (any), and to the
    next successful call of a client that went to the killed broker first."""
    with cl.stats.mu:
        done = sorted(cl.stats.done)
    rows = []
    for tk, k, t_up in kills:
        any_ok = next((d[0] for d in done if d[0] > tk and d[2]), None)
        first_k = next((d[0] for d in done if d[0] > tk and d[2] and d[1] == k), None)
        # The longest call that tried the killed broker first and was
        # answered OK while it was down.
        longest = max((d[0] - d[3] for d in done if d[1] == k and d[2] and d[3] <= t_up
                       and d[0] >= tk), default=0)
        rows.append((tk, k, any_ok and any_ok - tk, first_k and first_k - tk, longest))
    return rows


def rounds(cl, w, load, a, t_begin):
    kills = []
    per_round = 0.0
    t_rounds = time.time()
    restarts = []
    for n in range(1, a.rounds + 1):
        spent = time.time() - t_begin
        if n > 1:
            per_round = (time.time() - t_rounds) / (n - 1)
        if n > 1 and spent + (a.rounds - n + 1) * per_round + a.reserve > a.budget:
            report(False, "%d rounds within the time budget (%d s)" % (a.rounds, a.budget),
                   "%.0f s spent after %d rounds (%.1f s a round): this machine is too slow or "
                   "too busy" % (spent, n - 1, per_round))
            break
        time.sleep(random.uniform(a.min_up, a.max_up))
        dead = [i + 1 for i, b in enumerate(cl.brokers) if not b.alive()]
        report(not dead, "round %d: all three brokers running before the kill" % n,
               "broker(s) %s ended by themselves; see their logs" % dead)
        if dead:
            break
        k = random.randrange(cl.n)
        tk = time.time()
        own = cl.brokers[k].kill()
        if own is not None:
            report(False, "round %d: broker %d was still running when it was killed" % (n, k + 1),
                   "it had ended by itself with status %s" % own)
        time.sleep(random.uniform(a.min_down, a.max_down))
        t_up = time.time()
        secs = cl.brokers[k].start()
        if secs is None:
            report(False, "round %d: broker %d restarts after the SIGKILL" % (n, k + 1),
                   "see %s" % cl.brokers[k].log)
            break
        restarts.append(secs)
        kills.append((tk, k, t_up))
        with cl.stats.mu:
            bad = len(cl.stats.bad)
        info("round %d: SIGKILL of broker %d after %.2f s of load, restarted %.2f s later "
             "(SERVING in %.2f s); %d calls so far, %d failed for good"
             % (n, k + 1, tk - (kills[-2][2] if len(kills) > 1 else t_rounds), t_up - tk, secs,
                cl.stats.calls, bad))
    report(len(kills) == a.rounds, "%d SIGKILL/restart rounds of a random broker under load"
           % len(kills), "only %d of %d ran" % (len(kills), a.rounds))
    info("the rounds took %.1f s; restarts to SERVING: mean %.2f s, max %.2f s"
         % (time.time() - t_rounds, statistics.mean(restarts) if restarts else 0,
            max(restarts) if restarts else 0))
    return kills


def pg_stop(a):
    p = subprocess.run(["bash", os.path.join(a.src, "tests", "pg", "kbt-pg.sh"), "stop", a.pg_dir],
                       capture_output=True, text=True, timeout=60)
    return p.returncode == 0, p.stderr[-300:]


def pg_start(a):
    """The server again on the same data, as its owner (lib.sh's
    kbt_pg_server_start, which this driver cannot call)."""
    import pwd
    data = os.path.join(a.pg_dir, "data")
    bindir = "/usr/lib/postgresql/15/bin"
    if not os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                text=True).stdout.strip()
    cmd = [os.path.join(bindir, "pg_ctl"), "-D", data, "-l",
           os.path.join(a.pg_dir, "server.log"), "-w", "-t", "60", "start"]
    if os.geteuid() == 0:
        owner = pwd.getpwuid(os.stat(data).st_uid).pw_name
        cmd = ["runuser", "-u", owner, "--"] + cmd
    p = subprocess.run(cmd, cwd=a.pg_dir, capture_output=True, text=True, timeout=90)
    return p.returncode == 0, (p.stdout + p.stderr)[-300:]


def pg_outage(cl, w, load, a):
    """The server stopped and started under the load."""
    pids = [b.proc.pid for b in cl.brokers]
    with cl.stats.mu:
        calls0, ok0 = cl.stats.calls, cl.stats.ok
    time.sleep(1.0)
    # Each call tries every address once: what a client sees is the
    # outage itself, not a retry that outlasts it.
    cl.bound = 0
    t_stop = time.time()
    cl.outage = (t_stop, None)
    ok, err = pg_stop(a)
    report(ok, "the PostgreSQL server stops under the load (kbt-pg.sh stop, fast shutdown)", err)
    if not ok:
        return
    secs, last = wait_health(cl, "NOT_SERVING", 5)
    report(secs is not None, "every broker's health says NOT_SERVING within 5 s (%.1f s)" % (secs or 0),
           "last answers: %s" % last)
    time.sleep(1.5)
    with cl.stats.mu:
        in_outage = [d for d in cl.stats.done if d[3] >= t_stop + (secs or 5) + 0.2]
    n_fail = sum(1 for d in in_outage if not d[2])
    n_ok = sum(1 for d in in_outage if d[2])
    report(n_fail > 0 and n_ok == 0,
           "with the server down and health NOT_SERVING, calls fail (%d failed, %d answered OK)"
           % (n_fail, n_ok), "some calls were answered OK while the database was down")
    t_start0 = time.time()
    ok, err = pg_start(a)
    report(ok, "the PostgreSQL server starts again on the same data (pg_ctl start, as its owner)", err)
    if not ok:
        return
    secs2, last = wait_health(cl, "SERVING", 15)
    t_back = time.time()
    cl.outage = (t_stop, t_back)
    cl.bound = a.failover_bound
    report(secs2 is not None, "every broker's health says SERVING again within 15 s of the server's "
           "return, by itself (%.1f s)" % (secs2 or 0), "last answers: %s" % last)
    same = [b.alive() and b.proc.pid == p for b, p in zip(cl.brokers, pids)]
    report(all(same), "no broker was restarted or ended: the same three processes serve",
           "alive/same pid: %s" % same)
    time.sleep(2.0)
    with cl.stats.mu:
        after = [d for d in cl.stats.done if d[3] > t_back + 0.5]
        codes = dict(cl.stats.outage_codes)
        calls1, ok1 = cl.stats.calls, cl.stats.ok
    by = [sum(1 for d in after if d[2] and d[4] == i) for i in range(cl.n)]
    report(sum(1 for d in after if not d[2]) == 0 and all(by),
           "after the outage every call succeeds again, on every broker (%s answered OK)"
           % "/".join(map(str, by)),
           "%d failed" % sum(1 for d in after if not d[2]))
    first_ok = min((d[0] for d in cl.stats.done if d[0] > t_start0 and d[2]), default=None)
    info("PostgreSQL outage: down %.1f s; %d calls during the outage section, %d OK; errors in the "
         "outage by code: %s; first successful call %.2f s after pg_ctl start began, health "
         "SERVING on all three after %.2f s"
         % (t_start0 - t_stop, calls1 - calls0, ok1 - ok0,
            ", ".join("%s %d" % kv for kv in sorted(codes.items())) or "none",
            (first_ok - t_start0) if first_ok else -1, time.time() - t_start0 - 2.0))
    bad = {k: v for k, v in codes.items() if k != "UNAVAILABLE"}
    report(not bad, "every call that failed during the outage failed UNAVAILABLE",
           "other codes: %s" % bad)


def verify_journal(cl, w, a):
    """From the journal file: every acknowledged write is there."""
    recs = Journal.read(os.path.join(a.out, "journal.jsonl"))
    tenants = sorted({r["tenant"] for r in recs if r["op"] == "tenant"})
    envs = sorted({(r["tenant"], r["env"]) for r in recs if r["op"] == "env"})
    rot = {}
    for r in recs:
        if r["op"] == "rotate":
            rot.setdefault((r["tenant"], r["env"]), []).append((r["version"], r["broker"]))
    deks = {}
    for r in recs:
        if r["op"] == "dek":
            deks.setdefault((r["tenant"], r["env"], r["version"]), r["sha256"])
    info("journal: %d tenants, %d environments, %d rotations acknowledged; %d DEK versions "
         "recorded (%d records in all)" % (len(tenants), len(envs),
                                           sum(len(v) for v in rot.values()), len(deks), len(recs)))

    def tenant_ok(t):
        code, r, _, _ = cl.call(cl.admin_base, "GetTenant", pb.GetTenantRequest(id=t))
        return code == OK and r.id == t
    res = kbt_grpc.parallel(tenant_ok, tenants, 6)
    missing = [t for t in tenants if not res[t]]
    report(not missing, "every acknowledged tenant exists (%d)" % len(tenants),
           "missing: %s" % missing[:10])

    def env_ok(te):
        code, r, _, _ = cl.call(cl.admin_base, "GetEnvironment",
                                pb.GetEnvironmentRequest(tenant_id=te[0], name=te[1]))
        return (code, r.dek_version if code == OK else r)
    res = kbt_grpc.parallel(env_ok, envs, 6)
    missing = [(te, res[te]) for te in envs if res[te][0] != OK]
    report(not missing, "every acknowledged environment exists (%d)" % len(envs),
           "missing or failing: %s" % missing[:10])
    behind = []
    for te, vs in rot.items():
        code, cur = res.get(te, (None, 0))
        if code == OK and cur < max(v for v, _ in vs):
            behind.append("%s/%s at version %d, %d acknowledged" % (te + (cur, max(v for v, _ in vs))))
    report(not behind, "every environment's DEK version is at least its last acknowledged "
           "rotation (%d environments rotated)" % len(rot), "; ".join(behind[:5]))

    # Every version acknowledged or read: GetDataKey of it, through another
    # broker than the one that rotated it, returns the DEK first read.
    want = dict(deks)
    for te, vs in rot.items():
        for v, b in vs:
            want.setdefault(te + (v,), None)
    written = {te + (v,): b for te, vs in rot.items() for v, b in vs}
    keys = sorted(want)

    def read_v(k):
        t, e, v = k
        return w.get_dek_raw(t, e, v, avoid=written.get(k))
    res = kbt_grpc.parallel(read_v, keys, 6)
    wrong, failed, unread = [], [], 0
    for k in keys:
        code, h = res[k]
        if code != OK:
            failed.append("%s/%s v%d: %s" % (k + (code.name,)))
        elif want[k] is None:
            unread += 1
        elif h != want[k]:
            wrong.append("%s/%s v%d" % k)
    nrot = sum(len(v) for v in rot.values())
    report(not failed and not wrong,
           "every acknowledged DEK version exists and returns the DEK first read for it "
           "(%d versions, %d of them acknowledged rotations; %d never read before)"
           % (len(keys), nrot, unread),
           "%d failed %s; %d another DEK %s" % (len(failed), failed[:5], len(wrong), wrong[:5]))


def audit_checks(cl, a):
    code, k, _, _ = cl.call(cl.auditor_base, "GetAuditKey", pb.GetAuditKeyRequest())
    report(code == OK, "GetAuditKey gives the audit public key", "%s %s" % (code, k))
    if code != OK:
        return
    pub = kbt_audit.load_public_key(k.public_key_pem)
    r = kbt_audit.verify(a.pg_uri, pub)
    report(r.ok, "the audit chain and its checkpoints verify in the database (kbt_audit.py): %s" % r)
    # A state change records "started" before it acts, its outcome after:
    # one without an outcome must have been cut short by a restart after it
    # (the verifier counts those), or by the PostgreSQL outage (its
    # outcome could not be written): shown, with whether its effect is there.
    outside = []
    for seq in r.open[:20]:
        rows = kbt_audit.psql_rows(a.pg_uri, "SELECT time_us, method, tenant_id, environment, "
                                   "request_id, actor FROM events WHERE seq = %d" % seq)
        if not rows:
            continue
        t_us, method, tenant, env, rid, actor = rows[0]
        t = int(t_us) / 1e6
        o = cl.outage
        during = o is not None and o[0] - 1 <= t <= (o[1] or t) + 1
        effect = ""
        if method == "CreateEnvironment":
            code, _, _, _ = cl.call(cl.admin_base, "GetEnvironment",
                                    pb.GetEnvironmentRequest(tenant_id=tenant, name=env))
            effect = "; the environment %s" % ("exists" if code == OK else "does not exist (%s)"
                                                % code.name)
        elif method == "CreateTenant":
            code, _, _, _ = cl.call(cl.admin_base, "GetTenant", pb.GetTenantRequest(id=tenant))
            effect = "; the tenant %s" % ("exists" if code == OK else "does not exist (%s)"
                                           % code.name)
        info("audit: seq %d %s %s/%s (request %s) started %s, no outcome and no restart "
             "after it%s" % (seq, method, tenant, env, rid,
                             "during the PostgreSQL outage" if during else
                             "%.1f s %s the outage" % (abs(t - o[0]) if o else 0,
                                                       "before" if o and t < o[0] else "after"),
                             effect))
        if not during:
            outside.append(seq)
    report(r.ok and not outside,
           "every state change started has its outcome, or a restart or the PostgreSQL outage "
           "cut it short (%d cut short by a restart, %d by the outage)"
           % (r.interrupted, len(r.open) - len(outside)),
           "no outcome and nothing to cut it short: seq %s" % outside[:10])
    if not a.kbctl:
        return
    env = dict(os.environ, KB_CERT=cl.auditor_base + ".crt", KB_KEY=cl.auditor_base + ".key",
               KB_CA=cl.ca, KB_ADDR=",".join(cl.addrs))
    exp = os.path.join(a.out, "audit-export.jsonl")
    for what, cmd in (("export", [a.kbctl, "--timeout", "60", "audit", "export", "--out", exp]),
                      ("verify", [a.kbctl, "audit", "verify", exp, "--key-fingerprint",
                                  k.fingerprint])):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        report(p.returncode == 0, "kbctl audit %s exits 0%s" % (
            what, (": " + p.stdout.strip().splitlines()[0][:160]) if what == "verify" and
            p.stdout.strip() else ""),
            "exit %d: %s %s" % (p.returncode, p.stdout[-300:], p.stderr[-300:]))
        if p.returncode != 0:
            return


def figures(cl, kills):
    st = cl.stats
    with st.mu:
        final = dict(st.final)
        attempts = dict(st.attempts)
        calls, ok, fo = st.calls, st.ok, st.failovers
    info("calls: %d (%d OK, %d answered by another broker than the first tried); final "
         "answers by code: %s" % (calls, ok, fo, ", ".join("%s %d" % kv for kv in sorted(final.items()))))
    info("attempts by code (each address tried): %s"
         % ", ".join("%s %d" % kv for kv in sorted(attempts.items())))
    rows = kill_gaps(cl, kills)
    for n, (tk, k, g_any, g_k, longest) in enumerate(rows, 1):
        info("kill %d (broker %d): next successful call %s, next successful call of a client "
             "that tried broker %d first %s; its slowest failed-over call %.0f ms"
             % (n, k + 1, "%.1f ms" % (g_any * 1e3) if g_any is not None else "none",
                k + 1, "%.1f ms" % (g_k * 1e3) if g_k is not None else "none", longest * 1e3))
    gk = [r[3] for r in rows if r[3] is not None]
    ga = [r[2] for r in rows if r[2] is not None]
    if gk:
        info("from a kill to the next successful call of a client of the killed broker: "
             "median %.1f ms, max %.1f ms (any client: median %.1f ms, max %.1f ms)"
             % (statistics.median(gk) * 1e3, max(gk) * 1e3, statistics.median(ga) * 1e3,
                max(ga) * 1e3))
    report(len(gk) == len(rows) and all(g < 2.0 for g in gk),
           "after every kill a client of the killed broker succeeds through another within 2 s",
           "gaps: %s" % ["%.2f" % g if g is not None else None for g in (r[3] for r in rows)])


def run(a):
    t_begin = time.time()
    cl = Cluster(a)
    journal = Journal(os.path.join(a.out, "journal.jsonl"))
    w = World(a, cl, journal)
    load = None
    try:
        if not setup(cl, w):
            return
        load = Load(w)
        load.start(a.readers, a.creators)
        kills = rounds(cl, w, load, a, t_begin)
        with cl.stats.mu:
            bad = list(cl.stats.bad)
        report(not bad, "no call failed for good during the rounds (every one answered through "
               "a broker within %g s)" % a.failover_bound,
               "%d: %s" % (len(bad), bad[:5]))
        if a.pg_outage:
            pg_outage(cl, w, load, a)
            cl.bound = a.failover_bound  # (also when it ended early)
        stuck = load.join()
        report(not stuck, "the load's threads end", "%d still running" % len(stuck))
        info("load: %s" % ", ".join("%s %d" % kv for kv in load.counts.items()))
        st = cl.stats
        report(not st.wrong, "never another DEK for a (tenant, environment, version) than the "
               "first read, on any broker", "%d: %s" % (len(st.wrong), st.wrong[:5]))
        report(not st.stale, "after an acknowledged RotateDataKey, every broker serves that "
               "version or a newer one", "%d: %s" % (len(st.stale), st.stale[:5]))
        with st.mu:
            bad = st.bad[len(bad):]
        report(not bad, "no call failed for good outside the PostgreSQL outage",
               "%d: %s" % (len(bad), bad[:5]))
        figures(cl, kills)
        dead = [i + 1 for i, b in enumerate(cl.brokers) if not b.alive()]
        report(not dead, "all three brokers running after the load", "ended: %s" % dead)
        verify_journal(cl, w, a)
        audit_checks(cl, a)
    finally:
        if load is not None:
            load.stop.set()
        journal.close()
        cl.close()
        for i, b in enumerate(cl.brokers, 1):
            if b.alive():
                rc = b.stop()
                report(rc == 0, "broker %d exits 0 on SIGTERM" % i, "exit status %s" % rc)
        info("the driver took %.1f s" % (time.time() - t_begin))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--conf", required=True, help="comma-separated, one per broker")
    ap.add_argument("--addr", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--src", required=True, help="the repository (tests/pg/kbt-pg.sh)")
    ap.add_argument("--pg-dir", required=True)
    ap.add_argument("--pg-uri", required=True)
    ap.add_argument("--kbctl")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--creators", type=int, default=2)
    ap.add_argument("--min-up", type=float, default=1.0, help="seconds of load before a kill")
    ap.add_argument("--max-up", type=float, default=2.5)
    ap.add_argument("--min-down", type=float, default=0.4, help="seconds before the restart")
    ap.add_argument("--max-down", type=float, default=1.5)
    ap.add_argument("--failover-bound", type=float, default=8.0)
    ap.add_argument("--no-pg-outage", dest="pg_outage", action="store_false")
    ap.add_argument("--budget", type=int, default=200, help="seconds for the whole driver")
    ap.add_argument("--reserve", type=int, default=45, help="seconds kept for after the rounds")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    info("random seed %d (--seed / KBT_CHAOS_SEED for the same kills; thread timing varies)" % seed)
    os.makedirs(os.path.join(a.out, "certs"), exist_ok=True)

    def on_term(signum, frame):
        raise SystemExit("test-cluster-chaos.py: signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    try:
        run(a)
    except SystemExit:
        raise
    except Exception as ex:  # a driver bug: a failure, with its trace
        import traceback
        report(False, "the driver ran to its end", traceback.format_exc()[-1500:])
        raise SystemExit(1) from ex
    return 1 if kbt_grpc.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
