#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-token-faults.sh: keybrokerd and a failing token (issue 6, "Token faults").
#
# The broker loads build/tests/mock/libkbmockp11.so (tests/mock/mock_p11.c), a
# PKCS#11 module that forwards to SoftHSMv2 and injects faults named in a
# control file: `removed` (CKR_DEVICE_REMOVED, no token in the slot list, the
# token's sessions and login gone), `session-invalid` (a token reset: the open
# sessions become CKR_SESSION_HANDLE_INVALID), `pin-locked` (C_Login answers
# CKR_PIN_LOCKED), `hang-ms N` (a slow token).
#
#  1. Refusals to start, each with a message that says why: a wrong PIN
#     (CKR_PIN_INCORRECT), a missing module (its path), a file that is not a
#     module, a module that fails to load, a token absent at start, a token
#     URI matching nothing, a locked PIN (CKR_PIN_LOCKED).
#  2. The token removed under a running broker: health NOT_SERVING, GetDataKey
#     and admin calls that need the token fail UNAVAILABLE within a bound (also
#     16 at once), calls that need only the database still answer, the broker
#     stays up, the failures are audited.
#  3. The token back: SERVING again without a restart (a new C_Login), the same
#     DEK as before, nothing stored changed during the fault.
#  4. A token reset (`session-invalid`) before each kind of token call: at most
#     one failure, then the calls succeed on fresh, logged-in sessions.
#  5. The token back with its PIN locked: NOT_SERVING, calls UNAVAILABLE naming
#     CKR_PIN_LOCKED; unlocked: serving again.
#  6. A slow token: calls slower but right; a client deadline shorter than the
#     token is DEADLINE_EXCEEDED; with 40 calls stuck behind a hung token
#     (more than the workers), health still answers NOT_SERVING within 2 s;
#     the broker serves again afterwards.
#  7. A token that cannot make an object for a moment (CKR_GENERAL_ERROR,
#     as SoftHSMv2 answers while another process writes its directory): a
#     key pair and the audit key are made after 2 and 3 failures; a token
#     that keeps failing is UNAVAILABLE naming the call, with nothing stored;
#     after a token reset two failed logins are tried again.
#  Then the database passes PRAGMA integrity_check and a restart serves the
#  same DEKs.
# Run: bash tests/integration/test-token-faults.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
# shellcheck disable=SC2317 # functions handed to check run indirectly
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

MOCK=$KB_BUILD/tests/mock/libkbmockp11.so
# A call that needs a failing token must be refused within this many seconds.
FAST_S=5
# After the token is back, the broker must serve again within this many.
RECOVER_S=10

if [[ ! -f $MOCK ]]; then
	kbt_fail "the mock PKCS#11 module $MOCK exists" "build it: cmake --build build"
	kbt_done
fi

# ---- helpers ----

# p11_fault LINE...: the mock's control file says LINE... from the next token
# call on (a new file renamed over the old: the mock sees every write).
p11_fault() {
	printf '%s\n' "$@" >"$KB_MOCK_CONTROL.tmp" && mv -f "$KB_MOCK_CONTROL.tmp" "$KB_MOCK_CONTROL"
}

# p11_clear: no fault; calls pass through to SoftHSMv2.
p11_clear() { rm -f "$KB_MOCK_CONTROL"; }

# conf_with FILE KEY=VALUE...: a configuration like $KBT_CONF with these
# settings on top, written to FILE.
conf_with() {
	local f=$1
	shift
	KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "${KBT_CONF_SETTINGS[@]}" "$@" >"$f"
}

# health_is WANT: `kbctl health` prints WANT (exit 0 for SERVING, 1 otherwise).
health_is() {
	local want=$1 rc=1
	[[ $want == SERVING ]] && rc=0
	kb_admin --timeout 5 health
	[[ $KBT_RC == "$rc" ]] && grep -qx "$want" "$KBT_OUT"
}

# wait_health WANT SECONDS: poll until health is WANT; $KBT_MS the time taken.
wait_health() {
	local want=$1 max=$2 t0
	t0=$(date +%s%N)
	while :; do
		health_is "$want" && break
		if (($(date +%s%N) - t0 > max * 1000000000)); then
			KBT_MS=$((($(date +%s%N) - t0) / 1000000))
			return 1
		fi
		sleep 0.2
	done
	KBT_MS=$((($(date +%s%N) - t0) / 1000000))
}

