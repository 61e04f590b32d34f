#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-secrets.sh: secret hygiene of the running broker.
#
# - The PIN file: refused when group or others may read or write it (modes
#   0640, 0604, 0620; the message names the mode), accepted at 0600 and 0400.
# - Core dumps off: /proc/PID/limits "Max core file size" 0, and the process
#   is not dumpable (PR_SET_DUMPABLE 0). The dumpable flag is not in
#   /proc/PID/status; the kernel shows it through ptrace access rules: a
#   process without CAP_SYS_PTRACE and of the same uid may read a dumpable
#   process's /proc/PID/environ, not a non-dumpable one's. So, as root, the
#   broker is started once with no capabilities (setpriv) and a reader with
#   none must be refused its environ; two controls show the check sees the
#   flag (a capless sleep: readable; a capless process after
#   prctl(PR_SET_DUMPABLE, 0): refused). As another user, the broker's
#   /proc/PID files belong to root. The PIN sits in memory that is locked
#   and excluded from core dumps: a mapping with VmFlags "lo" and "dd"
#   (/proc/PID/smaps; under ASan, which makes mlock a no-op, only "dd").
# - A session with known secrets (keybrokerd-testclock, so a lock and an
#   unlock can happen too): a generated key (known password), a .pfx
#   uploaded (known password; also once with a wrong one), a .byok upload
#   (known AES transfer key), the generated key activated, environments put
#   under it, DEKs fetched, the tenant locked and unlocked with the .pfx and
#   its password. Then a binary-safe search (Python, bytes) of the broker's
#   log, keybroker.db and keybroker-audit.db with their -wal and -shm (while
#   it runs and after it stopped) and an audit export, for: each DEK (raw,
#   base64, base64url, hex), each password (UTF-8, UTF-16), the private
#   keys (each PEM body line, PKCS#8 and PKCS#1 DER, the primes and the
#   private exponent), the .pfx/.byok files themselves and the BYOK transfer
#   key, and the token PIN. None may appear. A control search finds a DEK in
#   kbctl's own output (the search works).
# - The broker's argv (/proc/PID/cmdline) and environment (/proc/PID/environ)
#   do not hold the PIN.
# Run: bash tests/integration/test-secrets.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

T=sec
HOUR=3600
kbt_setup_testclock log_level=debug
w=$KBT_DIR/work
n=$w/needles # the secrets to look for, one file each
mkdir -m 700 "$w" "$n"
PIN=$KBT_DIR/token/pin

kbt_section "the PIN file must not be readable or writable by group or others"
for mode in 0640 0604 0620; do
	chmod "$mode" "$PIN"
	kbt_expect_no_start "PIN file mode $mode: the broker refuses to start, naming the mode" \
		"$KBT_CONF" "mode 0?${mode#0}" 'pin|secret file'
done
for mode in 0400 0600; do
	chmod "$mode" "$PIN"
	if kbt_start; then
		kbt_pass "PIN file mode $mode: the broker starts"
		kbt_stop
	fi
done
chmod 0600 "$PIN"

kbt_section "core dumps are off"
# As root, the broker runs here with no capabilities (setpriv), so that a
# reader with none either is refused its /proc/PID/environ only because the
# broker is not dumpable: the kernel would refuse a capless reader a
# process with more capabilities anyway.
nocaps=()
# shellcheck disable=SC2317 # called through check
environ_readable() { "${nocaps[@]}" cat "/proc/$1/environ" >/dev/null; }
# shellcheck disable=SC2317
environ_refused() { ! "${nocaps[@]}" cat "/proc/$1/environ" >/dev/null 2>&1; }
if [[ $(id -u) == 0 ]] && command -v setpriv >/dev/null; then
	nocaps=(setpriv --bounding-set=-all --inh-caps=-all --)
	printf '#!/bin/sh\nexec %s "%s" "$@"\n' "${nocaps[*]}" "$KBT_BROKER" >"$w/broker-nocaps"
	chmod 755 "$w/broker-nocaps"
	KBT_BROKER=$w/broker-nocaps kbt_start || kbt_done
else
	kbt_start || kbt_done
