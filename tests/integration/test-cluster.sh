#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-cluster.sh: several brokers on one PostgreSQL database and one
# SoftHSMv2 token (issue 13), raced against each other and killed under a
# job, with keybrokerd-testclock (every broker reads the same
# test_clock_file, so they share one moved time). PostgreSQL only: it sets
# KBT_DB=postgres itself.
#
# Brokers A and B (then C) run the same configuration on other loopback
# ports (lib.sh kbt_conf_copy). The calls come from Python grpcio (the
# driver below, on kbt_grpc.py), each side of a race on a channel of its
# own that is connected beforehand, both released by one barrier:
# 1. activation against activation, 20 tenants with two available keys:
#    ActivateKey of key 1 through A and of key 2 through B at once; exactly
#    one succeeds, the other is FAILED_PRECONDITION naming its rule (the
#    24-hour cooldown, or the activation running); afterwards, read through
#    the loser's broker, exactly one key is active, the winner's, and the
#    loser's is available.
# 2. lock against activation, 20 tenants with an active key (activated 72 h
#    ago on the test clock), a customer-managed environment and a second,
#    available key: LockTenant with the active key's .pfx through A and
#    ActivateKey of the other key through B at once; exactly one succeeds,
#    the other is refused naming its rule (tenant-locked; or activation
#    running / 72-hour cooldown), and the end state, read through the other
#    broker, is one of the two: locked (tenant, environment and key locked,
#    the other key deleted, GetDataKey refused) or activated (the new key
#    active, the old available, the environment under it with its DEK).
# 3. 20 times: a lock through A, then the very next GetDataKey through B is
#    FAILED_PRECONDITION environment locked; after the hour (test clock)
#    the tenant is unlocked (through A and B in turn: the key goes back
#    into the token through either broker, the other must find it) and
#    stays refused on B until its environments are unlocked, then both
#    environments serve the DEK they had, through B and through A.
# 4. Three brokers, an activation over 10,000 customer-managed environments
#    (made through the API, CreateEnvironment then ApplyKey on 24 threads
#    through A and B: kb-seed writes SQLite rows, not PostgreSQL ones):
#    every DEK is read (through all three); 16 readers read a sample of
#    them (1,024 environments, 64 certificates) without pause; ActivateKey
#    through A; the broker whose log says it runs the job ("job J:
#    re-sealing") is SIGKILLed part way (20% to 70% done; the readers leave
#    it first); a survivor takes the job over (the cluster-wide job lease;
#    non-holders poll every second) within 10 s, resumes it from its stored
#    progress and finishes it within 60 s. 0 wrong DEKs and 0 reader errors;
#    afterwards every DEK is unchanged and wrapped by the new key, 'kbctl
#    audit verify --online' passes, and the log holds a GetDataKey event
#    for every answer the test received (none lost with the killed broker)
#    and the job's start twice (the first holder, the survivor) and its end
#    once. The survivors then stop cleanly on SIGTERM.
# Figures (take-over time, creation and re-seal rates, race timing, reader
# answers and errors) are printed as "info:" lines, not asserted beyond the
# bounds above. A loser of a race refused by the token rather than by a
# rule (UNAVAILABLE, CKR_GENERAL_ERROR: SoftHSMv2's file store written by
# several brokers at once, seen once in about 500 rounds) is shown as an
# xfail, with the end state still checked; KBT_STRICT=1 counts it.
# The driver's channels keep gRPC's default connect timeout (see kbt_grpc's
# FAST_RECONNECT: grpc.min_reconnect_backoff_ms is also that timeout).
# KBT_CLUSTER_ROUNDS (default 20) and KBT_CLUSTER_ENVS (default 10000)
# change the sizes, KBT_CLUSTER_PARTS (default "1 2 3 4") which parts run.
# Run: bash tests/integration/test-cluster.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

if [[ $KBT_DB != postgres ]]; then
	echo "info: test-cluster runs on PostgreSQL only: KBT_DB=postgres (was $KBT_DB)"
	KBT_DB=postgres
fi
ROUNDS=${KBT_CLUSTER_ROUNDS:-20}
N=${KBT_CLUSTER_ENVS:-10000}
PARTS=${KBT_CLUSTER_PARTS:-1 2 3 4}

# rewrap_threads=1: one re-sealing thread per broker, as a 2-core machine
# shared by three brokers, PostgreSQL and the readers can give it. The
# test moves the clock about 65 days in steps of hours and days: a jump
# limit of a year keeps each step from being a clock jump (audited, the
# sweeper paused), which is test-clock.sh's subject, not this one's.
kbt_setup_testclock workers=8 rewrap_threads=1 log_level=info clock_jump_limit_s=31536000
w=$KBT_DIR/work
mkdir -m 700 "$w"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto KBT_PKI KBT_CLOCK KBT_LIBDIR

cat >"$w/cluster.py" <<'PY'
#!/usr/bin/python3
"""test-cluster.sh's grpcio side: brokers on one PostgreSQL database and one
token, raced against each other and killed under a job.

  race-activate --rounds N   ActivateKey of key 1 through A and of key 2
                             through B at one barrier, N tenants
  race-lock --rounds N       LockTenant through A against ActivateKey of the
                             other key through B, N tenants
  lock-read --rounds N       lock through A, then GetDataKey through B at
                             once; unlock (through A and B in turn)
  big --envs N --readers R   N customer-managed environments, an activation
                             re-sealing them, SIGKILL of the broker running
                             its job part way, R readers on the survivors

Brokers: $KBT_BROKERS, "NAME=ADDR=PID=LOG,..." (A first). Admin calls with
KB_CERT/KB_KEY; service certificates minted from $KBT_PKI. Prints "ok",
"FAIL", "xfail" and "info:" lines (test-cluster.sh's report); exit 1 on a
failure.
"""
import argparse
import os
import random
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.environ["KBT_LIBDIR"])
import grpc  # noqa: E402
import kbt_grpc  # noqa: E402

pb, pb_grpc = kbt_grpc.stubs()
report = kbt_grpc.report
OK = grpc.StatusCode.OK
FP = grpc.StatusCode.FAILED_PRECONDITION
S = 1000000
HOUR = 3600 * S
PASSWORD = "cluster test password, long enough"
RULE_ACTIVATE = r"24-hour activation cooldown|already activating"
RULE_LOCK_LOST = r"activating \(or retiring\) a key: a tenant cannot be locked|72-hour lock cooldown"
RULE_ACTIVATE_LOST = r"tenant-locked rule|locked-environments rule"
# SoftHSMv2's file object store under several processes: an operation of
# one broker may fail while another writes the same token directory
# (CKR_GENERAL_ERROR; C_Login and C_OpenSession fail the same way when
# processes start on a token others write). The call fails UNAVAILABLE and
# changes nothing; the end state is still checked. KBT_STRICT=1 counts it.
KNOWN = {"softhsm-shared": "SoftHSMv2's file store shared by several brokers: a token "
                           "operation failed while another broker wrote the token"}