# broker_alive DESC: the broker started by kbt_start is still the same process.
broker_alive() {
	if [[ -n $KBT_PID ]] && kill -0 "$KBT_PID" 2>/dev/null && [[ $KBT_PID == "$broker_pid" ]]; then
		kbt_pass "$1 (pid $KBT_PID)"
	else
		kbt_fail "$1" "the broker (pid $broker_pid) is gone" "$(kbt_print_log)"
	fi
}

# dek_of TENANT ENV: the DEK (base64) GetDataKey returns now, or "" on failure.
dek_of() {
	kb_svc "$1" "$2" datakey get "$1" "$2" --json && json 'd["dek"]'
}

# logins: how many successful C_Login the mock has seen so far.
logins() { grep -c '^C_Login CKR_OK' "$KB_MOCK_LOG" 2>/dev/null || true; }

kbt_setup "pkcs11_module=$MOCK"
export KB_MOCK_CONTROL=$KBT_DIR/p11-control
export KB_MOCK_LOG=$KBT_DIR/p11-calls.log
kbt_secret_file "$KBT_DIR/pw" 'a long passphrase'

kbt_section "1. refusals to start"
(umask 077 && printf '%s\n' 'not-the-pin-0000' >"$KBT_DIR/wrong-pin")
conf_with "$KBT_DIR/wrong-pin.conf" "pin_file=$KBT_DIR/wrong-pin"
kbt_expect_no_start "a wrong PIN is refused, naming CKR_PIN_INCORRECT" \
	"$KBT_DIR/wrong-pin.conf" "C_Login" "CKR_PIN_INCORRECT"

conf_with "$KBT_DIR/no-module.conf" "pkcs11_module=$KBT_DIR/lib/no-such-pkcs11.so"
kbt_expect_no_start "a missing PKCS#11 module is refused, naming its path" \
	"$KBT_DIR/no-module.conf" "$KBT_DIR/lib/no-such-pkcs11.so" "no such file"

printf 'not a shared library\n' >"$KBT_DIR/not-a-module.so"
conf_with "$KBT_DIR/not-module.conf" "pkcs11_module=$KBT_DIR/not-a-module.so"
kbt_expect_no_start "a file that is not a PKCS#11 module is refused, naming it" \
	"$KBT_DIR/not-module.conf" "$KBT_DIR/not-a-module.so"

KB_MOCK_REAL_MODULE=$KBT_DIR/lib/no-such-softhsm.so kbt_expect_no_start \
	"a module that cannot be loaded (the mock without its real module) is refused, naming it" \
	"$KBT_CONF" "cannot load PKCS#11 module $MOCK" "C_GetFunction"

p11_fault removed
kbt_expect_no_start "a token absent at start is refused, saying no token matches" \
	"$KBT_CONF" "pkcs11:token=keybroker" "matches no token"
p11_clear

conf_with "$KBT_DIR/other-uri.conf" "token_uri=pkcs11:token=no-such-token"
kbt_expect_no_start "a token URI that matches nothing is refused, naming it" \
	"$KBT_DIR/other-uri.conf" "no-such-token" "matches no token"

p11_fault pin-locked
kbt_expect_no_start "a locked PIN is refused, naming CKR_PIN_LOCKED" \
	"$KBT_CONF" "C_Login" "CKR_PIN_LOCKED"
p11_clear

kbt_section "the same configuration starts once the token is fine"
kbt_start || kbt_done
broker_pid=$KBT_PID
expect_ok kb_admin tenants create acme --name "Acme Corp"
expect_ok kb_admin envs create acme prod
expect_ok kb_admin envs create acme dev
dek_prod=$(dek_of acme prod)
dek_dev=$(dek_of acme dev)
check "GetDataKey answers a DEK for acme/prod and acme/dev" test -n "$dek_prod" -a -n "$dek_dev"
kb_admin envs list acme --json
envs_before=$(cat "$KBT_OUT")
kb_admin tenants list --json
tenants_before=$(cat "$KBT_OUT")
check "health is SERVING" health_is SERVING