fi
BPID=$KBT_PID
check "/proc/PID/limits: Max core file size is 0 (soft and hard)" \
	grep -Eq '^Max core file size +0 +0 ' "/proc/$BPID/limits"
if ((${#nocaps[@]})); then
	check "the broker runs with no capabilities here (CapEff 0)" \
		grep -Eq '^CapEff:[[:space:]]+0+$' "/proc/$BPID/status"
	# Controls: a capless dumpable process is readable, and the same after
	# prctl(PR_SET_DUMPABLE = 4, 0) is not: the check sees that flag.
	"${nocaps[@]}" sleep 60 >/dev/null 2>&1 &
	ctl=$!
	"${nocaps[@]}" "$KBT_PY" -c 'import ctypes, time
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
time.sleep(60)' >/dev/null 2>&1 &
	ctl2=$!
	sleep 0.3
	check "control: a capless reader may read a capless dumpable process's /proc/PID/environ" \
		environ_readable "$ctl"
	check "control: ... but not a capless process's that called prctl(PR_SET_DUMPABLE, 0)" \
		environ_refused "$ctl2"
	kill "$ctl" "$ctl2"
	wait "$ctl" "$ctl2" 2>/dev/null
	if "${nocaps[@]}" cat "/proc/$BPID/environ" >/dev/null 2>"$w/nocaps.err"; then
		kbt_fail "the broker is not dumpable (PR_SET_DUMPABLE 0)" \
			"a capless reader of the same uid could read /proc/$BPID/environ"
	else
		kbt_pass "the broker is not dumpable: a capless reader is refused its /proc/PID/environ ($(head -c 100 "$w/nocaps.err"))"
	fi
elif [[ $(id -u) != 0 ]]; then
	check_eq "the broker is not dumpable: its /proc/PID files belong to root, not to $(id -un)" \
		"$(stat -c %u "/proc/$BPID/environ")" 0
else
	kbt_skip "the broker is not dumpable" "no setpriv to drop capabilities"
fi
if [[ -r /proc/$BPID/smaps ]]; then
	check "memory excluded from core dumps (MADV_DONTDUMP: VmFlags dd in /proc/PID/smaps)" \
		grep -Eq '^VmFlags:.* dd( |$)' "/proc/$BPID/smaps"
	if grep -qa __asan_init "$KB_BUILD/keybrokerd"; then
		# ASan intercepts mlock() and makes it a no-op.
		kbt_skip "the PIN in locked memory (VmFlags lo dd, VmLck)" "a sanitizer build: mlock is a no-op under ASan"
	else
		check "the PIN is in memory locked (lo) and excluded from core dumps (dd): /proc/PID/smaps" \
			grep -Eq '^VmFlags:.* lo( .*)? dd|^VmFlags:.* dd( .*)? lo' "/proc/$BPID/smaps"
		check "VmLck is not 0 kB (/proc/PID/status)" \
			grep -Eq '^VmLck:[[:space:]]+[1-9][0-9]* kB' "/proc/$BPID/status"
	fi
fi
kbt_stop

kbt_start || kbt_done
BPID=$KBT_PID

kbt_section "the broker's argv and environment hold no PIN"
# The PIN file's bytes (no newline: token.sh writes none).
"$KBT_PY" - "$PIN" "/proc/$BPID/cmdline" "/proc/$BPID/environ" >"$w/pin.check" 2>&1 <<'PY'
import sys
pin = open(sys.argv[1], "rb").read().strip()
assert len(pin) >= 4, "PIN too short to search for"
for p in sys.argv[2:]:
    data = open(p, "rb").read()
    print("%s: %d bytes, PIN %s" % (p, len(data), "FOUND" if pin in data else "absent"))
PY
check "/proc/PID/cmdline does not contain the PIN" grep -q 'cmdline: .* PIN absent' "$w/pin.check"
check "/proc/PID/environ does not contain the PIN" grep -q 'environ: .* PIN absent' "$w/pin.check"
cp "$PIN" "$n/pin.pw"

kbt_section "a session with known secrets"
pw_gen="generated-key password $RANDOM$RANDOM"
pw_up="uploaded-pfx password $RANDOM$RANDOM"
pw_wrong="wrong password $RANDOM$RANDOM"
kbt_secret_file "$n/gen.pw" "$pw_gen"
kbt_secret_file "$n/up.pw" "$pw_up"
kbt_secret_file "$n/wrong.pw" "$pw_wrong"
expect_ok kb_admin tenants create "$T"

# A generated key: its .pfx opens with the known password.
expect_ok kb_admin keys generate "$T" --out "$n/gen.pfx" --password-file "$n/gen.pw" --json
KGEN=$(json 'd["key"]["id"]' 2>/dev/null)
openssl pkcs12 -in "$n/gen.pfx" -nocerts -nodes -passin "file:$n/gen.pw" 2>/dev/null |
	openssl pkey -out "$n/gen.key" 2>/dev/null
check "the generated key's private key, read from its .pfx with openssl" \
	grep -q 'BEGIN PRIVATE KEY' "$n/gen.key"

# A .pfx made here, uploaded with its password (and once with a wrong one).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$n/up.key" 2>/dev/null
openssl req -x509 -new -key "$n/up.key" -subj "/CN=secrets upload" -days 30 -out "$w/up.crt" 2>/dev/null
openssl pkcs12 -export -inkey "$n/up.key" -in "$w/up.crt" -passout "file:$n/up.pw" -out "$n/up.pfx"
expect_fail INVALID_ARGUMENT -m 'wrong password' \
	kb_admin keys upload "$T" "$n/up.pfx" --password-file "$n/wrong.pw"
expect_ok kb_admin keys upload "$T" "$n/up.pfx" --password-file "$n/up.pw" --json

# A .byok made with the openssl command line (README), its transfer key known.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$n/byok.key" 2>/dev/null
expect_ok kb_admin byok kek "$T" --json
kid=$(json 'd["kid"]' 2>/dev/null)
json 'd["public_key_pem"]' >"$w/kek.pem" 2>/dev/null
openssl rand -out "$n/aes.bin" 32
aes_hex=$(od -An -tx1 -v "$n/aes.bin" | tr -d ' \n')
openssl pkeyutl -encrypt -pubin -inkey "$w/kek.pem" -pkeyopt rsa_padding_mode:oaep \
	-pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 -in "$n/aes.bin" -out "$w/wrapped-aes.bin"
openssl pkcs8 -topk8 -nocrypt -in "$n/byok.key" -outform DER -out "$w/byok.p8"
openssl enc -id-aes256-wrap-pad -K "$aes_hex" -iv A65959A6 -in "$w/byok.p8" -out "$w/wrapped-key.bin"
ct=$(cat "$w/wrapped-aes.bin" "$w/wrapped-key.bin" | openssl base64 -A | tr '+/' '-_' | tr -d '=')
printf '{"schema_version":"1.0.0","header":{"kid":"%s","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"%s","generator":"test-secrets.sh"}\n' \
	"$kid" "$ct" >"$n/key.byok"
rm -f "$w/byok.p8"
unset aes_hex ct
expect_ok kb_admin keys upload "$T" "$n/key.byok" --json

# The generated key active; environments under it; DEKs fetched.
expect_ok kb_admin keys activate "$T" "$KGEN" --wait
for e in e1 e2 e3 e4; do
	expect_ok kb_admin envs create "$T" "$e"
done
expect_ok kb_admin envs apply-key "$T" e1
expect_ok kb_admin envs apply-key "$T" e2
for e in e1 e2 e3 e4; do
	kb_svc "$T" "$e" datakey get "$T" "$e" --json
	if [[ $KBT_RC == 0 ]]; then
		cp "$KBT_OUT" "$w/dek-$e.json"
		json 'd["dek"]' 2>/dev/null | base64 -d >"$n/$e.dek"
		check "DEK of $T/$e fetched (32 bytes)" test "$(stat -c %s "$n/$e.dek")" = 32
	else
		kbt_fail "datakey get $T $e" "$(kbt_last)"
	fi
done

# Lock and unlock with the .pfx and its password (72 h after the last key
# change; the unlock an hour after the lock).
kbt_clock_set $((73 * HOUR))
expect_fail 'INVALID_ARGUMENT|FAILED_PRECONDITION' -m 'password' \
	kb_admin tenants lock "$T" --key "$n/gen.pfx" --password-file "$n/wrong.pw" --yes
expect_ok kb_admin tenants lock "$T" --key "$n/gen.pfx" --password-file "$n/gen.pw" --yes
kbt_clock_set $((75 * HOUR))
expect_ok kb_admin tenants unlock "$T" --key "$n/gen.pfx" --password-file "$n/gen.pw"
expect_ok kb_admin envs unlock "$T" e1
expect_ok kb_admin envs unlock "$T" e2
for e in e1 e2; do
	kb_svc "$T" "$e" datakey get "$T" "$e" --json
	check_eq "$T/$e serves the same DEK after the unlock" "$(json 'd["dek"]' 2>/dev/null)" \
		"$(base64 -w0 <"$n/$e.dek")"
done

# An audit export (as the auditor).
if "$KB_BUILD/kbctl" audit export --help >/dev/null 2>&1; then
	expect_ok kb_as auditor audit export --out "$w/audit-export.jsonl"
else
	kbt_skip "kbctl audit export" "not in this kbctl: a ListEvents dump instead"
	KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto KB_CERT=$KBT_PKI/auditor.crt \
		KB_KEY=$KBT_PKI/auditor.key "$KBT_PY" - "$w/audit-export.jsonl" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
import kbt_grpc
from google.protobuf import json_format
pb, pb_grpc = kbt_grpc.stubs()
stub = pb_grpc.KeyBrokerStub(kbt_grpc.channel())
after = 0
with open(sys.argv[1], "w") as f:
    while True:
        r = stub.ListEvents(pb.ListEventsRequest(after_seq=after, page_size=1000), timeout=30)
        for ev in r.events:
            f.write(json_format.MessageToJson(ev, indent=None) + "\n")
        after = r.next_after_seq
        if not r.more:
            break
PY
fi

# The secret search (binary-safe): NEEDLE_DIR then haystacks; prints one
# line per haystack, "clean" or what was found where.
search() {
	"$KBT_PY" - "$n" "$@" <<'PY'
import base64, os, sys
from cryptography.hazmat.primitives import serialization

def b64s(b):
    s = base64.b64encode(b)
    return {s, s.rstrip(b"="), base64.urlsafe_b64encode(b).rstrip(b"=")}

def pem_lines(pem):
    return [l for l in pem.splitlines() if len(l) >= 40 and not l.startswith(b"-----")]

def int_bytes(i):
    return i.to_bytes((i.bit_length() + 7) // 8, "big")

needles = []  # (what, bytes)
d = sys.argv[1]
for name in sorted(os.listdir(d)):
    data = open(os.path.join(d, name), "rb").read()
    if name.endswith(".dek"):
        needles += [("DEK %s raw" % name, data), ("DEK %s hex" % name, data.hex().encode()),
                    ("DEK %s HEX" % name, data.hex().upper().encode())]
        needles += [("DEK %s base64" % name, v) for v in b64s(data)]
    elif name.endswith(".pw"):
        pw = data.rstrip(b"\r\n")
        needles += [("password %s" % name, pw),
                    ("password %s UTF-16LE" % name, pw.decode().encode("utf-16-le")),
                    ("password %s UTF-16BE" % name, pw.decode().encode("utf-16-be"))]
    elif name.endswith(".key"):
        k = serialization.load_pem_private_key(data, password=None)
        n = k.private_numbers()
        needles += [("private key %s PEM line" % name, l) for l in pem_lines(data)]
        for fmt, enc in (("PKCS#8", serialization.PrivateFormat.PKCS8),
                         ("PKCS#1", serialization.PrivateFormat.TraditionalOpenSSL)):
            der = k.private_bytes(serialization.Encoding.DER, enc, serialization.NoEncryption())
            needles.append(("private key %s %s DER" % (name, fmt), der))
            needles += [("private key %s %s DER base64" % (name, fmt), v) for v in b64s(der)]
        for what, v in (("p", n.p), ("q", n.q), ("d", n.d)):
            needles += [("private key %s %s" % (name, what), int_bytes(v)),
                        ("private key %s %s hex" % (name, what), int_bytes(v).hex().encode())]
    elif name.endswith((".pfx", ".byok")):
        needles.append(("key file %s" % name, data))
        needles += [("key file %s base64" % name, v) for v in b64s(data)]
        if name.endswith(".byok"):
            ct = data.split(b'"ciphertext":"')[1].split(b'"')[0]
            needles.append(("key file %s ciphertext" % name, ct))
    elif name.endswith(".bin"):
        needles += [("transfer key %s raw" % name, data), ("transfer key %s hex" % name,
                                                           data.hex().encode())]
        needles += [("transfer key %s base64" % name, v) for v in b64s(data)]
    elif name == "pin.pw":
        pass
for what, v in needles:
    assert len(v) >= 8, what
print("searching %d needles" % len(needles), file=sys.stderr)
for path in sys.argv[2:]:
    if not os.path.exists(path):
        print("%s: absent" % path)
        continue
    hay = open(path, "rb").read()
    found = ["%s at offset %d" % (what, hay.find(v)) for what, v in needles if v in hay]
    print("%s: %d bytes, %s" % (path, len(hay), "clean" if not found else
                                "FOUND " + "; ".join(found[:100])))
PY
}

kbt_section "control: the search finds a DEK where it is"
search "$w/dek-e1.json" >"$w/control.out" 2>/dev/null
check "the search finds DEK e1 in kbctl's own --json output" grep -q 'FOUND DEK e1.dek base64' "$w/control.out"
openssl pkcs8 -topk8 -nocrypt -in "$n/gen.key" -outform DER -out "$w/gen.p8" 2>/dev/null
search "$n/gen.key" "$w/gen.p8" "$n/gen.pw" >"$w/control2.out" 2>/dev/null
check "... the generated key's PEM lines in its PEM file" \
	grep -q 'gen.key: .*FOUND private key gen.key PEM line' "$w/control2.out"
check "... its PKCS#8 DER, p, q and d in its DER file" \
	bash -c "grep 'gen.p8: ' '$w/control2.out' | grep 'PKCS#8 DER at' | grep 'gen.key p at' |
		grep 'gen.key q at' | grep -q 'gen.key d at'"
check "... and its password in the password file" \
	grep -q 'gen.pw: .*FOUND password gen.pw' "$w/control2.out"
rm -f "$w/gen.p8"

kbt_section "no secret in the log, the databases or the audit export"
haystacks() {
	local f
	for f in "$KBT_LOG" "$@"; do
		printf '%s\n' "$f"
	done
}
# Snapshots while the broker runs (the -wal and -shm exist only then).
mkdir -m 700 "$w/running"
for f in keybroker.db keybroker.db-wal keybroker.db-shm keybroker-audit.db \
	keybroker-audit.db-wal keybroker-audit.db-shm; do
	[[ -e $KBT_DIR/$f ]] && cp "$KBT_DIR/$f" "$w/running/$f"
done
check "the databases' -wal files exist while the broker runs" \
	test -e "$w/running/keybroker.db-wal" -a -e "$w/running/keybroker-audit.db-wal"
kbt_stop
mapfile -t hs < <(haystacks "$w"/running/* "$KBT_DIR"/keybroker.db* "$KBT_DIR"/keybroker-audit.db* \
	"$w/audit-export.jsonl")
search "${hs[@]}" >"$w/search.out" 2>"$w/search.err"
echo "     ($(cat "$w/search.err"))"
while IFS= read -r line; do
	f=${line%%: *}
	case $line in
	*": absent") ;;
	*", clean") kbt_pass "no secret in ${f#"$KBT_DIR"/} (${line#*: })" ;;
	*) kbt_fail "no secret in ${f#"$KBT_DIR"/}" "$line" ;;
	esac
done <"$w/search.out"
check "the search looked at the log, both databases and the export" \
	test "$(grep -c ', clean\|FOUND' "$w/search.out")" -ge 6

kbt_section "the PIN is in none of them either"
"$KBT_PY" - "$PIN" "${hs[@]}" >"$w/pin-search.out" <<'PY'
import os, sys
pin = open(sys.argv[1], "rb").read().strip()
for p in sys.argv[2:]:
    if os.path.exists(p):
        print("%s: %s" % (p, "FOUND" if pin in open(p, "rb").read() else "clean"))
PY
check "the token PIN appears in no log, database or export" bash -c "! grep -q FOUND '$w/pin-search.out'"

kbt_done