TOKEN_GLITCH = r"C_\w+(?: \([^)]*\))?: CKR_(?:GENERAL_ERROR|FUNCTION_FAILED|DEVICE_ERROR)"


def token_glitch(res):
    return res[2] == grpc.StatusCode.UNAVAILABLE and re.search(TOKEN_GLITCH, str(res[3]))


def log_lines(nodes, needle, n=6):
    """The last n lines of each broker's log naming needle, for details."""
    out = []
    for nd in nodes:
        try:
            with open(nd.log, errors="replace") as f:
                hits = [l.rstrip() for l in f if needle in l]
        except FileNotFoundError:
            hits = []
        out += ["%s: %s" % (nd.name, l[:300]) for l in hits[-n:]]
    return " | ".join(out)


class Node:
    def __init__(self, spec):
        self.name, self.addr, pid, self.log = spec.split("=", 3)
        self.pid = int(pid)
        self.ch = kbt_grpc.channel(self.addr)
        self.stub = pb_grpc.KeyBrokerStub(self.ch)


def nodes():
    out = [Node(s) for s in os.environ["KBT_BROKERS"].split(",")]
    for n in out:
        grpc.channel_ready_future(n.ch).result(timeout=30)
    return out


def call(fn, req, timeout=30):
    return kbt_grpc.status_of(lambda: fn(req, timeout=timeout))


def must(what, fn, req):
    """A setup call that must work (retried while the broker is busy)."""
    code, r = kbt_grpc.call_retry(fn, req, tries=20)
    if code != OK:
        raise SystemExit("FAIL %s: %s %s" % (what, code.name, r))
    return r


# ---- the shared test clock (lib.sh's kbt_clock_set and kbt_now_us) ----

