#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""kbt_grpc.py: Python grpcio helpers for the integration tests.

Stubs are generated from proto/ by grpc_tools.protoc once per test run into
$KBT_PYSTUBS (or a temporary directory). Used as a module by the Python
drivers (test-resume.py, test-rotation.py: Readers, start_readers and
Outage read many environments' DEKs while a job runs) and as a command line
by the shell tests:

  kbt_grpc.py call METHOD JSON [--file FIELD=PATH]...
      One KeyBroker call; the request is JSON (proto field names; bytes in
      base64), --file puts a file's bytes into a bytes field. Prints the
      response as JSON and exits 0, or prints "kbt_grpc: STATUS: details" on
      stderr and exits 1, like kbctl, so expect_fail works on it.
  kbt_grpc.py service-certs --ca-dir DIR --out DIR --tenant T --envs-file F
      Service certificates for many environments (16 per certificate, the
      broker's limit): DIR/svc-N.crt/.key, and DIR/index.json mapping each
      environment to its certificate's base name.
  kbt_grpc.py wait-serving --pid PID [--timeout S]
      Wait until the broker answers grpc.health.v1 Check with SERVING
      (lib.sh's kbt_start; Broker.start below is the same wait): exit 0;
      exit 3 when process PID ends first, 1 after S seconds (default 20),
      the last answer on stderr.

Connection: --addr/--ca/--cert/--key or KB_ADDR/KB_CA/KB_CERT/KB_KEY.
"""
import argparse
import base64
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc

def parallel(fn, items, width):
    """fn(item) for every item on `width` threads; returns {item: result}."""
    out = {}
    it = iter(list(items))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                try:
                    x = next(it)
                except StopIteration:
                    return
            r = fn(x)
            with lock:
                out[x] = r

    th = [threading.Thread(target=worker) for _ in range(width)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return out


# ---- the drivers' report lines (lib.sh's kbt_py_report counts them) ----

_failures = 0
_passes = 0
_out_lock = threading.Lock()


def report(ok, desc, detail=""):
    """One check: "ok   DESC", or "FAIL DESC: DETAIL", counted. Safe from
    several threads."""
    global _failures, _passes
    with _out_lock:
        if ok:
            _passes += 1
            print("ok   " + desc, flush=True)
        else:
            _failures += 1
            print("FAIL " + desc + (": " + detail if detail else ""), flush=True)


def report_known(known, bug, ok, desc, detail=""):
    """report(), except that the failure of a check tied to a known broker
    bug (an entry of `known`: {id: description}) is shown as "xfail" and not
    counted; KBT_STRICT=1 counts it."""
    if ok or os.environ.get("KBT_STRICT") == "1" or bug not in known:
        report(ok, desc, detail)
    else:
        with _out_lock:
            print("xfail %s: %s [broker bug %s, not counted: %s]"
                  % (desc, detail, bug, known[bug]), flush=True)


def info(msg):
    with _out_lock:
        print("info " + msg, flush=True)


def failures():
    """How many report() calls failed so far."""
    return _failures


def passes():
    """How many report() calls passed so far."""
    return _passes


_pb = None
_pb_grpc = None


def stubs():
    """(keybroker_pb2, keybroker_pb2_grpc), generated on first use."""
    global _pb, _pb_grpc
    if _pb is not None:
        return _pb, _pb_grpc
    here = os.path.dirname(os.path.abspath(__file__))
    proto_dir = os.environ.get("KBT_PROTO_DIR",
                               os.path.join(here, "..", "..", "proto"))
    out = os.environ.get("KBT_PYSTUBS")
    if not out:
        out = tempfile.mkdtemp(prefix="kbt-stubs.")
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, "keybroker_pb2_grpc.py")):
        from grpc_tools import protoc
        # Generate into a private directory, then rename: parallel callers
        # never import a half-written module.
        tmp = tempfile.mkdtemp(prefix=".gen.", dir=out)
        args = ["grpc_tools.protoc", "-I" + os.path.abspath(proto_dir),
                "--python_out=" + tmp, "--grpc_python_out=" + tmp,
                os.path.join(os.path.abspath(proto_dir), "keybroker.proto")]
        if protoc.main(args) != 0:
            raise SystemExit("grpc_tools.protoc failed on " + proto_dir)
        for f in ("keybroker_pb2.py", "keybroker_pb2_grpc.py"):
            os.replace(os.path.join(tmp, f), os.path.join(out, f))
        os.rmdir(tmp)
    sys.path.insert(0, out)
    import keybroker_pb2 as pb
    import keybroker_pb2_grpc as pb_grpc
    _pb, _pb_grpc = pb, pb_grpc
    return pb, pb_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel(addr=None, ca=None, cert=None, key=None, options=None):
    """A secure channel with a client certificate (defaults from KB_*);
    options: gRPC channel arguments, e.g. FAST_RECONNECT."""
    addr = addr or os.environ.get("KB_ADDR", "127.0.0.1:7443")
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca or os.environ["KB_CA"]),
        private_key=read(key or os.environ["KB_KEY"]),
        certificate_chain=read(cert or os.environ["KB_CERT"]))
    return grpc.secure_channel(addr, creds, options=options)


# Channel arguments for a broker that is killed and restarted: reconnect
# within 0.1 to 0.5 s instead of gRPC's back-off of up to 120 s. Not
# grpc.min_reconnect_backoff_ms: gRPC core also takes it as the minimum
# connect timeout (20 s by default), and at 100 ms a TLS handshake with a
# busy broker times out ("connection attempt timed out before receiving
# SETTINGS frame").
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100),
                  ("grpc.max_reconnect_backoff_ms", 500)]


# ---- starting a test broker (lib.sh's kbt_start and Broker share this) ----

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def _pid_alive(pid):
    """Process pid runs (a zombie, ended but not reaped, does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_serving(alive, timeout, addr=None, ca=None, cert=None, key=None):
    """Wait until the broker at addr answers the health check SERVING.
    alive() says whether its process still runs. Returns (True, seconds),
    or (False, why) when it ended or did not serve within timeout."""
    t0 = time.time()
    last = "no answer yet"
    while time.time() - t0 < timeout:
        if not alive():
            return False, "the broker process ended (last answer: %s)" % last
        # A fresh channel for each try: a channel whose first connection
        # was refused may wait seconds before its next attempt.
        with channel(addr, ca, cert, key) as ch:
            fn = ch.unary_unary(HEALTH_CHECK)
            code, r = status_of(lambda: fn(b"", timeout=2))
        if code == grpc.StatusCode.OK and r == SERVING:
            return True, time.time() - t0
        last = "%s: %s" % (code.name, r if code != grpc.StatusCode.OK else
                           "status %r" % r)
        time.sleep(0.05)
    return False, "not SERVING within %g s (last answer: %s)" % (timeout, last)


class Broker:
    """One test broker process: BIN --config CONF [ARGS], its output
    appended to LOG (with a "=== start" line, as kbt_start writes), its pid
    in pidfile; ready when it answers health SERVING (wait_serving)."""

    def __init__(self, bin, conf, log, pidfile, addr, ca, cert, key, args=()):
        self.bin, self.conf, self.log, self.pidfile = bin, conf, log, pidfile
        self.addr, self.ca, self.cert, self.key = addr, ca, cert, key
        self.args = list(args)
        self.proc = None

    def start(self, timeout=30):
        """Start and wait until it serves; seconds taken, or None."""
        with open(self.log, "ab") as logf:
            logf.write(("=== start %s --config %s %s (kbt_grpc.Broker)\n"
                        % (os.path.basename(self.bin), self.conf,
                           " ".join(self.args))).encode())
            self.proc = subprocess.Popen([self.bin, "--config", self.conf] + self.args,
                                         stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT)
        with open(self.pidfile, "w") as f:
            f.write("%d\n" % self.proc.pid)
        ok, r = wait_serving(lambda: self.proc.poll() is None, timeout,
                             self.addr, self.ca, self.cert, self.key)
        return r if ok else None

    def kill(self):
        """SIGKILL and reap. Returns the exit status if the broker had
        already ended by itself (a crash of its own), else None."""
        if self.proc is None:
            return None
        own = self.proc.poll()
        if own is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None
        with open(self.log, "ab") as logf:
            logf.write(b"=== SIGKILL (kbt_grpc.Broker)\n" if own is None else
                       b"=== the broker had ended by itself (status %d)\n" % own)
        return own

    def stop(self, timeout=20):
        """SIGTERM; the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.proc = None
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def status_of(fn):
    """Run fn(); return (grpc.StatusCode, details) of its RpcError, or (OK, result)."""
    try:
        return grpc.StatusCode.OK, fn()
    except grpc.RpcError as e:
        return e.code(), e.details()


def call_retry(fn, req, tries=50):
    """A call, retried while the broker says RESOURCE_EXHAUSTED (its queue
    is full) or UNAVAILABLE; returns (code, result-or-details)."""
    for i in range(tries):
        code, r = status_of(lambda: fn(req, timeout=60))
        if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            return code, r
        time.sleep(0.05 * (i + 1))
    return code, r


# ---- many environments' DEKs, read while a job runs ----

class Readers:
    """Service stubs for many environments, from DIR/certs/index.json (made
    by service_certs); options: channel arguments (FAST_RECONNECT)."""

    def __init__(self, tenant, out_dir, options=None):
        pb, pb_grpc = stubs()
        self.pb = pb
        self.tenant = tenant
        with open(os.path.join(out_dir, "certs", "index.json")) as f:
            self.index = json.load(f)
        self.stubs = {}
        self.channels = {}
        self.last_call = {}  # certificate -> start of its channel's last call
        self.last_ok = {}  # certificate -> end of its channel's last OK call
        self.lock = threading.Lock()
        for base in sorted(set(self.index.values())):
            ch = channel(cert=base + ".crt", key=base + ".key", options=options)
            self.channels[base] = ch
            self.stubs[base] = pb_grpc.KeyBrokerStub(ch)

    def connect_all(self, timeout=30, width=16):
        """Connect every channel now (TLS handshakes up front); returns the
        certificates whose channel did not connect."""
        def one(base):
            try:
                grpc.channel_ready_future(self.channels[base]).result(timeout=timeout)
                return True
            except grpc.FutureTimeoutError:
                return False
        res = parallel(one, list(self.channels), width)
        return sorted(b for b, ok in res.items() if not ok)

    def since(self, env, t0):
        """Note a call on env's channel starting at t0; returns when the
        channel's previous call started (None: it is the first)."""
        with self.lock:
            prev = self.last_call.get(self.index[env])
            self.last_call[self.index[env]] = t0
            return prev

    def ok_since(self, env):
        """When a call on env's channel last succeeded (None: never)."""
        with self.lock:
            return self.last_ok.get(self.index[env])

    def ok(self, env, t1):
        """Note a call on env's channel that succeeded at t1."""
        with self.lock:
            self.last_ok[self.index[env]] = t1

    def get(self, env, timeout=30, wait_for_ready=None):
        stub = self.stubs[self.index[env]]
        req = self.pb.GetDataKeyRequest(tenant_id=self.tenant, environment=env)
        return status_of(lambda: stub.GetDataKey(req, timeout=timeout,
                                                 wait_for_ready=wait_for_ready))

    def read_all(self, envs, width=16):
        """Every environment's GetDataKey once: {env: (code, response)}."""
        def one(e):
            for i in range(20):
                code, r = self.get(e)
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return code, r
                time.sleep(0.05 * (i + 1))
            return code, r
        return parallel(one, envs, width)


def save_deks(out_dir, deks):
    """{env: DEK bytes} into DIR/deks.json (base64)."""
    with open(os.path.join(out_dir, "deks.json"), "w") as f:
        json.dump({e: base64.b64encode(d).decode() for e, d in deks.items()}, f)


def load_deks(out_dir):
    """{env: DEK bytes} from DIR/deks.json."""
    with open(os.path.join(out_dir, "deks.json")) as f:
        return {e: base64.b64decode(d) for e, d in json.load(f).items()}


class Outage:
    """When the broker was down (killed until it answered again), so that a
    reader can tell a call that failed because of that from one that failed
    while the broker was up."""

    def __init__(self):
        self.lock = threading.Lock()
        self.down_at = None
        self.up_at = None

    def down(self):
        with self.lock:
            self.down_at = time.time()
            self.up_at = None

    def up(self, t):
        with self.lock:
            self.up_at = t

    def covers(self, t0, t1):
        """A call from t0 to t1 (time.time()) overlapped the outage."""
        with self.lock:
            return (self.down_at is not None and t1 >= self.down_at
                    and (self.up_at is None or t0 < self.up_at))

    def stale(self, last_ok):
        """A channel whose last successful call ended at last_ok (None:
        never) has not shown a live connection since the broker came back:
        its connection may still be the killed broker's, which a client
        only finds closed when a call on it fails (UNAVAILABLE "Socket
        closed", "Broken pipe", "Connection reset"; seen twice in a row on
        one channel)."""
        with self.lock:
            return (self.down_at is not None
                    and (last_ok is None or self.up_at is None or last_ok < self.up_at))


def reader_loop(readers, deks, stop, stats, lock, outage=None):
    """Read random environments' DEKs until stop; count per outcome: ok (the
    DEK recorded), wrong (another DEK), failed, and, with an Outage, outage:
    failed while the broker was down, or UNAVAILABLE on a channel with no
    successful call since it came back (the killed broker's connection). Without
    one, a failure once stop is set ends the loop uncounted (the broker was
    just killed)."""
    envs = list(deks)
    while not stop.is_set():
        e = random.choice(envs)
        t0 = time.time()
        readers.since(e, t0)
        last_ok = readers.ok_since(e)
        # A call waits for its channel to be ready instead of failing at
        # once on a connection attempt that did not work out (seen under
        # load: "failed to connect to all addresses" while the broker was
        # up); with an outage expected, that also waits for the broker to
        # come back. The broker's answers are what is counted.
        code, r = readers.get(e, timeout=10, wait_for_ready=True)
        t1 = time.time()
        with lock:
            if outage is None and stop.is_set() and code != grpc.StatusCode.OK:
                return  # the broker was just killed: not the broker's fault
            if code == grpc.StatusCode.OK:
                readers.ok(e, t1)
            if code == grpc.StatusCode.OK and r.dek == deks[e]:
                stats["ok"] += 1
                stats["keys"][r.key_id] = stats["keys"].get(r.key_id, 0) + 1
            elif code == grpc.StatusCode.OK:
                stats["wrong"] += 1
                stats["errors"].append("%s: another DEK" % e)
            elif outage is not None and (outage.covers(t0, t1) or (
                    code == grpc.StatusCode.UNAVAILABLE and outage.stale(last_ok))):
                stats["outage"] += 1
                stats["outage_errors"].append("%s: %s %s" % (e, code, r))
            else:
                stats["failed"] += 1
                stats["errors"].append("%s: %s %s" % (e, code, r))


def start_readers(readers, deks, n=4, outage=None):
    """n reader_loop threads; returns (stop event, threads, stats, lock)."""
    stop = threading.Event()
    stats = {"ok": 0, "wrong": 0, "failed": 0, "outage": 0, "errors": [],
             "outage_errors": [], "keys": {}}
    lock = threading.Lock()
    th = [threading.Thread(target=reader_loop, args=(readers, deks, stop, stats, lock, outage))
          for _ in range(n)]
    for t in th:
        t.start()
    return stop, th, stats, lock


def clock_move(path, secs):
    """Move keybrokerd-testclock's clock `secs` further (its offset file, as
    lib.sh's kbt_clock_set writes it: write, then rename, so the broker never
    reads half a number). Returns the new offset in seconds."""
    off = 0
    try:
        with open(path) as f:
            off = int(f.read().strip() or 0)
    except FileNotFoundError:
        pass
    off += secs
    with open(path + ".tmp", "w") as f:
        f.write("%d\n" % off)
    os.replace(path + ".tmp", path)
    return off


def mint_cert(ca_dir, base, subject, uris=(), days=60, key=None):
    """The tests' one certificate minter (python3-cryptography): a client
    certificate from the development CA in ca_dir, with subject `subject`
    ((attribute, value) pairs, attribute "OU" or "CN"; any may be left out,
    for certificates pki.sh refuses to make), SAN URIs `uris`, valid from a
    day ago for `days` (never past the CA), with `key` (an EC private key
    to reuse) or a new P-256 key. Writes base.crt and base.key (0600) and
    returns base."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    oids = {"OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}
    ca_cert = x509.load_pem_x509_certificate(read(os.path.join(ca_dir, "ca.crt")))
    ca_key = serialization.load_pem_private_key(
        read(os.path.join(ca_dir, "ca.key")), password=None)
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after.replace(
        tzinfo=datetime.timezone.utc) - datetime.timedelta(days=1))
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(oids[k], v) for k, v in subject]))
         .issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
         .add_extension(x509.KeyUsage(True, False, False, False, False, False,
                                      False, False, False), True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), False)
    cert = b.sign(ca_key, hashes.SHA256())
    d = os.path.dirname(base)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(base + ".crt", "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(base + ".key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return base


def service_certs(ca_dir, out_dir, tenant, envs, per_cert=16, days=60):
    """Service certificates covering `envs` (per_cert names each, one key
    for all) from the development CA in ca_dir. Returns {env: base path
    without .crt}; also written to out_dir/index.json."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    os.makedirs(out_dir, exist_ok=True)
    index = {}
    for n, i in enumerate(range(0, len(envs), per_cert)):
        chunk = envs[i:i + per_cert]
        base = mint_cert(ca_dir, os.path.join(out_dir, "svc-%d" % n),
                         [("OU", "service"), ("CN", "kbt-svc-%d" % n)],
                         ["kb://env/%s/%s" % (tenant, e) for e in chunk], days, key)
        for e in chunk:
            index[e] = base
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f)
    return index


def cmd_call(a):
    from google.protobuf import json_format
    pb, pb_grpc = stubs()
    svc = pb.DESCRIPTOR.services_by_name["KeyBroker"]
    m = svc.methods_by_name.get(a.method)
    if m is None:
        print("kbt_grpc: no method %s" % a.method, file=sys.stderr)
        return 2
    req_cls = getattr(pb, m.input_type.name)
    resp_cls = getattr(pb, m.output_type.name)
    req = json_format.Parse(a.json, req_cls())
    for spec in a.file or []:
        field, path = spec.split("=", 1)
        setattr(req, field, read(path))
    with channel(a.addr, a.ca, a.cert, a.key) as ch:
        fn = ch.unary_unary("/keybroker.v1.KeyBroker/" + a.method,
                            request_serializer=req_cls.SerializeToString,
                            response_deserializer=resp_cls.FromString)
        code, r = status_of(lambda: fn(req, timeout=a.timeout))
    if code != grpc.StatusCode.OK:
        print("kbt_grpc: %s: %s" % (code.name, r), file=sys.stderr)
        return 1
    # protobuf 4.21 (Debian 12): including_default_value_fields.
    print(json_format.MessageToJson(r, preserving_proto_field_name=True,
                                    including_default_value_fields=True))
    return 0


def cmd_service_certs(a):
    with open(a.envs_file) as f:
        envs = [l.strip() for l in f if l.strip()]
    index = service_certs(a.ca_dir, a.out, a.tenant, envs)
    print("%d certificates for %d environments" % (len(set(index.values())), len(index)))
    return 0


def cmd_wait_serving(a):
    ok, r = wait_serving(lambda: _pid_alive(a.pid), a.timeout, a.addr, a.ca,
                         a.cert, a.key)
    if ok:
        return 0
    print("kbt_grpc: %s" % r, file=sys.stderr)
    return 1 if _pid_alive(a.pid) else 3


def add_conn_args(p):
    p.add_argument("--addr")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--timeout", type=float, default=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("call")
    add_conn_args(p)
    p.add_argument("method")
    p.add_argument("json")
    p.add_argument("--file", action="append", help="FIELD=PATH: a bytes field from a file")
    p.set_defaults(fn=cmd_call)
    p = sub.add_parser("service-certs")
    p.add_argument("--ca-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--envs-file", required=True)
    p.set_defaults(fn=cmd_service_certs)
    p = sub.add_parser("wait-serving")
    add_conn_args(p)
    p.add_argument("--pid", type=int, required=True)
    p.set_defaults(fn=cmd_wait_serving, timeout=20)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
