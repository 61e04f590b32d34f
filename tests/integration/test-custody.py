#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""test-custody.py: the Python side of test-custody.sh (the attacker's tools
and the many-environment platform-key rotation).

  plant --kind rsa-public|aes-secret --label L --id ID (--pubkey PEM | --value HEX)
      Create a token object with CKA_PRIVATE=FALSE in a read-write session
      that never logged in (no PIN): what anyone who reaches the token can
      do. SOFTHSM2_CONF names the token; the module is SoftHSMv2's.
  seal --key HEX --tenant T --uid U --env E --version N --mode M --key-id K --dek HEX
      AES-256-GCM seal of DEK under the attacker's key with the associated
      data broker/dek.c's aad_build makes for that row; prints the blob (hex:
      12-byte IV, ciphertext, 16-byte tag).
  try-open --db DB --key HEX --key-id K
      Every stored data key sealed "under K" opened with the attacker's key
      HEX (associated data as above); prints "opened N of M".
  populate --tenant T --count N --out DIR
      N platform-managed environments (p00000...) in parallel; service
      certificates for all (16 per certificate); every DEK saved to
      DIR/deks.json.
  readers --tenant T --out DIR --callers C [--pid PID --lo --hi]
      C service callers reading random environments' DEKs without pause.
      They start, then DIR/readers-ready is created. Without --pid they
      read until DIR/stop exists; with --pid, once DIR/job-id exists (a
      platform-key rotation), GetJob is polled and PID SIGKILLed when
      lo <= done/total <= hi (exit 3 if the job ended first). Reports the
      calls: 0 failed, 0 wrong DEKs.
  after-restart --tenant T --out DIR --job J --callers C
      Wait for the restarted broker, read DEKs with C callers until job J is
      done; it must keep its progress and finish; every DEK read back.

