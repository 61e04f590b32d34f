#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-resume.py: the grpcio side of test-resume.sh (many environments).

  populate --tenant T --count N --out DIR
      N environments (r00000...) made and put under the tenant's active key
      (ApplyKey), in parallel; service certificates for all (16 per
      certificate) from the PKI in $KBT_PKI; every DEK read and saved to
      DIR/deks.json.
  kill-mid-job --pid PID [--lo 0.1 --hi 0.9]
      Start services reading DEKs; when they run, create DIR/readers-ready
      and wait for DIR/job-id (the activation test-resume.sh starts); poll
      GetJob and SIGKILL PID as soon as lo <= done/total <= hi. Exit 0 when
      killed mid-way, 3 when the job had finished first, 1 on a failure.
  after-restart --job J --tenant T --out DIR --key NEW_KEY
      Wait for the restarted broker, then until the job is done read DEKs
      continuously; then read every DEK once more. Checks the job resumed
      (done never went back), finished with done == total, every read
      returned the environment's original DEK, and every environment ends
      wrapped by NEW_KEY.

Admin calls use KB_CERT/KB_KEY; service certificates are made here.
Prints "ok ..."/"FAIL ..." lines (and "info ..."), exits 1 on a failure.
"""
import argparse
import os
import signal
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402

pb, pb_grpc = kbt_grpc.stubs()
report, info = kbt_grpc.report, kbt_grpc.info


def admin_stub():
    return pb_grpc.KeyBrokerStub(kbt_grpc.channel())


parallel = kbt_grpc.parallel
call_retry = kbt_grpc.call_retry
Readers = kbt_grpc.Readers
load_deks = kbt_grpc.load_deks
start_readers = kbt_grpc.start_readers


def cmd_populate(a):
    stub = admin_stub()
    envs = ["r%05d" % i for i in range(a.count)]
    os.makedirs(a.out, exist_ok=True)

    t0 = time.time()
    res = parallel(lambda e: call_retry(stub.CreateEnvironment, pb.CreateEnvironmentRequest(
        tenant_id=a.tenant, name=e)), envs, 12)
    bad = [e for e, (c, _) in res.items() if c != grpc.StatusCode.OK]
    report(not bad, "%d environments created in %.1f s" % (len(envs), time.time() - t0),
           "%d failed, e.g. %s" % (len(bad), [res[e] for e in bad[:3]]))

    t0 = time.time()
    res = parallel(lambda e: call_retry(stub.ApplyKey, pb.EnvironmentRef(
        tenant_id=a.tenant, name=e)), envs, 12)
    bad = [e for e, (c, r) in res.items()
           if c != grpc.StatusCode.OK or r.mode != pb.ENCRYPTION_MODE_CUSTOMER]
    report(not bad, "%d environments put under the tenant key (ApplyKey) in %.1f s"
           % (len(envs), time.time() - t0),
           "%d failed, e.g. %s" % (len(bad), [res[e] for e in bad[:3]]))

    t0 = time.time()
    kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.out, "certs"), a.tenant, envs)
    info("service certificates made in %.1f s" % (time.time() - t0))

    t0 = time.time()
    readers = Readers(a.tenant, a.out)
    res = readers.read_all(envs)
    deks = {e: r.dek for e, (c, r) in res.items()
            if c == grpc.StatusCode.OK and len(r.dek) == 32}
    report(len(deks) == len(envs), "every DEK read (%d) in %.1f s" % (len(deks), time.time() - t0),
           "%d missing" % (len(envs) - len(deks)))
    report(len(set(deks.values())) == len(deks), "the DEKs are all different")
    kbt_grpc.save_deks(a.out, deks)
    return 1 if kbt_grpc.failures() else 0


def during_job_checks(stub, a, job):
    """While the job runs: the new key is installing, and what would change
    the tenant's encryption is refused until the job is done. The job may
    finish between two checks (2,000 re-seals take well under a second): a
    check that did not see the refusal counts only if the job was still
    running after it."""
    def running():
        code, j = kbt_grpc.status_of(lambda: stub.GetJob(pb.GetJobRequest(id=job), timeout=10))
        return code == grpc.StatusCode.OK and j.state == pb.JOB_STATE_RUNNING, j

    def check(ok, desc, detail):
        if not ok and not running()[0]:
            info("the job finished before '%s' could see it running: not checked" % desc)
            return
        report(ok, desc, detail)

    live, j = running()
    if not live:
        info("the job is not running any more: no checks during it")
        return
    code, k = kbt_grpc.status_of(lambda: stub.GetKey(
        pb.GetKeyRequest(tenant_id=a.tenant, key_id=j.key_id), timeout=10))
    check(code == grpc.StatusCode.OK and k.state == pb.KEY_STATE_INSTALLING,
          "during the job the new key is installing", "%s %s" % (code, k))
    env = pb.EnvironmentRef(tenant_id=a.tenant, name="r00000")
    for name, fn in (("BackupEnvironment", lambda: stub.BackupEnvironment(env, timeout=10)),
                     ("RevertKey", lambda: stub.RevertKey(env, timeout=10))):
        code, d = kbt_grpc.status_of(fn)
        check(code == grpc.StatusCode.FAILED_PRECONDITION and "activating" in d,
              "during the job %s is refused: %s" % (name, d), "%s %s" % (code, d))
    if a.lock_key and running()[0]:
        # (A lock after the job would succeed and lock the tenant: only
        # while it still runs; the window left is a few milliseconds.)
        req = pb.LockTenantRequest(tenant_id=a.tenant, file=kbt_grpc.read(a.lock_key),
                                   password=kbt_grpc.read(a.lock_password_file).decode().strip())
        code, d = kbt_grpc.status_of(lambda: stub.LockTenant(req, timeout=30))
        check(code == grpc.StatusCode.FAILED_PRECONDITION and "activat" in d,
              "during the job LockTenant is refused: %s" % d, "%s %s" % (code, d))


def cmd_kill_mid_job(a):
    stub = admin_stub()
    deks = load_deks(a.out)
    readers = Readers(a.tenant, a.out)
    stop, th, stats, lock = start_readers(readers, deks)
    seen = []
    rc = 1
    try:
        # Readers first, then the activation (test-resume.sh runs kbctl
        # keys activate when told, and hands over the job id).
        t0 = time.time()
        while stats["ok"] + stats["failed"] + stats["wrong"] < 8 and time.time() - t0 < 60:
            time.sleep(0.01)
        open(os.path.join(a.out, "readers-ready"), "w").close()
        job_file = os.path.join(a.out, "job-id")
        while not os.path.exists(job_file) and time.time() - t0 < 120:
            time.sleep(0.005)
        if not os.path.exists(job_file):
            report(False, "test-resume.sh starts the activation")
            return 1
        with open(job_file) as f:
            job = f.read().strip()
        with lock:
            before = stats["ok"]
        during_job_checks(stub, a, job)
        deadline = time.time() + 120
        while time.time() < deadline:
            code, j = kbt_grpc.status_of(lambda: stub.GetJob(pb.GetJobRequest(id=job), timeout=10))
            if code != grpc.StatusCode.OK:
                report(False, "GetJob answers during the activation", "%s %s" % (code, j))
                break
            seen.append(j.done)
            if j.total and a.lo <= j.done / j.total <= a.hi:
                with lock:
                    stop.set()
                    os.kill(a.pid, signal.SIGKILL)
                    during = stats["ok"] - before
                report(True, "SIGKILL at %d of %d data keys re-wrapped (%.0f%%)"
                       % (j.done, j.total, 100.0 * j.done / j.total))
                with open(os.path.join(a.out, "killed-at"), "w") as f:
                    f.write("%d %d\n" % (j.done, j.total))
                rc = 0
                break
            if j.state != pb.JOB_STATE_RUNNING:
                info("the job was %s (%d of %d) before it could be killed mid-way; progress seen: %s"
                     % (pb.JobState.Name(j.state), j.done, j.total, sorted(set(seen))))
                rc = 3
                break
            time.sleep(0.005)
        else:
            report(False, "the job reaches 10%% within 120 s", "progress seen: %s" % sorted(set(seen)))
    finally:
        stop.set()
        for t in th:
            t.join()
    if rc == 0:
        report(stats["wrong"] == 0 and stats["failed"] == 0 and during > 0,
               "GetDataKey served during the activation until the kill: %d calls (%d before it "
               "began), every DEK the original" % (during, before),
               "%d wrong, %d failed: %s" % (stats["wrong"], stats["failed"], stats["errors"][:5]))
        info("wrapping keys seen by the readers: %s" % stats["keys"])
    return 1 if kbt_grpc.failures() else rc


def cmd_after_restart(a):
    deks = load_deks(a.out)
    with open(os.path.join(a.out, "killed-at")) as f:
        killed_done, total = (int(x) for x in f.read().split())
    # Wait for the restarted broker (started after this script).
    t0 = time.time()
    stub = None
    while time.time() - t0 < 30:
        ch = kbt_grpc.channel()
        try:
            grpc.channel_ready_future(ch).result(timeout=1)
            stub = pb_grpc.KeyBrokerStub(ch)
            code, _ = kbt_grpc.status_of(lambda: stub.WhoAmI(pb.WhoAmIRequest(), timeout=2))
            if code == grpc.StatusCode.OK:
                break
        except grpc.FutureTimeoutError:
            pass
        ch.close()
        stub = None
        time.sleep(0.05)
    if stub is None:
        report(False, "the restarted broker answers within 30 s")
        return 1
    readers = Readers(a.tenant, a.out)
    stop, th, stats, lock = start_readers(readers, deks)
    progress = []
    final = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            code, j = kbt_grpc.status_of(lambda: stub.GetJob(pb.GetJobRequest(id=a.job), timeout=10))
            if code != grpc.StatusCode.OK:
                report(False, "GetJob answers after the restart", "%s %s" % (code, j))
                break
            progress.append(j.done)
            if j.state != pb.JOB_STATE_RUNNING:
                final = j
                break
            time.sleep(0.02)
        # Keep reading a little after the end too.
        time.sleep(0.3)
    finally:
        stop.set()
        for t in th:
            t.join()
    info("job progress seen after the restart: %s" % sorted(set(progress))[:20])
    report(progress and progress[0] >= killed_done,
           "the job kept its progress across the crash (first seen %s, %d at the kill)"
           % (progress[0] if progress else "-", killed_done))
    report(progress == sorted(progress), "the job's progress never went back")
    report(final is not None and final.state == pb.JOB_STATE_DONE and final.done == final.total == total,
           "the job resumed and finished: done %s of %s (total %d at the kill)"
           % (final.done if final else "-", final.total if final else "-", total),
           "state %s, error %r" % (pb.JobState.Name(final.state) if final else "still running",
                                   final.error if final else ""))
    report(stats["wrong"] == 0 and stats["failed"] == 0 and stats["ok"] > 0,
           "GetDataKey served throughout the resumed job: %d calls, every DEK the original (keys seen: %s)"
           % (stats["ok"], stats["keys"]),
           "%d wrong, %d failed: %s" % (stats["wrong"], stats["failed"], stats["errors"][:5]))

    t0 = time.time()
    res = readers.read_all(list(deks))
    bad = [e for e, (c, r) in res.items() if c != grpc.StatusCode.OK or r.dek != deks[e]]
    report(not bad, "all %d environments return their original DEK (read in %.1f s)"
           % (len(deks), time.time() - t0),
           "%d differ or fail, e.g. %s" % (len(bad), [(e, str(res[e][0])) for e in bad[:5]]))
    wrong_key = [e for e, (c, r) in res.items() if c == grpc.StatusCode.OK and r.key_id != a.key]
    report(not wrong_key, "every environment is wrapped by the new key %s" % a.key,
           "%d are not, e.g. %s" % (len(wrong_key), [(e, res[e][1].key_id) for e in wrong_key[:5]]))
    return 1 if kbt_grpc.failures() else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("populate")
    p.add_argument("--tenant", required=True)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_populate)
    p = sub.add_parser("kill-mid-job")
    p.add_argument("--tenant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--lock-key", help="the active key's .pfx: LockTenant is refused during the job")
    p.add_argument("--lock-password-file")
    p.add_argument("--lo", type=float, default=0.1)
    p.add_argument("--hi", type=float, default=0.9)
    p.set_defaults(fn=cmd_kill_mid_job)
    p = sub.add_parser("after-restart")
    p.add_argument("--tenant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--key", required=True)
    p.set_defaults(fn=cmd_after_restart)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
