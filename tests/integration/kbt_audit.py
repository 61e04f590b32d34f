#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""kbt_audit.py: an independent check of the audit log's hash chain and
signed checkpoints, in Python, from the encoding common/kb_audit.h documents.

Used by test-crash.py on the audit database left by a SIGKILL (a copy of
keybroker-audit.db and its -wal, or the PostgreSQL database itself: its
server outlives the broker), and as a command line:

  kbt_audit.py verify-db AUDIT_DB --key PEM
      Verify every event (seq 1, 2, ... with no gap; hash(n) =
      SHA-256(hash(n-1) || encoding(n)), hash(0) = 32 zero bytes) and every
      checkpoint (its head hash is its event's hash, its prev_signature the
      previous checkpoint's signature, and its RSASSA-PKCS1-v1_5 SHA-256
      signature verifies with the audit public key). Prints one line; exits
      0 when the log verifies, 1 when not.

The database is opened read-only (mode=ro): pass a copy when the broker
that wrote it is gone and its WAL should be replayed without touching it.
AUDIT_DB may also be a postgresql:// URI (read through psql).
"""
import argparse
import hashlib
import sqlite3
import struct
import subprocess
import sys

ZERO = bytes(32)


def event_encoding(seq, time_us, fields):
    """kbev1, then seq, time_us (decimal) and the ten text fields (actor,
    role, peer, method, tenant_id, environment, key_id, result, reason,
    request_id), each as a 4-byte big-endian length and its bytes."""
    out = [b"kbev1"]
    for f in [str(seq).encode(), str(time_us).encode()] + list(fields):
        if isinstance(f, str):
            f = f.encode()
        f = f or b""
        out.append(struct.pack(">I", len(f)))
        out.append(f)
    return b"".join(out)


def event_hash(prev, seq, time_us, fields):
    return hashlib.sha256(prev + event_encoding(seq, time_us, fields)).digest()


def checkpoint_data(seq, head_hash, time_us, prev_sig):
    """kbcp1 || seq (8 BE) || head_hash (32) || time_us (8 BE) ||
    prev_signature length (4 BE) || prev_signature."""
    return (b"kbcp1" + struct.pack(">Q", seq) + head_hash +
            struct.pack(">Q", time_us & 0xFFFFFFFFFFFFFFFF) +
            struct.pack(">I", len(prev_sig)) + prev_sig)


def load_public_key(pem):
    from cryptography.hazmat.primitives import serialization
    if isinstance(pem, str):
        pem = pem.encode()
    return serialization.load_pem_public_key(pem)


def signature_ok(pub, sig, data):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    try:
        pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except InvalidSignature:
        return False


class Result:
    def __init__(self):
        self.ok = True
        self.reason = ""
        self.events = 0
        self.last_seq = 0
        self.checkpoints = 0
        self.covered_seq = 0
        # State changes whose "started" event has no outcome after it:
        # followed by a broker.start (cut short by a stop or a kill), or not
        # (still running, or the broker was killed after it).
        self.interrupted = 0
        self.open = []

    def fail(self, why):
        if self.ok:
            self.ok = False
            self.reason = why

    def __str__(self):
        s = "%d events (last seq %d), %d checkpoints (signed up to seq %d)" % (
            self.events, self.last_seq, self.checkpoints, self.covered_seq)
        if self.interrupted or self.open:
            s += "; state changes started without an outcome: %d cut short by a " \
                 "restart, %d open" % (self.interrupted, len(self.open))
        return s if self.ok else s + ": " + self.reason


def verify_rows(events, checkpoints, pub):
    """events: iterable of (seq, time_us, actor, role, peer, method, tenant,
    env, key_id, result, reason, request_id, hash) in seq order;
    checkpoints: (seq, head_hash, time_us, prev_signature, signature) in seq
    order. Returns a Result."""
    r = Result()
    prev = ZERO
    hashes = {}
    want = 1
    started = {}  # (request_id, method) -> seq
    for row in events:
        seq, time_us, fields, stored = row[0], row[1], row[2:12], row[12]
        role, method, result, rid = fields[1], fields[3], fields[7], fields[9]
        if result in (b"started", "started"):
            started[(rid, method)] = seq
        elif (rid, method) in started:
            del started[(rid, method)]
        elif method in (b"broker.start", "broker.start") and role in (b"system", "system"):
            r.interrupted += len(started)
            started = {}
        r.events += 1
        if seq != want:
            r.fail("event seq %d where %d was expected (%s)" % (
                seq, want, "a gap" if seq > want else "out of order"))
            return r
        h = event_hash(prev, seq, time_us, fields)
        if bytes(stored) != h:
            r.fail("event %d: stored hash %s, recomputed %s" % (
                seq, bytes(stored).hex()[:16], h.hex()[:16]))
            return r
        hashes[seq] = h
        prev = h
        want = seq + 1
        r.last_seq = seq
    r.open = sorted(started.values())
    prev_sig = b""
    last_cp = 0
    for seq, head, time_us, psig, sig in checkpoints:
        r.checkpoints += 1
        head, psig, sig = bytes(head), bytes(psig), bytes(sig)
        if seq <= last_cp:
            r.fail("checkpoint %d is not after checkpoint %d" % (seq, last_cp))
            return r
        if seq not in hashes:
            r.fail("checkpoint %d covers an event that is not in the log "
                   "(last event %d)" % (seq, r.last_seq))
            return r
        if head != hashes[seq]:
            r.fail("checkpoint %d: head hash is not event %d's hash" % (seq, seq))
            return r
        if psig != prev_sig:
            r.fail("checkpoint %d: prev_signature is not checkpoint %d's "
                   "signature" % (seq, last_cp))
            return r
        if pub is not None and not signature_ok(pub, sig, checkpoint_data(
                seq, head, time_us, psig)):
            r.fail("checkpoint %d: the signature does not verify with the "
                   "audit key" % seq)
            return r
        prev_sig = sig
        last_cp = seq
        r.covered_seq = seq
    return r


def verify_db(path, pub):
    """Verify the audit database at path (opened read-only)."""
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
    con.text_factory = bytes
    try:
        ev = con.execute(
            "SELECT seq, time_us, actor, role, peer, method, tenant_id, "
            "environment, key_id, result, reason, request_id, hash "
            "FROM events ORDER BY seq")
        cps = con.execute(
            "SELECT seq, head_hash, time_us, prev_signature, signature "
            "FROM checkpoints ORDER BY seq").fetchall()
        return verify_rows(ev, cps, pub)
    finally:
        con.close()


def is_pg(target):
    return target.startswith(("postgresql://", "postgres://"))


def psql_rows(uri, sql):
    """The rows of one query through psql, each a list of text fields."""
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-R", "\x1e",
                        "-v", "ON_ERROR_STOP=1", "-d", uri, "-c", sql],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError("psql: %s" % p.stderr.strip()[:500])
    return [r.lstrip("\n").split("\x1f") for r in p.stdout.rstrip("\n").split("\x1e")
            if r.strip("\n")]


def verify_pg(uri, pub):
    """Verify the audit log in the PostgreSQL database at uri. The events
    are read first; only the checkpoints up to the last event read count,
    so a broker appending meanwhile cannot make a checkpoint look orphaned."""
    ev = [[int(r[0]), int(r[1])] + r[2:12] + [bytes.fromhex(r[12])] for r in psql_rows(
        uri, "SELECT seq, time_us, actor, role, peer, method, tenant_id, environment, "
        "key_id, result, reason, request_id, encode(hash, 'hex') FROM events ORDER BY seq")]
    last = ev[-1][0] if ev else 0
    cps = [(int(r[0]), bytes.fromhex(r[1]), int(r[2]), bytes.fromhex(r[3]), bytes.fromhex(r[4]))
           for r in psql_rows(
               uri, "SELECT seq, encode(head_hash, 'hex'), time_us, encode(prev_signature, 'hex'), "
               "encode(signature, 'hex') FROM checkpoints WHERE seq <= %d ORDER BY seq" % last)]
    return verify_rows(ev, cps, pub)


def verify(target, pub):
    """verify_pg for a postgresql:// URI, else verify_db."""
    return verify_pg(target, pub) if is_pg(target) else verify_db(target, pub)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("verify-db")
    p.add_argument("db")
    p.add_argument("--key", help="the audit public key, PEM (else no signature check)")
    a = ap.parse_args()
    pub = None
    if a.key:
        with open(a.key, "rb") as f:
            pub = load_public_key(f.read())
    r = verify(a.db, pub)
    print(("verified: " if r.ok else "FAILED: ") + str(r))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