Prints "ok ..."/"FAIL ..."/"info ..." lines; exits 1 on a failure.
"""
import argparse
import base64
import ctypes
import json
import os
import random
import signal
import sqlite3
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbt_grpc  # noqa: E402

report, info = kbt_grpc.report, kbt_grpc.info
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


# ---- the attacker: a PKCS#11 session without the PIN ----

class Attr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_ulong), ("pValue", ctypes.c_void_p),
                ("ulValueLen", ctypes.c_ulong)]


def template(pairs):
    arr = (Attr * len(pairs))()
    keep = []
    for i, (t, v) in enumerate(pairs):
        if isinstance(v, bool):
            b = ctypes.create_string_buffer(bytes([int(v)]), 1)
            n = 1
        elif isinstance(v, int):
            b = ctypes.c_ulong(v)
            n = ctypes.sizeof(b)
        else:
            b = ctypes.create_string_buffer(v, len(v))
            n = len(v)
        keep.append(b)
        arr[i].type = t
        arr[i].pValue = ctypes.cast(ctypes.pointer(b), ctypes.c_void_p)
        arr[i].ulValueLen = n
    return arr, keep


def cmd_plant(a):
    lib = ctypes.CDLL(SOFTHSM)
    UL = ctypes.c_ulong

    def ck(rv, what):
        if rv != 0:
            report(False, "plant: %s" % what, "CKR 0x%x" % rv)
            raise SystemExit(1)
    ck(lib.C_Initialize(None), "C_Initialize")
    n = UL(0)
    ck(lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(n)), "C_GetSlotList")
    slots = (UL * max(n.value, 1))()
    ck(lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(n)), "C_GetSlotList")

    class TokenInfo(ctypes.Structure):
        _fields_ = [("label", ctypes.c_char * 32), ("rest", ctypes.c_char * 512)]
    slot = None
    for s in slots[:n.value]:
        ti = TokenInfo()
        ck(lib.C_GetTokenInfo(UL(s), ctypes.byref(ti)), "C_GetTokenInfo")
        if ti.label.decode().strip() == a.token:
            slot = s
    if slot is None:
        report(False, "plant: token %s found" % a.token)
        return 1
    sess = UL(0)
    # CKF_RW_SESSION | CKF_SERIAL_SESSION, and no C_Login.
    ck(lib.C_OpenSession(UL(slot), UL(0x6), None, None, ctypes.byref(sess)), "C_OpenSession")
    common = [(0x1, True), (0x2, False), (0x3, a.label.encode()), (0x102, a.id.encode())]
    if a.kind == "rsa-public":
        from cryptography.hazmat.primitives import serialization
        pub = serialization.load_pem_public_key(kbt_grpc.read(a.pubkey)).public_numbers()
        mod = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
        exp = pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")
        # CKO_PUBLIC_KEY, CKK_RSA; encrypt, wrap, verify; modulus, exponent.
        pairs = [(0x0, 2), (0x100, 0)] + common + [
            (0x104, True), (0x106, True), (0x10a, True), (0x120, mod), (0x122, exp)]
    else:
        # CKO_SECRET_KEY, CKK_AES, a value the attacker knows.
        pairs = [(0x0, 4), (0x100, 0x1f)] + common + [
            (0x104, True), (0x105, True), (0x106, True), (0x107, True),
            (0x103, False), (0x162, True), (0x11, bytes.fromhex(a.value))]
    arr, _keep = template(pairs)
    h = UL(0)
    rv = lib.C_CreateObject(sess, arr, UL(len(pairs)), ctypes.byref(h))
    lib.C_CloseSession(sess)
    lib.C_Finalize(None)
    report(rv == 0, "planted a CKA_PRIVATE=FALSE %s labelled %s, id %s, in a session "
           "that never logged in" % (a.kind, a.label, a.id), "C_CreateObject: CKR 0x%x" % rv)
    return 0 if rv == 0 else 1


# ---- the attacker's own sealed blobs ----

def aad(tenant, uid, env, version, mode, key_id):
    out = b""
    for v in ("keybroker/dek/v2", tenant, uid, env, str(version), mode, key_id):
        b = v.encode()
        out += struct.pack(">H", len(b)) + b
    return out


def cmd_seal(a):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    iv = os.urandom(12)
    ct = AESGCM(bytes.fromhex(a.key)).encrypt(
        iv, bytes.fromhex(a.dek), aad(a.tenant, a.uid, a.env, a.version, a.mode, a.key_id))
    print((iv + ct).hex())
    return 0


def cmd_try_open(a):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    g = AESGCM(bytes.fromhex(a.key))
    db = sqlite3.connect("file:%s?mode=ro" % a.db, uri=True)
    rows = db.execute(
        "SELECT e.tenant_id, e.uid, e.name, d.version, e.mode, d.key_id, d.wrapped "
        "FROM deks d JOIN environments e ON e.id = d.env_id WHERE d.key_id = ?",
        (a.key_id,)).fetchall()
    opened = 0
    for t, uid, name, ver, mode, kid, blob in rows:
        try:
            g.decrypt(blob[:12], blob[12:], aad(t, uid, name, ver, mode, kid))
            opened += 1
        except (InvalidTag, ValueError):
            pass
    print("opened %d of %d" % (opened, len(rows)))
    return 0


# ---- many environments ----

def stubs():
    return kbt_grpc.stubs()


def call_retry(fn, req, tries=50):
    import grpc
    for i in range(tries):
        code, r = kbt_grpc.status_of(lambda: fn(req, timeout=60))
        if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            return code, r
        time.sleep(0.05 * (i + 1))
    return code, r


class Readers:
    def __init__(self, tenant, out_dir):
        pb, pb_grpc = stubs()
        self.pb = pb
        self.tenant = tenant
        with open(os.path.join(out_dir, "certs", "index.json")) as f:
            self.index = json.load(f)
        self.stubs = {}
        for base in sorted(set(self.index.values())):
            ch = kbt_grpc.channel(cert=base + ".crt", key=base + ".key")
            self.stubs[base] = pb_grpc.KeyBrokerStub(ch)

    def get(self, env, timeout=30):
        stub = self.stubs[self.index[env]]
        req = self.pb.GetDataKeyRequest(tenant_id=self.tenant, environment=env)
        return kbt_grpc.status_of(lambda: stub.GetDataKey(req, timeout=timeout))

    def read_all(self, envs, width=16):
        import grpc

        def one(e):
            for i in range(20):
                code, r = self.get(e)
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return code, r
                time.sleep(0.05 * (i + 1))
            return code, r
        return kbt_grpc.parallel(one, envs, width)


def cmd_populate(a):
    import grpc
    pb, pb_grpc = stubs()
    stub = pb_grpc.KeyBrokerStub(kbt_grpc.channel())
    envs = ["p%05d" % i for i in range(a.count)]
    t0 = time.time()
    res = kbt_grpc.parallel(lambda e: call_retry(stub.CreateEnvironment, pb.CreateEnvironmentRequest(
        tenant_id=a.tenant, name=e)), envs, 12)
    dt = time.time() - t0
    bad = [e for e, (c, _) in res.items() if c != grpc.StatusCode.OK]
    report(not bad, "%d environments created in %.1f s (%.0f/s, 12 threads)"
           % (len(envs), dt, len(envs) / max(dt, 1e-6)),
           "%d failed, e.g. %s" % (len(bad), [res[e] for e in bad[:3]]))
    t0 = time.time()
    kbt_grpc.service_certs(os.environ["KBT_PKI"], os.path.join(a.out, "certs"), a.tenant, envs)
    info("service certificates for them made in %.1f s" % (time.time() - t0))
    t0 = time.time()
    res = Readers(a.tenant, a.out).read_all(envs)
    deks = {e: base64.b64encode(r.dek).decode() for e, (c, r) in res.items()
            if c == grpc.StatusCode.OK and len(r.dek) == 32}
    report(len(deks) == len(envs), "every DEK read (%d) in %.1f s" % (len(deks), time.time() - t0),
           "%d missing, e.g. %s" % (len(envs) - len(deks),
                                    [str(res[e]) for e in envs if e not in deks][:3]))
    report(len(set(deks.values())) == len(deks), "the %d DEKs are all different" % len(deks))
    with open(os.path.join(a.out, "deks.json"), "w") as f:
        json.dump(deks, f)
    return 1 if kbt_grpc.failures() else 0


def load_deks(out_dir):
    with open(os.path.join(out_dir, "deks.json")) as f:
        return {e: base64.b64decode(d) for e, d in json.load(f).items()}


def start_readers(readers, deks, n):
    import grpc
    stop = threading.Event()
    stats = {"ok": 0, "wrong": 0, "failed": 0, "errors": [], "keys": {}}
    lock = threading.Lock()
    envs = list(deks)

    def loop():
        while not stop.is_set():
            e = random.choice(envs)
            code, r = readers.get(e, timeout=10)
            with lock:
                if stop.is_set() and code != grpc.StatusCode.OK:
                    return  # the broker was just killed on purpose
                if code == grpc.StatusCode.OK and r.dek == deks[e]:
                    stats["ok"] += 1
                    stats["keys"][r.key_id] = stats["keys"].get(r.key_id, 0) + 1
                elif code == grpc.StatusCode.OK:
                    stats["wrong"] += 1
                    stats["errors"].append("%s: another DEK" % e)
                else:
                    stats["failed"] += 1
                    stats["errors"].append("%s: %s %s" % (e, code, r))
    th = [threading.Thread(target=loop) for _ in range(n)]
    for t in th:
        t.start()
    return stop, th, stats, lock


def calls(stats):
    return stats["ok"] + stats["wrong"] + stats["failed"]


def cmd_readers(a):
    pb, pb_grpc = stubs()
    deks = load_deks(a.out)
    readers = Readers(a.tenant, a.out)
    stop, th, stats, lock = start_readers(readers, deks, a.callers)
    rc = 0
    t0 = time.time()
    try:
        while calls(stats) < 4 * a.callers and time.time() - t0 < 60:
            time.sleep(0.01)
        open(os.path.join(a.out, "readers-ready"), "w").close()
        if a.pid:
            rc = kill_mid_job(a, pb, pb_grpc, stop, stats, lock)
        else:
            while not os.path.exists(os.path.join(a.out, "stop")) and time.time() - t0 < 180:
                time.sleep(0.02)
    finally:
        stop.set()
        for t in th:
            t.join()
    dt = time.time() - t0
    report(stats["ok"] > 0 and stats["wrong"] == 0 and stats["failed"] == 0,
           "%d callers: %d GetDataKey calls in %.1f s%s, 0 failed, every DEK the recorded one"
           % (a.callers, calls(stats), dt, " (until the SIGKILL)" if a.pid else ""),
           "%d wrong, %d failed: %s" % (stats["wrong"], stats["failed"], stats["errors"][:5]))
    info("sealing keys seen by the readers: %s" % stats["keys"])
    if a.pid:
        return 1 if kbt_grpc.failures() else rc
    return 1 if kbt_grpc.failures() else 0


def kill_mid_job(a, pb, pb_grpc, stop, stats, lock):
    import grpc
    stub = pb_grpc.KeyBrokerStub(kbt_grpc.channel())
    job_file = os.path.join(a.out, "job-id")
    t0 = time.time()
    while not os.path.exists(job_file) and time.time() - t0 < 60:
        time.sleep(0.002)
    if not os.path.exists(job_file):
        report(False, "test-custody.sh starts the rotation")
        return 1
    job = open(job_file).read().strip()
    seen = []
    while time.time() - t0 < 120:
        code, j = kbt_grpc.status_of(lambda: stub.GetJob(pb.GetJobRequest(id=job), timeout=10))
        if code != grpc.StatusCode.OK:
            report(False, "GetJob answers during the rotation", "%s %s" % (code, j))
            return 1
        seen.append(j.done)
        if j.total and a.lo <= j.done / j.total <= a.hi and j.state == pb.JOB_STATE_RUNNING:
            with lock:
                stop.set()
                os.kill(a.pid, signal.SIGKILL)
            report(True, "SIGKILL at %d of %d data keys re-sealed (%.0f%%)"
                   % (j.done, j.total, 100.0 * j.done / j.total))
            with open(os.path.join(a.out, "killed-at"), "w") as f:
                f.write("%d %d\n" % (j.done, j.total))
            return 0
        if j.state != pb.JOB_STATE_RUNNING:
            info("the job was %s (%d of %d) before it could be killed mid-way; progress seen: %s"
                 % (pb.JobState.Name(j.state), j.done, j.total, sorted(set(seen))[:20]))
            return 3
        time.sleep(0.002)
    report(False, "the rotation reaches %d%% within 120 s" % (a.lo * 100),
           "progress seen: %s" % sorted(set(seen))[:20])
    return 1


def cmd_after_restart(a):
    import grpc
    pb, pb_grpc = stubs()
    deks = load_deks(a.out)
    with open(os.path.join(a.out, "killed-at")) as f:
        killed_done, total = (int(x) for x in f.read().split())
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
    stop, th, stats, lock = start_readers(readers, deks, a.callers)
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
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in th:
            t.join()
    info("job progress seen after the restart: %s" % sorted(set(progress))[:20])
    report(bool(progress) and progress[0] >= killed_done,
           "the rotation kept its progress across the SIGKILL (first seen %s, %d at the kill)"
           % (progress[0] if progress else "-", killed_done))
    report(progress == sorted(progress), "the rotation's progress never went back")
    report(final is not None and final.state == pb.JOB_STATE_DONE and final.done == final.total,
           "the rotation resumed and finished: done %s of %s (total %d at the kill)"
           % (final.done if final else "-", final.total if final else "-", total),
           "state %s, error %r" % (pb.JobState.Name(final.state) if final else "still running",
                                   final.error if final else ""))
    report(stats["wrong"] == 0 and stats["failed"] == 0 and stats["ok"] > 0,
           "%d callers during the resumed rotation: %d calls, 0 failed, every DEK the recorded one"
           % (a.callers, stats["ok"]),
           "%d wrong, %d failed: %s" % (stats["wrong"], stats["failed"], stats["errors"][:5]))
    return 1 if kbt_grpc.failures() else 0


def cmd_read_all(a):
    import grpc
    deks = load_deks(a.out)
    t0 = time.time()
    res = Readers(a.tenant, a.out).read_all(list(deks))
    bad = [e for e, (c, r) in res.items() if c != grpc.StatusCode.OK or r.dek != deks[e]]
    report(not bad, "%s: all %d environments return their recorded DEK (read in %.1f s)"
           % (a.label, len(deks), time.time() - t0),
           "%d differ or fail, e.g. %s" % (len(bad), [(e, str(res[e][0])) for e in bad[:5]]))
    if a.key:
        wrong = [e for e, (c, r) in res.items() if c == grpc.StatusCode.OK and r.key_id != a.key]
        report(not wrong, "%s: every one is sealed under the platform key %s" % (a.label, a.key),
               "%d are not, e.g. %s" % (len(wrong), [(e, res[e][1].key_id) for e in wrong[:5]]))
    return 1 if kbt_grpc.failures() else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plant")
    p.add_argument("--kind", choices=("rsa-public", "aes-secret"), required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--pubkey")
    p.add_argument("--value")
    p.add_argument("--token", default="keybroker")
    p.set_defaults(fn=cmd_plant)
    p = sub.add_parser("seal")
    for f in ("key", "tenant", "uid", "env", "mode", "key-id", "dek"):
        p.add_argument("--" + f, required=True)
    p.add_argument("--version", type=int, required=True)
    p.set_defaults(fn=cmd_seal)
    p = sub.add_parser("try-open")
    for f in ("db", "key", "key-id"):
        p.add_argument("--" + f, required=True)
    p.set_defaults(fn=cmd_try_open)
    for name, fn in (("populate", cmd_populate), ("readers", cmd_readers),
                     ("after-restart", cmd_after_restart), ("read-all", cmd_read_all)):
        p = sub.add_parser(name)
        p.add_argument("--tenant", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--count", type=int, default=2000)
        p.add_argument("--callers", type=int, default=16)
        p.add_argument("--pid", type=int, default=0)
        p.add_argument("--lo", type=float, default=0.1)
        p.add_argument("--hi", type=float, default=0.8)
        p.add_argument("--job")
        p.add_argument("--key")
        p.add_argument("--label", default="read back")
        p.set_defaults(fn=fn)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