kbt_section "2. the token removed while the broker runs"
logins_before=$(logins)
p11_fault removed
timed health_is NOT_SERVING
check "kbctl health exits 1 and prints NOT_SERVING" test "$KBT_RC" = 1 -a "$(cat "$KBT_OUT")" = NOT_SERVING
check "  ... within ${FAST_S} s (${KBT_MS} ms)" test "$KBT_MS" -le $((FAST_S * 1000))
expect_fail_within "$FAST_S" UNAVAILABLE "token|CKR_" kb_svc acme prod datakey get acme prod
expect_fail_within "$FAST_S" UNAVAILABLE "token|CKR_" kb_svc acme dev datakey get acme dev
expect_fail_within "$FAST_S" UNAVAILABLE "token|CKR_" kb_admin envs create acme staging
expect_fail_within "$FAST_S" UNAVAILABLE "token|CKR_" kb_admin keys generate acme \
	--out "$KBT_DIR/k1.pfx" --password-file "$KBT_DIR/pw"
expect_fail_within "$FAST_S" UNAVAILABLE "token|CKR_" kb_admin byok kek acme

# Many at once: none waits for another's token call.
t0=$(date +%s%N)
pids=()
for ((n = 0; n < 16; n++)); do
	KB_CERT=$KBT_PKI/service-acme-prod.crt KB_KEY=$KBT_PKI/service-acme-prod.key \
		timeout -k 5 30 "$KB_BUILD/kbctl" datakey get acme prod \
		</dev/null >/dev/null 2>"$KBT_DIR/many.$n" &
	pids+=($!)
done
bad=0
for ((n = 0; n < 16; n++)); do
	wait "${pids[n]}"
	rc=$?
	if ((rc != 1)) || ! grep -q UNAVAILABLE "$KBT_DIR/many.$n"; then
		bad=$((bad + 1))
		echo "     | call $n: exit $rc: $(head -c 300 "$KBT_DIR/many.$n")"
	fi
done
ms=$((($(date +%s%N) - t0) / 1000000))
check "16 GetDataKey at once: all UNAVAILABLE" test "$bad" = 0
check "  ... all answered within ${FAST_S} s (${ms} ms)" test "$ms" -le $((FAST_S * 1000))

# What needs only the database still answers.
expect_ok kb_admin envs list acme --json
check_eq "envs list answers during the fault, unchanged" "$(cat "$KBT_OUT")" "$envs_before"
expect_ok kb_admin tenants show acme
check "health still NOT_SERVING after the failed calls" health_is NOT_SERVING
broker_alive "the broker stays up while the token is gone"

kb_rpc ListEvents '{"filter": {"method": "GetDataKey", "result": "error"}, "page_size": 1000}'
check_json "the failed GetDataKey calls are in the audit log, with the reason" \
	'len([e for e in d.get("events", []) if "CKR_" in e.get("reason", "") or "token" in e.get("reason", "")]) >= 18'

kbt_section "3. the token comes back: the broker recovers without a restart"
p11_clear
if wait_health SERVING "$RECOVER_S"; then
	kbt_pass "health is SERVING again after ${KBT_MS} ms (bound ${RECOVER_S} s)"
else
	kbt_fail "health is SERVING again within ${RECOVER_S} s" "$(kbt_last)" "$(kbt_print_log)"
fi
broker_alive "the same broker process serves (no restart)"
check "the broker logged in to the token again (mock: C_Login after the fault)" \
	test "$(logins)" -gt "$logins_before"
check_eq "GetDataKey acme/prod: the same DEK as before the fault" "$(dek_of acme prod)" "$dek_prod"
check_eq "GetDataKey acme/dev: the same DEK as before the fault" "$(dek_of acme dev)" "$dek_dev"
kb_admin envs list acme --json
check_eq "the environment list is what it was before the fault (no staging)" \
	"$(cat "$KBT_OUT")" "$envs_before"
kb_admin tenants list --json
check_eq "the tenant list is what it was before the fault" "$(cat "$KBT_OUT")" "$tenants_before"
expect_fail NOT_FOUND kb_admin envs show acme staging
expect_ok kb_admin envs create acme staging
check "the environment made after the fault serves a DEK" test -n "$(dek_of acme staging)"
dek_staging=$(dek_of acme staging)