def clock_offset():
    try:
        with open(os.environ["KBT_CLOCK"]) as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def clock_to(us):
    """The brokers' clock reads at least `us` from now on (forward only)."""
    off = -(-(us - int(time.time() * S)) // S)  # ceil
    if off <= clock_offset():
        return
    path = os.environ["KBT_CLOCK"]
    with open(path + ".tmp", "w") as f:
        f.write("%d\n" % off)
    os.replace(path + ".tmp", path)


# ---- helpers ----

def wait_job(stub, job_id, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        code, j = call(stub.GetJob, pb.GetJobRequest(id=job_id), timeout=10)
        if code == OK and j.state != pb.JOB_STATE_RUNNING:
            return j
        time.sleep(0.02)
    return None


def gen_keys(brokers, tenants, per_tenant):
    """per_tenant generated keys for each tenant (through the brokers in
    turn, 4 at a time): {tenant: [(key id, pfx bytes), ...]}."""
    jobs = [(t, i) for t in tenants for i in range(per_tenant)]

    def one(x):
        t, i = x
        n = brokers[hash(x) % len(brokers)]
        code, r = kbt_grpc.call_retry(n.stub.GenerateKey,
                                      pb.GenerateKeyRequest(tenant_id=t, password=PASSWORD), tries=20)
        return (r.key.id, r.pfx) if code == OK else "%s through %s: %s %s" % (t, n.name, code.name, r)
    res = kbt_grpc.parallel(one, jobs, 4)
    bad = [r for r in res.values() if isinstance(r, str)]
    if bad:
        raise SystemExit("FAIL GenerateKey: %d failed, e.g. %s" % (len(bad), bad[0]))
    return {t: [res[(t, i)] for i in range(per_tenant)] for t in tenants}


def svc_stub(node, base):
    ch = kbt_grpc.channel(node.addr, cert=base + ".crt", key=base + ".key")
    grpc.channel_ready_future(ch).result(timeout=30)
    return pb_grpc.KeyBrokerStub(ch)


def svc_cert(out, tenant, envs, days=400):
    return kbt_grpc.mint_cert(os.environ["KBT_PKI"], os.path.join(out, "svc-" + tenant),
                              [("OU", "service"), ("CN", "kbt-cluster-" + tenant)],
                              ["kb://env/%s/%s" % (tenant, e) for e in envs], days)


def race(fa, fb):
    """fa() and fb() on two threads released by one barrier: [(start,
    end, code, response or details)] for each (monotonic seconds)."""
    bar = threading.Barrier(2)
    res = [None, None]

    def run(i, f):
        bar.wait()
        t0 = time.monotonic()
        code, r = kbt_grpc.status_of(f)
        res[i] = (t0, time.monotonic(), code, r)
    th = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate((fa, fb))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return res


def agg(desc, bad, n):
    """One check over n rounds: bad lists the rounds that failed it."""
    report(not bad, "%s (%d rounds)" % (desc, n),
           "%d round(s) failed: %s" % (len(bad), "; ".join(bad[:4])))


def glitch_report(glitches, n):
    """The losers refused by the token rather than by a rule (KNOWN)."""
    kbt_grpc.report_known(KNOWN, "softhsm-shared", not glitches,
                          "... no loser was refused by the token instead of a rule (%d rounds)" % n,
                          "%d: %s" % (len(glitches), "; ".join(glitches[:3])))


def key_states(stub, tenant):
    code, r = call(stub.ListKeys, pb.ListKeysRequest(tenant_id=tenant))
    if code != OK:
        return {"error": "%s %s" % (code.name, r)}
    return {k.id: pb.KeyState.Name(k.state).replace("KEY_STATE_", "").lower() for k in r.keys}


def info(msg):
    """A figure: "info: MSG" (test-cluster.sh prints it as it is)."""
    print("info: " + msg, flush=True)


def race_stats(rounds):
    """How close together the two calls of each round were."""
    skew = [abs(r[0][0] - r[1][0]) * 1000 for r in rounds]
    overlap = sum(1 for r in rounds if r[0][0] < r[1][1] and r[1][0] < r[0][1])
    info("the two calls of each round left within %.2f ms of each other (median %.2f ms); "
         "in %d of %d rounds they were in flight together"
         % (max(skew), sorted(skew)[len(skew) // 2], overlap, len(rounds)))


# ---- 1. activation against activation ----

def cmd_race_activate(a):
    ns = nodes()
    A, B = ns[0], ns[1]
    tenants = ["ra-%02d" % i for i in range(a.rounds)]
    for t in tenants:
        must("CreateTenant " + t, A.stub.CreateTenant, pb.CreateTenantRequest(id=t))
    t0 = time.time()
    keys = gen_keys([A, B], tenants, 2)
    info("%d keys generated in %.1f s" % (2 * len(tenants), time.time() - t0))
    bad_one, bad_rule, bad_keys, bad_tenant, glitches = [], [], [], [], []
    wins = {A.name: 0, B.name: 0}
    rules = {}
    rounds = []
    for t in tenants:
        (k1, _), (k2, _) = keys[t]
        # Both channels are warm: the barrier releases two calls, not two
        # TLS handshakes.
        must("GetTenant", A.stub.GetTenant, pb.GetTenantRequest(id=t))
        must("GetTenant", B.stub.GetTenant, pb.GetTenantRequest(id=t))
        res = race(lambda: A.stub.ActivateKey(pb.ActivateKeyRequest(tenant_id=t, key_id=k1), timeout=30),
                   lambda: B.stub.ActivateKey(pb.ActivateKeyRequest(tenant_id=t, key_id=k2), timeout=30))
        rounds.append(res)
        won = [i for i in (0, 1) if res[i][2] == OK]
        if len(won) != 1:
            bad_one.append("%s: %s; logs: %s" % (t, [(r[2].name, str(r[3])[:200]) for r in res],
                                                 log_lines(ns, t)))
            continue
        w = won[0]
        lo = 1 - w
        wk, lk = (k1, k2) if w == 0 else (k2, k1)
        wins[ns[w].name] += 1
        if token_glitch(res[lo]):
            glitches.append("%s: %s" % (t, res[lo][3]))
        elif res[lo][2] != FP or not re.search(RULE_ACTIVATE, res[lo][3]):
            bad_rule.append("%s: %s %s; logs: %s" % (t, res[lo][2].name, res[lo][3], log_lines(ns, t)))
        else:
            m = re.search(RULE_ACTIVATE, res[lo][3]).group(0)
            rules[m] = rules.get(m, 0) + 1
        # Read back through the loser's broker, once the job is done.
        job = wait_job(ns[lo].stub, res[w][3].id)
        st = key_states(ns[lo].stub, t)
        active = [k for k, s in st.items() if s == "active"]
        if job is None or job.state != pb.JOB_STATE_DONE or active != [wk] \
                or st.get(lk) != "available":
            bad_keys.append("%s: job %s, keys %s (winner %s)" % (
                t, pb.JobState.Name(job.state) if job else "still running", st, wk))
        code, tn = call(ns[lo].stub.GetTenant, pb.GetTenantRequest(id=t))
        if code != OK or tn.active_key_id != wk or tn.state != pb.TENANT_STATE_ACTIVE:
            bad_tenant.append("%s: %s" % (t, tn if code == OK else code.name))
    n = len(tenants)
    agg("activation against activation: exactly one of the two succeeds", bad_one, n)
    agg("... the other is FAILED_PRECONDITION naming its rule (/%s/)" % RULE_ACTIVATE, bad_rule, n)
    glitch_report(glitches, n)
    agg("... afterwards exactly one active key, the winner's, and the loser's key is available "
        "(read through the loser's broker)", bad_keys, n)
    agg("... the tenant names the winner's key as its active key", bad_tenant, n)
    info("winners: %s; the losers were refused by %s" % (wins, rules))
    race_stats(rounds)
    return 1 if kbt_grpc.failures() else 0


# ---- 2. lock against activation ----

def cmd_race_lock(a):
    ns = nodes()
    A, B = ns[0], ns[1]
    tenants = ["rl-%02d" % i for i in range(a.rounds)]
    for t in tenants:
        must("CreateTenant " + t, A.stub.CreateTenant, pb.CreateTenantRequest(id=t))
    t0 = time.time()
    k1s = gen_keys([A, B], tenants, 1)
    for t in tenants:
        k1 = k1s[t][0][0]
        j = must("ActivateKey", A.stub.ActivateKey, pb.ActivateKeyRequest(tenant_id=t, key_id=k1))
        if wait_job(B.stub, j.id) is None:
            raise SystemExit("FAIL activation of %s's first key does not end" % t)
        must("CreateEnvironment", B.stub.CreateEnvironment,
             pb.CreateEnvironmentRequest(tenant_id=t, name="prod"))
        must("ApplyKey", A.stub.ApplyKey, pb.EnvironmentRef(tenant_id=t, name="prod"))
    k2s = gen_keys([A, B], tenants, 1)
    svc = {}
    dek0 = {}
    for t in tenants:
        base = svc_cert(a.out, t, ["prod"])
        svc[t] = (svc_stub(A, base), svc_stub(B, base))
        r = must("GetDataKey %s/prod" % t, svc[t][1].GetDataKey,
                 pb.GetDataKeyRequest(tenant_id=t, environment="prod"))
        dek0[t] = r.dek
    info("%d tenants with an active key, a customer-managed environment and a second key "
         "made in %.1f s" % (len(tenants), time.time() - t0))
    # The 72 hours since the last key change (the second keys), for all.
    last = max(must("GetTenant", A.stub.GetTenant, pb.GetTenantRequest(id=t)).last_key_change_time_us
               for t in tenants)
    clock_to(last + 72 * HOUR + 5 * S)
    bad_one, bad_rule, bad_state, glitches = [], [], [], []
    wins = {"lock": 0, "activation": 0}
    rules = {}
    rounds = []
    for t in tenants:
        k1, pfx1 = k1s[t][0]
        k2 = k2s[t][0][0]
        must("GetTenant", A.stub.GetTenant, pb.GetTenantRequest(id=t))
        must("GetTenant", B.stub.GetTenant, pb.GetTenantRequest(id=t))
        lreq = pb.LockTenantRequest(tenant_id=t, format=pb.KEY_FILE_FORMAT_PFX, file=pfx1,
                                    password=PASSWORD)
        areq = pb.ActivateKeyRequest(tenant_id=t, key_id=k2)
        res = race(lambda: A.stub.LockTenant(lreq, timeout=30),
                   lambda: B.stub.ActivateKey(areq, timeout=30))
        rounds.append(res)
        won = [i for i in (0, 1) if res[i][2] == OK]
        if len(won) != 1:
            bad_one.append("%s: %s; logs: %s" % (t, [(r[2].name, str(r[3])[:200]) for r in res],
                                                 log_lines(ns, t)))
            continue
        w = won[0]
        lo = 1 - w
        rule = RULE_ACTIVATE_LOST if w == 0 else RULE_LOCK_LOST
        wins["lock" if w == 0 else "activation"] += 1
        if token_glitch(res[lo]):
            glitches.append("%s: %s won, the other: %s" % (t, "lock" if w == 0 else "activation", res[lo][3]))
        elif res[lo][2] != FP or not re.search(rule, res[lo][3]):
            bad_rule.append("%s: %s won, the other: %s %s; logs: %s" % (
                t, "lock" if w == 0 else "activation", res[lo][2].name, res[lo][3], log_lines(ns, t)))
        else:
            m = re.search(rule, res[lo][3]).group(0)
            rules[m] = rules.get(m, 0) + 1
        # The end state, read through the other broker than the winner's.
        o = ns[lo]
        why = []
        if w == 0:
            tn = must("GetTenant", o.stub.GetTenant, pb.GetTenantRequest(id=t))
            env = must("GetEnvironment", o.stub.GetEnvironment,
                       pb.GetEnvironmentRequest(tenant_id=t, name="prod"))
            st = key_states(o.stub, t)
            code, r = call(svc[t][lo].GetDataKey, pb.GetDataKeyRequest(tenant_id=t, environment="prod"))
            if tn.state != pb.TENANT_STATE_LOCKED or tn.lock_key_id != k1 \
                    or tn.locked_environment_count != 1:
                why.append("tenant %s" % str(tn).replace("\n", " "))
            if env.state != pb.ENVIRONMENT_STATE_LOCKED:
                why.append("prod is %s" % pb.EnvironmentState.Name(env.state))
            if st.get(k1) != "locked" or st.get(k2) != "deleted":
                why.append("keys %s" % st)
            if code != FP or "environment locked" not in r:
                why.append("GetDataKey: %s %s" % (code.name, r if code != OK else "a DEK"))
        else:
            job = wait_job(o.stub, res[w][3].id)
            tn = must("GetTenant", o.stub.GetTenant, pb.GetTenantRequest(id=t))
            env = must("GetEnvironment", o.stub.GetEnvironment,
                       pb.GetEnvironmentRequest(tenant_id=t, name="prod"))
            st = key_states(o.stub, t)
            code, r = call(svc[t][lo].GetDataKey, pb.GetDataKeyRequest(tenant_id=t, environment="prod"))
            if job is None or job.state != pb.JOB_STATE_DONE:
                why.append("job %s" % (pb.JobState.Name(job.state) if job else "still running"))
            if tn.state != pb.TENANT_STATE_ACTIVE or tn.active_key_id != k2 or tn.lock_time_us:
                why.append("tenant %s" % str(tn).replace("\n", " "))
            if env.state != pb.ENVIRONMENT_STATE_ENABLED or env.mode != pb.ENCRYPTION_MODE_CUSTOMER \
                    or env.key_id != k2:
                why.append("prod %s" % str(env).replace("\n", " "))
            if st.get(k2) != "active" or st.get(k1) != "available":
                why.append("keys %s" % st)
            if code != OK or r.dek != dek0[t]:
                why.append("GetDataKey: %s" % (code.name if code != OK else "another DEK"))
        if why:
            bad_state.append("%s (%s won): %s; logs: %s" % (
                t, "lock" if w == 0 else "activation", "; ".join(why), log_lines(ns, t)))
    n = len(tenants)
    agg("lock against activation: exactly one of the two succeeds", bad_one, n)
    agg("... the other is FAILED_PRECONDITION naming its rule", bad_rule, n)
    glitch_report(glitches, n)
    agg("... the end state is consistent (locked: tenant, prod and its key locked, the other "
        "key deleted, GetDataKey refused; activated: the new key active, the old available, "
        "prod under it with its DEK, not locked), read through the other broker", bad_state, n)
    info("winners: %s; the losers were refused by %s" % (wins, rules))
    race_stats(rounds)
    return 1 if kbt_grpc.failures() else 0


# ---- 3. a lock through A is seen by B's very next GetDataKey ----

def cmd_lock_read(a):
    ns = nodes()
    A, B = ns[0], ns[1]
    t = "lr"
    must("CreateTenant", A.stub.CreateTenant, pb.CreateTenantRequest(id=t))
    (k1, pfx1), = gen_keys([A], [t], 1)[t]
    j = must("ActivateKey", A.stub.ActivateKey, pb.ActivateKeyRequest(tenant_id=t, key_id=k1))
    wait_job(B.stub, j.id)
    for e in ("prod", "dev"):
        must("CreateEnvironment", B.stub.CreateEnvironment, pb.CreateEnvironmentRequest(tenant_id=t, name=e))
        must("ApplyKey", A.stub.ApplyKey, pb.EnvironmentRef(tenant_id=t, name=e))
    base = svc_cert(a.out, t, ["prod", "dev"])
    sA, sB = svc_stub(A, base), svc_stub(B, base)
    req = {e: pb.GetDataKeyRequest(tenant_id=t, environment=e) for e in ("prod", "dev")}
    dek0 = {e: must("GetDataKey", sB.GetDataKey, req[e]).dek for e in req}
    report(dek0["prod"] == must("GetDataKey", sA.GetDataKey, req["prod"]).dek,
           "lr/prod: A and B serve the same DEK")
    bad = {k: [] for k in ("lock", "refused", "unlock", "still", "envunlock", "same")}
    gaps = []
    for i in range(a.rounds):
        tn = must("GetTenant", A.stub.GetTenant, pb.GetTenantRequest(id=t))
        clock_to(tn.last_key_change_time_us + 72 * HOUR + 5 * S)
        lreq = pb.LockTenantRequest(tenant_id=t, format=pb.KEY_FILE_FORMAT_PFX, file=pfx1,
                                    password=PASSWORD)
        code, r = call(A.stub.LockTenant, lreq)
        t_ans = time.monotonic()
        # The very next call, through B.
        c2, r2 = call(sB.GetDataKey, req["prod"])
        gaps.append((time.monotonic() - t_ans) * 1000)
        if code != OK or r.state != pb.TENANT_STATE_LOCKED:
            bad["lock"].append("round %d: %s %s" % (i, code.name, r if code != OK else r.state))
            break
        if c2 != FP or "environment locked" not in r2:
            bad["refused"].append("round %d: %s %s" % (i, c2.name, r2 if c2 != OK else "a DEK"))
        # Unlock after the hour, through A and B in turn (the key goes back
        # into the token through either; the other must find it there).
        clock_to(r.lock_time_us + HOUR + 5 * S)
        un, un2 = (B, A) if i % 2 else (A, B)
        ureq = pb.UnlockTenantRequest(tenant_id=t, format=pb.KEY_FILE_FORMAT_PFX, file=pfx1,
                                      password=PASSWORD)
        code, r = call(un.stub.UnlockTenant, ureq)
        if code != OK or r.state != pb.TENANT_STATE_ACTIVE:
            bad["unlock"].append("round %d (through %s): %s %s" % (i, un.name, code.name, r))
            break
        c2, r2 = call(sB.GetDataKey, req["prod"])
        if c2 != FP or "environment locked" not in r2:
            bad["still"].append("round %d: %s %s" % (i, c2.name, r2 if c2 != OK else "a DEK"))
        for e in ("prod", "dev"):
            code, r = call(un2.stub.UnlockEnvironment, pb.EnvironmentRef(tenant_id=t, name=e))
            if code != OK:
                bad["envunlock"].append("round %d %s (through %s): %s %s" % (i, e, un2.name, code.name, r))
        for e in ("prod", "dev"):
            for nm, s in ((B.name, sB), (A.name, sA)):
                code, r = call(s.GetDataKey, req[e])
                if code != OK or r.dek != dek0[e]:
                    bad["same"].append("round %d %s through %s: %s" % (
                        i, e, nm, code.name + " " + r if code != OK else "another DEK"))
    n = a.rounds
    agg("LockTenant through %s succeeds" % A.name, bad["lock"], n)
    agg("... and the very next GetDataKey through %s is FAILED_PRECONDITION environment locked"
        % B.name, bad["refused"], n)
    agg("UnlockTenant after the hour (through %s and %s in turn) succeeds" % (A.name, B.name),
        bad["unlock"], n)
    agg("... the environment stays locked on %s until it is unlocked itself" % B.name, bad["still"], n)
    agg("UnlockEnvironment of prod and dev (through the other broker) succeeds", bad["envunlock"], n)
    agg("... then prod and dev serve the DEKs they had before, through %s and %s" % (B.name, A.name),
        bad["same"], n)
    gaps.sort()
    info("from LockTenant's answer (A) to B's refusal: median %.1f ms, max %.1f ms"
         % (gaps[len(gaps) // 2], gaps[-1]))
    return 1 if kbt_grpc.failures() else 0


# ---- 4. an activation over many environments, its broker killed ----

class Fleet:
    """Service channels for many environments of one tenant, to each
    broker: certificate base -> {broker name: stub}."""

    def __init__(self, tenant, index, brokers):
        self.tenant = tenant
        self.index = index
        self.stubs = {}
        self.channels = {}
        for base in sorted(set(index.values())):
            self.stubs[base] = {}
            for n in brokers:
                ch = kbt_grpc.channel(n.addr, cert=base + ".crt", key=base + ".key")
                self.channels[(base, n.name)] = ch
                self.stubs[base][n.name] = pb_grpc.KeyBrokerStub(ch)

    def get(self, env, broker, timeout=10, wait_for_ready=None):
        req = pb.GetDataKeyRequest(tenant_id=self.tenant, environment=env)
        stub = self.stubs[self.index[env]][broker]
        return kbt_grpc.status_of(lambda: stub.GetDataKey(req, timeout=timeout,
                                                          wait_for_ready=wait_for_ready))

    def connect(self, bases, brokers, timeout=30):
        """Connect the channels of these certificates to these brokers now
        (the TLS handshakes before the readers start); those that did not."""
        def one(x):
            try:
                grpc.channel_ready_future(self.channels[x]).result(timeout=timeout)
                return True
            except grpc.FutureTimeoutError:
                return False
        res = kbt_grpc.parallel(one, [(b, n) for b in bases for n in brokers], 16)
        return sorted(x for x, ok in res.items() if not ok)

    def read_all(self, envs, brokers, width=16):
        """Every env's DEK once, spread over brokers: {env: (code, resp)}."""
        def one(e):
            # All of a certificate's environments through one broker: one
            # connection each, waited for (the broker's answer counts).
            b = brokers[hash(self.index[e]) % len(brokers)]
            for i in range(20):
                code, r = self.get(e, b, timeout=30, wait_for_ready=True)
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                time.sleep(0.05 * (i + 1))
            return code, r
        return kbt_grpc.parallel(one, envs, width)


def log_find(path, start, pattern):
    """The first line of path after byte `start` matching pattern, or None."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            for line in f:
                s = line.decode(errors="replace")
                if re.search(pattern, s):
                    return s
    except FileNotFoundError:
        pass
    return None


def cmd_big(a):
    ns = nodes()
    by = {n.name: n for n in ns}
    names = [n.name for n in ns]
    A = ns[0]
    t = a.tenant
    envs = ["e%05d" % i for i in range(a.envs)]
    must("CreateTenant", A.stub.CreateTenant, pb.CreateTenantRequest(id=t))
    (k1, _), (k2, _) = gen_keys(ns, [t], 2)[t]
    j = must("ActivateKey", A.stub.ActivateKey, pb.ActivateKeyRequest(tenant_id=t, key_id=k1))
    wait_job(A.stub, j.id)

    # The environments: CreateEnvironment, then ApplyKey (customer-managed),
    # through the brokers in turn.
    # (through A and B: a third broker adds contention on the tenant's lock
    # and the audit chain more than it adds speed)
    makers = ns[:2]

    def make(fn, reqf):
        def one(i):
            n = makers[i % len(makers)]
            code, r = kbt_grpc.call_retry(getattr(n.stub, fn), reqf(envs[i]), tries=20)
            return code if code == OK else "%s %s" % (code.name, r)
        t0 = time.time()
        res = kbt_grpc.parallel(one, range(len(envs)), 24)
        dt = time.time() - t0
        bad = [(envs[i], r) for i, r in res.items() if r != OK]
        report(not bad, "%s of %d environments through %s (24 threads): %.1f s, %.0f/s"
               % (fn, len(envs), "+".join(n.name for n in makers), dt, len(envs) / dt),
               "%d failed, e.g. %s" % (len(bad), bad[:3]))
        return dt
    t_create = make("CreateEnvironment", lambda e: pb.CreateEnvironmentRequest(tenant_id=t, name=e))
    t_apply = make("ApplyKey", lambda e: pb.EnvironmentRef(tenant_id=t, name=e))
    info("creation: CreateEnvironment %.0f/s, ApplyKey %.0f/s (%d environments, %.1f s in all)"
         % (len(envs) / t_create, len(envs) / t_apply, len(envs), t_create + t_apply))
    tn = must("GetTenant", A.stub.GetTenant, pb.GetTenantRequest(id=t))
    report(tn.environment_count == len(envs), "the tenant has %d environments" % len(envs),
           "environment_count %d" % tn.environment_count)

    t0 = time.time()
    index = kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.out, "certs"), t, envs,
                                   days=400)
    fleet = Fleet(t, index, ns)
    info("%d service certificates (16 environments each) made in %.1f s"
         % (len(set(index.values())), time.time() - t0))
    t0 = time.time()
    res = fleet.read_all(envs, names)
    dt = time.time() - t0
    dek0 = {e: r.dek for e, (c, r) in res.items() if c == OK}
    bad = [(e, res[e][0].name, res[e][1]) for e in envs if e not in dek0]
    report(not bad, "every one of the %d DEKs read before the activation, through all three "
           "brokers (%.1f s, %.0f/s)" % (len(envs), dt, len(envs) / dt),
           "%d failed, e.g. %s" % (len(bad), bad[:3]))
    kids = {r.key_id for c, r in res.values() if c == OK}
    report(kids == {k1} and len(set(dek0.values())) == len(dek0),
           "they are all different and wrapped by the first key %s" % k1, "keys %s" % kids)
    total_ok = len(dek0)

    # The readers: 16 threads over a sample, on every broker until the
    # job's holder is known, then on the others only.
    # (the environments of 64 certificates: 192 connections, not 1875)
    bases = sorted(set(index.values()))
    picked = set(random.Random(13).sample(bases, min(len(bases), max(1, a.sample // 16))))
    sample = [e for e in envs if index[e] in picked]
    t0 = time.time()
    bad = fleet.connect(sorted(picked), names)
    report(not bad, "the readers' %d channels (%d certificates, to each broker) connected in %.1f s"
           % (len(picked) * len(names), len(picked), time.time() - t0),
           "%d did not connect within 30 s: %s" % (len(bad), bad[:3]))
    lock = threading.Lock()
    stop = threading.Event()
    state = {"allowed": list(names), "epoch": 0}
    seen = [0] * a.readers
    stats = {"ok": 0, "wrong": 0, "failed": 0, "errors": [], "by": {n: 0 for n in names},
             "keys": {}}

    def reader(r):
        rnd = random.Random(r)
        while not stop.is_set():
            with lock:
                b = rnd.choice(state["allowed"])
                seen[r] = state["epoch"]
            e = rnd.choice(sample)
            # wait_for_ready: a connection attempt that does not work out
            # at once (a client under load) waits instead of failing; the
            # broker's answers are what is counted.
            code, resp = fleet.get(e, b, wait_for_ready=True)
            with lock:
                if code == OK and resp.dek == dek0[e]:
                    stats["ok"] += 1
                    stats["by"][b] += 1
                    stats["keys"][resp.key_id] = stats["keys"].get(resp.key_id, 0) + 1
                elif code == OK:
                    stats["wrong"] += 1
                    stats["errors"].append("%s via %s: another DEK" % (e, b))
                else:
                    stats["failed"] += 1
                    stats["errors"].append("%s via %s: %s %s" % (e, b, code.name, resp))
    threads = [threading.Thread(target=reader, args=(r,)) for r in range(a.readers)]
    for th in threads:
        th.start()
    result = None
    try:
        result = activate_and_kill(a, ns, by, t, k2, stats, lock, state, seen)
    finally:
        time.sleep(0.5)  # reading a little after the end too
        stop.set()
        for th in threads:
            th.join()
    if result is None:
        return 1
    holder, job_id, target_key = result
    survivors = [n for n in names if n != holder]
    report(stats["ok"] > 0 and stats["wrong"] == 0,
           "%d readers: %d GetDataKey answers during the activation, the SIGKILL and the take-over, "
           "0 wrong DEKs (answers by broker: %s; wrapping keys seen: %s)"
           % (a.readers, stats["ok"], stats["by"], stats["keys"]),
           "%d wrong: %s" % (stats["wrong"], [x for x in stats["errors"] if "another" in x][:5]))
    info("readers: %d answers, %d wrong DEKs, %d errors%s" % (
        stats["ok"], stats["wrong"], stats["failed"],
        (": " + "; ".join(stats["errors"][:5])) if stats["errors"] else ""))
    report(stats["failed"] == 0, "no reader's call failed (%d errors)" % stats["failed"],
           "; ".join(stats["errors"][:5]))
    total_ok += stats["ok"]

    # Every environment afterwards, through the survivors.
    t0 = time.time()
    res = fleet.read_all(envs, survivors)
    bad = [e for e in envs if res[e][0] != OK or res[e][1].dek != dek0[e]]
    report(not bad, "after the activation every one of the %d DEKs is the one read before it "
           "(through %s, %.1f s)" % (len(envs), "+".join(survivors), time.time() - t0),
           "%d differ or fail, e.g. %s" % (len(bad), [(e, res[e][0].name) for e in bad[:5]]))
    wrong_key = [e for e in envs if res[e][0] == OK and res[e][1].key_id != target_key]
    report(not wrong_key, "every environment is wrapped by the activated key %s" % target_key,
           "%d are not, e.g. %s" % (len(wrong_key), [(e, res[e][1].key_id) for e in wrong_key[:3]]))
    total_ok += sum(1 for e in envs if res[e][0] == OK)
    st = key_states(by[survivors[0]].stub, t)
    report(st.get(target_key) == "active" and [k for k, s in st.items() if s == "active"] == [target_key],
           "the activated key is the one active key", "keys %s" % st)
    with open(os.path.join(a.out, "big.result"), "w") as f:
        f.write("holder=%s\njob=%s\nsurvivors=%s\ndatakey_ok=%d\n"
                % (holder, job_id, " ".join(survivors), total_ok))
    return 1 if kbt_grpc.failures() else 0


def rate(samples):
    """Data keys re-sealed per second over (time, done) samples: from the
    first progress seen to the last change."""
    moved = [x for x in samples if x[1] > samples[0][1]] if samples else []
    if len(moved) < 2 or moved[-1][0] <= moved[0][0]:
        return "too few progress samples for a rate"
    last = max(moved, key=lambda x: x[1])
    first = moved[0]
    return "%.0f data keys/s" % ((last[1] - first[1]) / (last[0] - first[0]))


def activate_and_kill(a, ns, by, t, k2, stats, lock, state, seen):
    """Activate k2 (through A), find the broker running the job, SIGKILL
    it part way, follow the job on the survivors to its end. Returns
    (holder, job id, key) or None."""
    names = [n.name for n in ns]
    A = ns[0]
    # Readers going first.
    t0 = time.time()
    while stats["ok"] < 4 * a.readers and time.time() - t0 < 30:
        time.sleep(0.01)
    with lock:
        before = stats["ok"]
    for attempt in range(1, 4):
        # The 24 hours since the last activation.
        tn = must("GetTenant", A.stub.GetTenant, pb.GetTenantRequest(id=t))
        clock_to(tn.last_activation_time_us + 24 * HOUR + 5 * S)
        offs = {n.name: os.path.getsize(n.log) for n in ns}
        t_start = time.time()
        j = must("ActivateKey", A.stub.ActivateKey, pb.ActivateKeyRequest(tenant_id=t, key_id=k2))
        report(j.state == pb.JOB_STATE_RUNNING and j.total == a.envs,
               "activation %d of %s through %s: job %s, %d data keys to re-seal"
               % (attempt, k2, A.name, j.id, j.total),
               "state %s total %d" % (pb.JobState.Name(j.state), j.total))
        # Its holder: the broker that logs "job J: re-sealing".
        holder = None
        pat = r"job %s: re-sealing" % j.id
        while holder is None and time.time() - t_start < 15:
            for n in ns:
                if log_find(n.log, offs[n.name], pat):
                    holder = n.name
                    break
            else:
                time.sleep(0.005)
        if holder is None:
            report(False, "a broker logs that it runs job %s within 15 s" % j.id)
            return None
        t_found = time.time() - t_start
        survivors = [n for n in names if n != holder]
        s = by[survivors[0]]
        # The readers leave the holder; every call in flight to it ends
        # before the kill.
        with lock:
            state["allowed"] = survivors
            state["epoch"] += 1
            ep = state["epoch"]
        t1 = time.time()
        while time.time() - t1 < 10:
            with lock:
                if all(x == ep for x in seen):
                    break
            time.sleep(0.001)
        progress = []
        samples = []  # (time, done): the re-seal rates
        killed = None
        while time.time() - t_start < 120:
            code, g = call(s.stub.GetJob, pb.GetJobRequest(id=j.id), timeout=10)
            if code != OK:
                report(False, "GetJob through %s answers" % s.name, "%s %s" % (code.name, g))
                return None
            progress.append(g.done)
            samples.append((time.time(), g.done))
            if g.state != pb.JOB_STATE_RUNNING:
                break
            if a.lo * g.total <= g.done <= a.hi * g.total:
                os.kill(by[holder].pid, signal.SIGKILL)
                t_kill = time.time()
                killed = g.done
                break
            time.sleep(0.005)
        if killed is None:
            info("activation %d: job %s was %s (%d of %d) before it could be killed part way "
                 "(progress seen %s); once more with another key"
                 % (attempt, j.id, pb.JobState.Name(g.state), g.done, g.total,
                    sorted(set(progress))[:8]))
            if g.state != pb.JOB_STATE_DONE:
                return None
            with lock:
                state["allowed"] = list(names)
            # The next attempt: a new key.
            k2 = gen_keys([A], [t], 1)[t][0][0]
            continue
        with open(os.path.join(a.out, "killed"), "w") as f:
            f.write("%s\n" % holder)
        report(True, "SIGKILL of %s (pid %d), the broker running job %s (found in %.2f s), at %d of "
               "%d data keys re-sealed (%.0f%%), %.2f s into the job"
               % (holder, by[holder].pid, j.id, t_found, killed, j.total,
                  100.0 * killed / j.total, t_kill - t_start))
        with lock:
            during = stats["ok"] - before
            wrong, failed = stats["wrong"], stats["failed"]
        report(during > 0 and wrong == 0 and failed == 0,
               "the readers were answered during the job until the kill: %d answers, all the DEKs "
               "read before" % during, "%d wrong, %d failed" % (wrong, failed))
        # The take-over: a survivor logs "job J: re-sealing ... (X of N
        # done)"; the job then moves on and ends.
        resumed = None
        after = []
        at = killed
        t_resumed = None
        t_moved = None
        first = None
        final = None
        while time.time() - t_kill < a.bound:
            if resumed is None:
                for n in survivors:
                    line = log_find(by[n].log, offs[n], pat)
                    if line:
                        resumed, t_resumed = (n, line), time.time()
            code, g = call(s.stub.GetJob, pb.GetJobRequest(id=j.id), timeout=10)
            if code != OK:
                report(False, "GetJob through %s answers after the kill" % s.name,
                       "%s %s" % (code.name, g))
                return None
            if first is None:
                first = g.done
            progress.append(g.done)
            after.append((time.time(), g.done))
            if t_moved is None and g.done > first:
                t_moved = time.time()
            if g.state != pb.JOB_STATE_RUNNING and resumed is not None:
                final = g
                break
            time.sleep(0.005)
        t_end = time.time()
        report(resumed is not None, "a surviving broker takes the job over (%s)"
               % (resumed[0] if resumed else "none"), "no survivor logged %r" % pat)
        if resumed:
            m = re.search(r"\((\d+) of (\d+) done\)", resumed[1])
            at = int(m.group(1)) if m else -1
            report(at >= killed, "... and resumes from the job's stored progress (%d of %d done; "
                   "%d seen before the kill)" % (at, j.total, killed),
                   "its log: %s" % resumed[1].strip())
            info("take-over: %s resumed job %s %.2f s after the SIGKILL of %s (the job poll is "
                 "every 1 s); the job's progress moved again %.2f s after the kill"
                 % (resumed[0], j.id, t_resumed - t_kill, holder,
                    (t_moved - t_kill) if t_moved else float("nan")))
            report(t_resumed - t_kill < 10, "... within 10 s of the kill (%.2f s)" % (t_resumed - t_kill))
        report(final is not None and final.state == pb.JOB_STATE_DONE and final.done == final.total == j.total,
               "the job finishes on the survivors within %d s of the kill: %s, %s of %s"
               % (a.bound, pb.JobState.Name(final.state) if final else "still running",
                  final.done if final else "-", final.total if final else "-"),
               "error %r" % (final.error if final else ""))
        report(progress == sorted(progress), "the job's progress never went back")
        if final is not None:
            info("re-seal: job %s, %d data keys in %.2f s from ActivateKey to done (SIGKILL and "
                 "take-over included); %s before the kill, %s after the take-over (GetJob's "
                 "progress, batches of 256, one re-seal thread each)"
                 % (j.id, j.total, t_end - t_start, rate(samples), rate(after)))
        with lock:
            info("readers meanwhile: %d answers (%s)" % (stats["ok"] - before, stats["by"]))
        return holder, j.id, k2
    report(False, "an activation is killed part way", "3 activations ended first")
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("race-activate", cmd_race_activate), ("race-lock", cmd_race_lock),
                     ("lock-read", cmd_lock_read)):
        p = sub.add_parser(name)
        p.add_argument("--rounds", type=int, default=20)
        p.add_argument("--out", required=True)
        p.set_defaults(fn=fn)
    p = sub.add_parser("big")
    p.add_argument("--out", required=True)
    p.add_argument("--tenant", default="big")
    p.add_argument("--envs", type=int, default=10000)
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--sample", type=int, default=1024)
    p.add_argument("--lo", type=float, default=0.2)
    p.add_argument("--hi", type=float, default=0.7)
    p.add_argument("--bound", type=int, default=60)
    p.set_defaults(fn=cmd_big)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
PY

# report FILE: the driver's "ok"/"FAIL" lines counted (as kbt_py_report),
# its "info:" lines printed as they are, the rest indented.
report() {
	local line
	while IFS= read -r line; do
		case $line in
		"ok   "*) kbt_pass "${line#ok   }" ;;
		"FAIL "*) kbt_fail "${line#FAIL }" ;;
		"info: "*) printf '%s\n' "$line" ;;
		*) printf '     %s\n' "$line" ;;
		esac
	done <"$1"
}
# py SPEC SUBCOMMAND ARGS...: the driver on the brokers of SPEC
# (NAME=ADDR=PID=LOG,...), reported; its exit status.
py() {
	local spec=$1 sub=$2 out=$w/py.$2.out rc t0=$SECONDS
	shift 2
	KBT_BROKERS=$spec "$KBT_PY" "$w/cluster.py" "$sub" --out "$w" "$@" >"$out" 2>&1
	rc=$?
	report "$out"
	check "cluster.py $sub exits 0 (it took $((SECONDS - t0)) s)" test "$rc" = 0
	return "$rc"
}
# part K: part K is to run (KBT_CLUSTER_PARTS).
part() { [[ " $PARTS " == *" $1 "* ]]; }
# spec NAME...: the brokers' SPEC for py.
declare -A ADDR=()
spec() {
	local n out=() pid log
	for n in "$@"; do
		if [[ $n == A ]]; then
			pid=$KBT_PID log=$KBT_LOG
		else
			pid=${KBT_EXTRA_PID[$n]} log=$KBT_DIR/keybrokerd-$n.log
		fi
		out+=("$n=${ADDR[$n]}=$pid=$log")
	done
	local IFS=,
	printf '%s' "${out[*]}"
}
# start_extra NAME: one more broker like A, on a port of its own.
start_extra() {
	local port
	port=$(kbt_free_port)
	kbt_conf_copy "$1" "$port" || return 1
	ADDR[$1]=127.0.0.1:$port
	kbt_start_extra "$1" "$KBT_CONF_COPY" "${ADDR[$1]}"
}
# stop_extra NAME: SIGTERM broker NAME of start_extra; it must exit 0.
stop_extra() {
	local pid=${KBT_EXTRA_PID[$1]} rc i
	unset "KBT_EXTRA_PID[$1]"
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		kbt_fail "keybrokerd $1 exits on SIGTERM" "still running 20 s after SIGTERM; killed"
		return 1
	fi
	wait "$pid"
	rc=$?
	check_eq "keybrokerd $1 exits 0 on SIGTERM" "$rc" 0
}

kbt_start || kbt_done
ADDR[A]=127.0.0.1:$KBT_PORT
start_extra B || kbt_done
check "A and B share one database: a tenant made through A is read through B" \
	bash -c "'$KB_BUILD/kbctl' --addr '${ADDR[A]}' tenants create shared-check >/dev/null &&
		'$KB_BUILD/kbctl' --addr '${ADDR[B]}' tenants show shared-check >/dev/null"

if part 1; then
	kbt_section "1. activation against activation ($ROUNDS rounds, through A and B at once)"
	py "$(spec A B)" race-activate --rounds "$ROUNDS"
fi
if part 2; then
	kbt_section "2. lock against activation ($ROUNDS rounds: LockTenant through A, ActivateKey through B)"
	py "$(spec A B)" race-lock --rounds "$ROUNDS"
fi
if part 3; then
	kbt_section "3. a lock through A, the very next GetDataKey through B ($ROUNDS rounds)"
	py "$(spec A B)" lock-read --rounds "$ROUNDS"
fi
part 4 || kbt_done
kbt_section "4. three brokers, an activation over $N environments, the job's broker SIGKILLed"
start_extra C || kbt_done
rm -f "$w/killed" "$w/big.result"
# (stderr: bash's "Killed" notice of the broker the driver kills)
py "$(spec A B C)" big --envs "$N" 2>/dev/null
if [[ ! -s $w/killed || ! -s $w/big.result ]]; then
	kbt_fail "the driver killed a broker and reported the result" "$(tail -n 5 "$w/py.big.out")"
	kbt_done
fi
killed=$(<"$w/killed")
kpid=$(spec "$killed" | cut -d= -f3)
if [[ $killed == A ]]; then
	# (stderr: bash's "Killed" notice)
	{ wait "$KBT_PID"; } 2>/dev/null
	KBT_PID=
	echo "=== SIGKILL (test-cluster: the job's broker)" >>"$KBT_LOG"
else
	kbt_kill_extra "$killed"
fi
check "the killed broker $killed (pid $kpid) is gone" bash -c "[[ -n '$kpid' ]] && ! kill -0 '$kpid' 2>/dev/null"
job=$(sed -n 's/^job=//p' "$w/big.result")
read -r -a survivors <<<"$(sed -n 's/^survivors=//p' "$w/big.result")"
answered=$(sed -n 's/^datakey_ok=//p' "$w/big.result")
S1=${ADDR[${survivors[0]}]}

kbt_section "4b. the audit log after the kill"
t0=$SECONDS
KBT_CALL_TIMEOUT=120 kb_as auditor --addr "$S1" audit verify --online
check "kbctl audit verify --online through ${survivors[0]} passes ($((SECONDS - t0)) s): $(head -c 200 "$KBT_OUT" | tr '\n' ' ')" \
	test "$KBT_RC" = 0
[[ $KBT_RC == 0 ]] || kbt_last | sed 's/^/     | /'
got=$(kbt_db_sql audit "SELECT count(*) FROM events WHERE method = 'GetDataKey'
	AND tenant_id = 'big' AND result = 'ok'")
check "the log holds a GetDataKey event for every answer the test received ($got events, $answered answers): none lost with $killed" \
	test "${got:-0}" -ge "${answered:-1}"
starts=$(kbt_db_sql audit "SELECT count(*) FROM events WHERE method = 'job.activate.start'
	AND reason LIKE 'job $job:%'")
check_eq "job $job's start is recorded twice (by $killed, then by the survivor that took it over)" "$starts" 2
dones=$(kbt_db_sql audit "SELECT count(*) FROM events WHERE method = 'job.activate.done'
	AND reason = '$job'")
check_eq "... and its end once" "$dones" 1
echo "info: the audit log holds $(kbt_db_sql audit 'SELECT count(*) FROM events') events"

kbt_section "the survivors stop cleanly"
for n in "${survivors[@]}"; do
	if [[ $n == A ]]; then
		kbt_stop
	else
		stop_extra "$n"
	fi
done
kbt_done
