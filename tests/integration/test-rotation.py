#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-rotation.py: the grpcio side of test-rotation.sh (platform-key
rotation over many environments, readers throughout, SIGKILL mid-job).

  prepare --tenant T --out DIR --seeded FILE
      FILE has "NAME BASE64-DEK" lines (kb-seed --deks-out): service
      certificates for every NAME (16 per certificate) from the PKI in
      $KBT_PKI; every DEK read through GetDataKey, each the one seeded, all
      different; saved to DIR/deks.json.
  rotate --tenant T --out DIR --pid PID [--readers 16] [--lo 0.25 --hi 0.75]
      Readers call GetDataKey on random environments from start to end.
      RotatePlatformKey; poll GetJob and SIGKILL PID as soon as
      lo <= done/total <= hi (if the job ends first, rotate again: at most
      3 times). Then create DIR/killed and wait for DIR/restarted, which
      test-rotation.sh writes once the restarted broker answers health
      (its content: the time it did, or "failed"). Follow the resumed job
      to its end; stop the readers; read every DEK once more. Checks: the
      job kept its progress and finished; every answer, during and after,
      was the DEK recorded; no call failed except while the broker was
      down (counted apart); every environment ends under the new key.
      Writes DIR/job (the job that was killed), DIR/new-key and
      DIR/old-keys (the platform keys rotated away, one a line).