kbt_section "4. a token reset (session-invalid) before each kind of token call"
# reset_then DESC CMD...: the open sessions become invalid (a token reset),
# then CMD runs, twice if it fails: it must succeed with at most one failure.
reset_then() {
	local desc=$1 fails=0 first=
	shift
	p11_fault session-invalid
	if ! "$@"; then
		fails=1
		first=$(kbt_last)
		"$@"
	fi
	if [[ $KBT_RC == 0 ]]; then
		kbt_pass "$desc: succeeds after a token reset ($fails failure(s))"
	else
		kbt_fail "$desc: succeeds after a token reset (at most one failure)" \
			"first try: $first" "second try: $(kbt_last)"
	fi
}
resets_before=$(grep -c '^reset session-invalid' "$KB_MOCK_LOG")
logins_before=$(logins)
reset_then "GetDataKey" kb_svc acme prod datakey get acme prod --json
check_eq "  ... with the same DEK" "$(json 'd["dek"]' 2>&1)" "$dek_prod"
reset_then "kbctl health" health_is SERVING
reset_then "envs create (random + encrypt)" kb_admin envs create acme qa
reset_then "keys generate (key pair in the token)" kb_admin keys generate acme \
	--out "$KBT_DIR/k2.pfx" --password-file "$KBT_DIR/pw"
reset_then "byok kek (key pair + public key)" kb_admin byok kek acme --json
reset_then "GetDataKey of the environment made after the first fault" \
	kb_svc acme staging datakey get acme staging --json
check_eq "  ... with its DEK" "$(json 'd["dek"]' 2>&1)" "$dek_staging"
check "the mock reset the sessions each time (6 resets)" \
	test "$(($(grep -c '^reset session-invalid' "$KB_MOCK_LOG") - resets_before))" -ge 6
# A pool that kept its sessions would not log in again: one login per reset
# shows every reset reached the broker and was recovered from.
check "the broker logged in again after each reset ($(($(logins) - logins_before)) logins)" \
	test "$(($(logins) - logins_before))" -ge 6
p11_clear
check "health SERVING after the resets" health_is SERVING
broker_alive "the broker is up after the resets"

kbt_section "5. the token comes back with its PIN locked"
p11_fault removed
check "health NOT_SERVING with the token removed" health_is NOT_SERVING
p11_fault pin-locked
check "health NOT_SERVING while the PIN is locked" health_is NOT_SERVING
expect_fail_within "$FAST_S" UNAVAILABLE "CKR_PIN_LOCKED" kb_svc acme prod datakey get acme prod
expect_fail_within "$FAST_S" UNAVAILABLE "CKR_PIN_LOCKED" kb_admin envs create acme pinlocked
p11_clear
if wait_health SERVING "$RECOVER_S"; then
	kbt_pass "health SERVING again once the PIN is unlocked (${KBT_MS} ms)"
else
	kbt_fail "health SERVING again once the PIN is unlocked (within ${RECOVER_S} s)" "$(kbt_last)"
fi
check_eq "GetDataKey acme/prod: the same DEK" "$(dek_of acme prod)" "$dek_prod"
broker_alive "the broker is up after the locked PIN"

kbt_section "6. a slow token"
p11_fault "hang-ms 100"
timed dek_of acme prod >"$KBT_DIR/slow.dek"
check_eq "a slow token (100 ms a call): GetDataKey still answers the same DEK" \
	"$(cat "$KBT_DIR/slow.dek")" "$dek_prod"
kbt_pass "  ... in ${KBT_MS} ms"
p11_fault "hang-ms 1200"
expect_fail_within 3 DEADLINE_EXCEEDED "" kb_svc acme prod --timeout 1 datakey get acme prod
# A token that stops answering holds a worker per call; nothing bounds that
# wait but the caller's deadline. Health has workers of its own and bounds
# its probe (health_timeout_ms, 500 by default): with every worker stuck
# behind the token (more calls in flight than workers), it still answers
# NOT_SERVING at once.
slow_health() {
	local t0 ms
	t0=$(date +%s%N)
	kb_admin --timeout 10 health
	ms=$((($(date +%s%N) - t0) / 1000000))
	echo "health: exit $KBT_RC, $(cat "$KBT_OUT" "$KBT_ERR"), ${ms} ms"
	[[ $KBT_RC == 1 ]] && grep -qx NOT_SERVING "$KBT_OUT" && ((ms <= 2000))
}
stuck=()
for i in $(seq 1 40); do
	(KBT_OUT=$KBT_DIR/stuck.$i.out KBT_ERR=$KBT_DIR/stuck.$i.err
		kb_svc acme prod --timeout 6 datakey get acme prod) &
	stuck+=($!)
done
sleep 1
check "health answers NOT_SERVING within 2 s while 40 calls wait on a hung token (1.2 s a call)" slow_health
check "  ... and again (the probe still waits on the token)" slow_health
if grep -q 'health: NOT_SERVING' "$KBT_LOG"; then
	kbt_pass "the broker logged the change to NOT_SERVING"
else
	kbt_fail "the broker logged the change to NOT_SERVING" "$(tail -5 "$KBT_LOG")"
fi
p11_clear
wait "${stuck[@]}" 2>/dev/null
if wait_health SERVING 20; then
	kbt_pass "health SERVING again once the token answers promptly (${KBT_MS} ms)"
else
	kbt_fail "health SERVING again once the token answers promptly (within 20 s)" "$(kbt_last)"
fi
check_eq "GetDataKey acme/prod after the slow token: the same DEK" "$(dek_of acme prod)" "$dek_prod"
broker_alive "the broker is up at the end"

kbt_section "7. a token that cannot make an object for a moment"
# SoftHSMv2 answers CKR_GENERAL_ERROR when its object file cannot be made
# at that moment (another process writing the token directory): the broker
# tries again, up to 3 times, 50 to 200 ms apart.
creates() { grep -c '^create-fail' "$KB_MOCK_LOG" 2>/dev/null || true; }
fails_before=$(creates)
p11_fault "create-fail 2"
expect_ok kb_admin keys generate acme --out "$KBT_DIR/k3.pfx" --password-file "$KBT_DIR/pw" --json
k3=$(json 'd["key"]["id"]')
check_eq "  ... after the token failed the key pair's creation twice" "$(($(creates) - fails_before))" 2
p11_fault "create-fail 3"
expect_ok kb_admin audit rotate-key
check_eq "the audit key rotated after three failed creations" "$(($(creates) - fails_before))" 5
expect_ok kb_admin keys list acme --json
nkeys=$(json 'len(d["keys"])')
p11_fault "create-fail 100"
expect_fail_within "$FAST_S" UNAVAILABLE "C_CreateObject: CKR_GENERAL_ERROR" kb_admin keys generate acme \
	--out "$KBT_DIR/k4.pfx" --password-file "$KBT_DIR/pw"
n=$(($(creates) - fails_before - 5))
check "  ... after the first try and 3 more ($n failed creations)" test "$n" -ge 4
check "  ... leaving no .pfx file behind" test ! -e "$KBT_DIR/k4.pfx"
p11_clear
expect_ok kb_admin keys list acme --json
check_json "  ... and no key stored: the keys are as before ($nkeys), $k3 among them" \
	"len(d['keys']) == $nkeys and '$k3' in [k['id'] for k in d['keys']]"
broker_alive "the broker is up after the failed creations"
# A token reset, then the new session's login fails twice the same way.
logins_before=$(logins)
p11_fault session-invalid "login-fail 2"
kb_svc acme prod datakey get acme prod --json
if [[ $KBT_RC != 0 ]]; then
	# The reset itself may cost one call (section 4); not the failed logins.
	kb_svc acme prod datakey get acme prod --json
fi
check_eq "after a reset and 2 failed logins, GetDataKey answers the same DEK" "$(json 'd["dek"]' 2>&1)" "$dek_prod"
check "  ... the broker logged in again ($(($(logins) - logins_before)) login)" test "$(($(logins) - logins_before))" -ge 1
p11_clear

kbt_section "the database after the faults"
kbt_stop
check_eq "PRAGMA integrity_check of the database" \
	"$(sqlite3 "$KBT_DIR/keybroker.db" 'PRAGMA integrity_check' 2>&1)" ok
kbt_start || kbt_done
check_eq "after a restart: GetDataKey acme/prod, the same DEK" "$(dek_of acme prod)" "$dek_prod"
check_eq "after a restart: GetDataKey acme/staging, the same DEK" "$(dek_of acme staging)" "$dek_staging"

kbt_done