Admin calls use KB_CERT/KB_KEY. Prints "ok ..."/"FAIL ..." lines (and
"info ..." with the figures), exits 1 on a failure.
"""
import argparse
import base64
import os
import signal
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402

pb, pb_grpc = kbt_grpc.stubs()
report, info = kbt_grpc.report, kbt_grpc.info


def read_seeded(path):
    out = {}
    with open(path) as f:
        for line in f:
            name, dek = line.split()
            out[name] = base64.b64decode(dek)
    return out


def cmd_prepare(a):
    seeded = read_seeded(a.seeded)
    envs = sorted(seeded)
    t0 = time.time()
    kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.out, "certs"), a.tenant, envs)
    info("service certificates for %d environments made in %.1f s" % (len(envs), time.time() - t0))

    t0 = time.time()
    readers = kbt_grpc.Readers(a.tenant, a.out)
    res = readers.read_all(envs)
    secs = time.time() - t0
    deks = {e: r.dek for e, (c, r) in res.items() if c == grpc.StatusCode.OK}
    failed = [e for e in envs if e not in deks]
    report(not failed, "every one of the %d DEKs read before the rotation (%.1f s, %.0f/s)"
           % (len(envs), secs, len(envs) / secs if secs > 0 else 0),
           "%d failed, e.g. %s" % (len(failed), [(e, str(res[e][0]), res[e][1]) for e in failed[:3]]))
    other = [e for e in deks if deks[e] != seeded[e]]
    report(not other, "every DEK served is the one sealed at seeding",
           "%d differ, e.g. %s" % (len(other), other[:5]))
    report(len(set(deks.values())) == len(deks), "the DEKs are all different")
    keys = {r.key_id for c, r in res.values() if c == grpc.StatusCode.OK}
    report(len(keys) == 1, "they are all sealed by one key, the platform key (%s)" % sorted(keys))
    kbt_grpc.save_deks(a.out, deks)
    return 1 if kbt_grpc.failures() else 0


def get_job(stub, job):
    # wait_for_ready: after the restart the channel may still be
    # reconnecting; the call waits for it instead of failing at once.
    return kbt_grpc.status_of(lambda: stub.GetJob(pb.GetJobRequest(id=job), timeout=10,
                                                  wait_for_ready=True))


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def rotate_and_kill(stub, a, old_keys):
    """Rotations until one is killed mid-way: (job, killed_done, total, t_start)
    or None."""
    for attempt in range(1, 4):
        t_start = time.time()
        code, j = kbt_grpc.status_of(lambda: stub.RotatePlatformKey(
            pb.RotatePlatformKeyRequest(), timeout=30))
        if code != grpc.StatusCode.OK:
            report(False, "RotatePlatformKey answers", "%s %s" % (code, j))
            return None
        old_keys.append(j.previous_key_id)
        write(os.path.join(a.out, "old-keys"), "".join(k + "\n" for k in old_keys))
        write(os.path.join(a.out, "new-key"), j.target_key_id + "\n")
        report(j.state == pb.JOB_STATE_RUNNING and j.kind == "rotate-platform"
               and j.total >= len(a.deks),
               "rotation %d: job %s, %s -> %s, %d data keys to re-seal"
               % (attempt, j.id, j.previous_key_id, j.target_key_id, j.total),
               "state %s, kind %r, total %d" % (pb.JobState.Name(j.state), j.kind, j.total))
        seen = []
        while time.time() - t_start < 120:
            code, g = get_job(stub, j.id)
            if code != grpc.StatusCode.OK:
                report(False, "GetJob answers during the rotation", "%s %s" % (code, g))
                return None
            seen.append(g.done)
            if g.total and a.lo <= g.done / g.total <= a.hi:
                a.outage.down()
                os.kill(a.pid, signal.SIGKILL)
                report(True, "SIGKILL at %d of %d data keys re-sealed (%.0f%%)"
                       % (g.done, g.total, 100.0 * g.done / g.total))
                write(os.path.join(a.out, "job"), j.id + "\n")
                write(os.path.join(a.out, "killed"), "%d %d\n" % (g.done, g.total))
                return j.id, g.done, g.total, t_start
            if g.state != pb.JOB_STATE_RUNNING:
                info("rotation %d was %s (%d of %d) before it could be killed mid-way; "
                     "progress seen: %s; again" % (attempt, pb.JobState.Name(g.state),
                                                   g.done, g.total, sorted(set(seen))[:10]))
                break
            time.sleep(0.003)
        else:
            report(False, "the rotation reaches %d%% within 120 s" % (100 * a.lo),
                   "progress seen: %s" % sorted(set(seen))[:20])
            return None
    report(False, "a rotation was killed in the middle", "3 rotations ended before it")
    return None


def wait_restarted(a):
    """The time test-rotation.sh saw the restarted broker answer, or None."""
    path = os.path.join(a.out, "restarted")
    t0 = time.time()
    while not os.path.exists(path) and time.time() - t0 < 90:
        time.sleep(0.01)
    if not os.path.exists(path):
        report(False, "test-rotation.sh restarts the broker within 90 s")
        return None
    with open(path) as f:
        text = f.read().strip()
    if text == "failed":
        report(False, "the killed broker starts again")
        return None
    return float(text)


def cmd_rotate(a):
    a.deks = kbt_grpc.load_deks(a.out)
    a.outage = kbt_grpc.Outage()
    stub = pb_grpc.KeyBrokerStub(kbt_grpc.channel(options=kbt_grpc.FAST_RECONNECT))
    readers = kbt_grpc.Readers(a.tenant, a.out, options=kbt_grpc.FAST_RECONNECT)
    # Every service's TLS connection first, so that the readers measure
    # GetDataKey, not 625 handshakes.
    t0 = time.time()
    bad = readers.connect_all()
    report(not bad, "%d service channels connected in %.1f s" % (len(readers.stubs), time.time() - t0),
           "%d did not connect: %s" % (len(bad), bad[:3]))
    stop, th, stats, lock = kbt_grpc.start_readers(readers, a.deks, a.readers, a.outage)
    old_keys = []
    final = None
    try:
        t0 = time.time()
        while stats["ok"] + stats["failed"] + stats["wrong"] < 2 * a.readers and time.time() - t0 < 60:
            time.sleep(0.01)
        with lock:
            before = stats["ok"]
        got = rotate_and_kill(stub, a, old_keys)
        if got is None:
            return 1
        job, killed_done, total, t_start = got
        t_kill = a.outage.down_at
        with lock:
            during = stats["ok"] - before
        report(during > 0 and stats["wrong"] == 0 and stats["failed"] == 0,
               "GetDataKey served during the rotation until the kill: %d calls, every DEK "
               "the one recorded" % during,
               "%d wrong, %d failed: %s" % (stats["wrong"], stats["failed"], stats["errors"][:5]))
        t_up = wait_restarted(a)
        if t_up is None:
            return 1
        a.outage.up(t_up)
        info("the broker was down %.2f s (SIGKILL to health answering again)" % (t_up - t_kill))
        with lock:
            ok_up = stats["ok"]
        # A new admin channel: the old one's connection died with the broker.
        stub = pb_grpc.KeyBrokerStub(kbt_grpc.channel(options=kbt_grpc.FAST_RECONNECT))
        progress = []
        deadline = time.time() + 120
        while time.time() < deadline:
            code, g = get_job(stub, job)
            if code != grpc.StatusCode.OK:
                report(False, "GetJob answers after the restart", "%s %s" % (code, g))
                break
            progress.append(g.done)
            if g.state != pb.JOB_STATE_RUNNING:
                final = g
                break
            time.sleep(0.01)
        t_done = time.time()
        with lock:
            ok_done = stats["ok"]
        # Keep reading a little after the end too (the old key goes then).
        time.sleep(0.5)
    finally:
        stop.set()
        for t in th:
            t.join()

    report(bool(progress) and progress[0] >= killed_done,
           "the job kept its progress across the SIGKILL (first seen %s, %d at the kill)"
           % (progress[0] if progress else "-", killed_done))
    report(progress == sorted(progress), "the job's progress never went back")
    report(final is not None and final.state == pb.JOB_STATE_DONE
           and final.done == final.total == total,
           "the job resumed and finished: done %s of %s (total %d at the kill)"
           % (final.done if final else "-", final.total if final else "-", total),
           "state %s, error %r" % (pb.JobState.Name(final.state) if final else "still running",
                                   final.error if final else ""))
    # The rest of the job may take less than the readers' reconnection:
    # that they read again after the restart is the check, how many did
    # before the job ended is a figure.
    report(stats["ok"] > ok_up, "the readers reconnected: %d GetDataKey answers after the restart, "
           "%d of them while the resumed job ran" % (stats["ok"] - ok_up, ok_done - ok_up))
    report(stats["wrong"] == 0,
           "%d GetDataKey answers from the start to after the end, every one the DEK "
           "recorded (keys seen: %s)" % (stats["ok"], stats["keys"]),
           "%d wrong: %s" % (stats["wrong"], [x for x in stats["errors"] if "another" in x][:5]))
    report(stats["failed"] == 0,
           "no GetDataKey call failed while the broker was up (%d failed while it was down)"
           % stats["outage"],
           "%d failed: %s" % (stats["failed"], stats["errors"][:5]))
    if stats["outage_errors"]:
        info("calls that failed while the broker was down, e.g. %s" % stats["outage_errors"][:2])

    wall = t_done - t_start
    down = t_up - t_kill
    info("figures (read, not asserted): rotation of %d data keys in %.2f s, of which the broker "
         "was down %.2f s: %.0f data keys/s while it ran; %d GetDataKey answers from %d readers "
         "meanwhile, %.0f/s"
         % (total, wall, down, total / (wall - down) if wall > down else 0,
            ok_done - before, a.readers, (ok_done - before) / wall if wall > 0 else 0))

    # New channels: the readers' may still hold the killed broker's
    # connections (those unused since the restart).
    t0 = time.time()
    readers = kbt_grpc.Readers(a.tenant, a.out)
    res = readers.read_all(list(a.deks))
    bad = [e for e, (c, r) in res.items() if c != grpc.StatusCode.OK or r.dek != a.deks[e]]
    report(not bad, "after the rotation all %d environments return the DEK recorded before it "
           "(read in %.1f s)" % (len(a.deks), time.time() - t0),
           "%d differ or fail, e.g. %s" % (len(bad), [(e, str(res[e][0])) for e in bad[:5]]))
    with open(os.path.join(a.out, "new-key")) as f:
        new = f.read().strip()
    wrong_key = [e for e, (c, r) in res.items() if c == grpc.StatusCode.OK and r.key_id != new]
    report(not wrong_key, "every environment is sealed by the new platform key %s" % new,
           "%d are not, e.g. %s" % (len(wrong_key), [(e, res[e][1].key_id) for e in wrong_key[:5]]))
    return 1 if kbt_grpc.failures() else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--tenant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeded", required=True)
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("rotate")
    p.add_argument("--tenant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--lo", type=float, default=0.25)
    p.add_argument("--hi", type=float, default=0.75)
    p.set_defaults(fn=cmd_rotate)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
