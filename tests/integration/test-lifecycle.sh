#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-lifecycle.sh: a tenant key's whole life, with the broker's clock moved
# (keybrokerd-testclock) across every boundary of DESIGN.md's Policy table.
#
# The story, through kbctl: a tenant with four environments and a service
# certificate each; key A generated and activated (--wait); applied to three
# environments (same DEK), reverted and applied again; backups. Key B:
# activation refused 60 s before the 24-hour cooldown ends (the message names
# the rule and the exact time it ends), done 5 s after it while services keep
# reading their DEKs (never a failure, always the same DEK); every
# customer environment now under B with its DEK unchanged; A available, B the
# one active key. Restore (only into the same mode and key), copy (only
# between environments under the same customer key; the target then serves
# the source's DEK, its older version stays readable), reset (new DEK,
# platform key, backups and old versions gone). Lock: refused within 72 hours
# of the last key change (an upload restarts it), with a key that is not the
# active one (key mismatch), with a wrong password; then done with B's .pfx:
# customer environments locked (FAILED_PRECONDITION "environment locked"),
# platform ones still served, B locked, A and the uploaded C deleted and gone
# from the token, keys refused while locked. Unlock: refused 60 s before the
# hour, and with another key; done with B's .pfx; environments stay locked
# until 'envs unlock' each, then serve the DEK they had; generating or
# uploading refused while any environment is locked (locked-environments
# rule), allowed once none is. A second key D uploaded as a .byok and
# activated (DEKs unchanged), then a lock and an unlock with D's .byok.
# Finally a restart changes nothing.
# Run: bash tests/integration/test-lifecycle.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

T=acme
HOUR=$((3600 * 1000000))
BEFORE=$((60 * 1000000)) # "just before": 60 s before a boundary
AFTER=$((5 * 1000000))   # "just after": 5 s after it
TOL=2                    # s: the printed boundary is the recorded time + the rule

kbt_setup_testclock
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "lifecycle password"

# ---- helpers ----

# dek ENV [ARGS...]: the environment's DEK (base64) as its service reads
# it, or "" (the failure is recorded).
dek() {
	local e=$1
	shift
	kb_svc "$T" "$e" datakey get "$T" "$e" --json "$@"
	if [[ $KBT_RC != 0 ]]; then
		kbt_fail "datakey get $T $e $*" "$(kbt_last)" >&2
		return
	fi
	json 'd["dek"]' 2>/dev/null
}

# tenant_field FIELD: a field of tenants show --json.
tenant_field() {
	kb_admin tenants show "$T" --json && json "d['$1']" 2>/dev/null
}

# check_recent DESC US: a time the broker recorded is its clock's now (the
# moved one), within 2 minutes of what the test expects.
check_recent() {
	local now d
	now=$(kbt_now_us)
	d=$((now - ${2:-0}))
	((d < 0)) && d=$((-d))
	if [[ -n ${2:-} ]] && ((d <= 120 * 1000000)); then
		kbt_pass "$1: $(kbt_fmt_us "$2"), the moved clock's now"
	else
		kbt_fail "$1" "recorded ${2:-nothing}, the broker's clock is at $(kbt_fmt_us "$now")"
	fi
}

key_state() { # key_state KEY_ID
	kb_admin keys show "$T" "$1" --json && json 'd["state"]' 2>/dev/null
}

# check_env DESC ENV PYEXPR: envs show ENV --json satisfies PYEXPR.
check_env() {
	kb_admin envs show "$T" "$2" --json
	check_json "$1" "$3"
}

# Token labels (p11tool from gnutls-bin), one per line, sorted, unique.
have_p11tool=0
command -v p11tool >/dev/null 2>&1 && have_p11tool=1
token_labels() {
	SOFTHSM2_CONF=$KBT_DIR/token/softhsm2.conf GNUTLS_PIN=$(<"$KBT_DIR/token/pin") \
		p11tool --provider /usr/lib/softhsm/libsofthsm2.so --login --list-all \
		"pkcs11:token=keybroker" 2>/dev/null | sed -n 's/^\tLabel: //p' | sort -u
}
check_token_has() { # check_token_has DESC yes|no KEY_ID
	if ((!have_p11tool)); then
		kbt_skip "$1" "p11tool (gnutls-bin) is not installed"
		return
	fi
	local labels
	labels=$(token_labels)
	local has=no
	grep -qxF -- "$3" <<<"$labels" && has=yes
	if [[ $has == "$2" ]]; then
		kbt_pass "$1"
	elif [[ $has == yes ]]; then
		kbt_fail "$1" "the token still holds $3" "$labels"
	else
		kbt_fail "$1" "the token has no $3" "$labels"
	fi
}

# The background readers: services reading their DEKs in a loop while an
# activation runs. dek_loop_start ENV...; dek_loop_stop prints nothing and
# leaves $w/loop.* (one line per call: "ENV ok DEK KEY_ID" or "ENV FAIL ...").
dek_loop_start() {
	rm -f "$w/loop.stop" "$w"/loop.*.log
	LOOP_PIDS=()
	local e
	for e in "$@"; do
		(
			crt=$KBT_PKI/service-$T-$e
			while [[ ! -e $w/loop.stop ]]; do
				if out=$(KB_CERT=$crt.crt KB_KEY=$crt.key timeout -k 5 30 \
					"$KB_BUILD/kbctl" datakey get "$T" "$e" --json 2>&1 </dev/null); then
					d=$(sed -n 's/.*"dek": "\([^"]*\)".*/\1/p' <<<"$out")
					k=$(sed -n 's/.*"key_id": "\([^"]*\)".*/\1/p' <<<"$out")
					echo "$e ok $d $k"
				else
					echo "$e FAIL $(tr '\n' ' ' <<<"$out")"
				fi
			done >"$w/loop.$e.log"
		) &
		LOOP_PIDS+=($!)
	done
}
dek_loop_count() { cat "$w"/loop.*.log 2>/dev/null | wc -l; }
# dek_loop_wait N: until N more calls have been made (at most 20 s).
dek_loop_wait() {
	local want=$(($(dek_loop_count) + $1)) i
	for ((i = 0; i < 200; i++)); do
		(($(dek_loop_count) >= want)) && return 0
		sleep 0.1
	done
	return 1
}
dek_loop_stop() {
	touch "$w/loop.stop"
	wait "${LOOP_PIDS[@]}" 2>/dev/null
}

kbt_section "a tenant, four environments, a service each"
expect_ok kb_admin tenants create "$T" --name "Acme Corp"
declare -A DEK0
for e in e1 e2 e3 e4; do
	expect_ok kb_admin envs create "$T" "$e"
	DEK0[$e]=$(dek "$e")
done
check_ne "each environment has its own DEK" "${DEK0[e1]}" "${DEK0[e2]}"
expect_fail FAILED_PRECONDITION -m 'no active key' kb_admin envs apply-key "$T" e1

kbt_section "key A: generate and activate"
expect_ok kb_admin keys generate "$T" --out "$w/a.pfx" --password-file "$pw" --json
A=$(json 'd["key"]["id"]' 2>/dev/null)
fpA=$(json 'd["key"]["fingerprint"]' 2>/dev/null)
expect_ok kb_admin keys activate "$T" "$A" --wait
check_out "activate --wait prints the finished job" 'state: done'
check_eq "key A is active" "$(key_state "$A")" active
kb_admin keys show "$T" "$A" --json
check_json "key A: activate_time set" 'd["activate_time_us"] > 0 and d["activate_time"]'
check_eq "the tenant's active key is A" "$(tenant_field active_key_id)" "$A"
expect_fail FAILED_PRECONDITION -m 'active' kb_admin keys activate "$T" "$A"

kbt_section "apply the key to environments"
for e in e1 e2 e4; do
	expect_ok kb_admin envs apply-key "$T" "$e" --json
	check_json "$e: customer mode, wrapped by A" "d['mode'] == 'customer' and d['key_id'] == '$A' and d['state'] == 'enabled'"
	check_eq "$e serves the same DEK under A" "$(dek "$e")" "${DEK0[$e]}"
	check_json "GetDataKey names key A" "d['key_id'] == '$A'"
done
expect_fail FAILED_PRECONDITION -m 'already' kb_admin envs apply-key "$T" e1
expect_fail FAILED_PRECONDITION -m 'already|platform' kb_admin envs revert-key "$T" e3
expect_ok kb_admin envs revert-key "$T" e4 --json
check_json "revert-key: e4 back to the platform key" "d['mode'] == 'platform' and d['key_id'] != '$A'"
check_eq "e4 serves the same DEK under the platform key" "$(dek e4)" "${DEK0[e4]}"
expect_ok kb_admin envs apply-key "$T" e4
check_eq "e4 (customer again) serves the same DEK" "$(dek e4)" "${DEK0[e4]}"
check_env "e3 stays on the platform key" e3 "d['mode'] == 'platform'"
expect_ok kb_admin envs backup "$T" e1 --json
check_json "backup of e1: customer mode, key A" "d['mode'] == 'customer' and d['key_id'] == '$A' and d['id']"
bk1A=$(json 'd["id"]' 2>/dev/null)
expect_ok kb_admin envs backup "$T" e3 --json
check_json "backup of e3: platform mode" "d['mode'] == 'platform' and d['id']"
bk3P=$(json 'd["id"]' 2>/dev/null)
expect_ok kb_admin envs backups "$T" e1 --json
check_json "envs backups e1 lists the backup" "[b['id'] for b in d['backups']] == ['$bk1A']"

kbt_section "key B: the 24-hour activation cooldown"
expect_ok kb_admin keys generate "$T" --out "$w/b.pfx" --password-file "$pw" --json
B=$(json 'd["key"]["id"]' 2>/dev/null)
fpB=$(json 'd["key"]["fingerprint"]' 2>/dev/null)
LA=$(tenant_field last_activation_time_us)
check_recent "the tenant records A's activation time" "$LA"
kbt_clock_to $((LA + 24 * HOUR - BEFORE))
expect_refused_until "24-hour activation cooldown" $((LA + 24 * HOUR)) "$TOL" \
	kb_admin keys activate "$T" "$B"
check_eq "the refused activation changed nothing: B available" "$(key_state "$B")" available
check_eq "... and A still active" "$(tenant_field active_key_id)" "$A"
kbt_clock_to $((LA + 24 * HOUR + AFTER))
dek_loop_start e1 e2
dek_loop_wait 6 || kbt_fail "the background readers run" "$(dek_loop_count) calls"
expect_ok kb_admin keys activate "$T" "$B" --wait --json
check_json "activate --wait --json: the job is done, total = done" \
	"d['state'] == 'done' and d['total'] == d['done'] and d['total'] >= 3 and d['key_id'] == '$B' and d['previous_key_id'] == '$A' and d['kind'] == 'activate'"
job=$(json 'd["id"]' 2>/dev/null)
dek_loop_wait 6 || kbt_fail "the background readers run after the activation" "$(dek_loop_count) calls"
dek_loop_stop
calls=$(dek_loop_count)
fails=$(cat "$w"/loop.*.log | grep -c ' FAIL ')
check "services read their DEKs throughout the activation: $calls calls, $fails failed" \
	test "$calls" -ge 12 -a "$fails" = 0
((fails > 0)) && grep -h ' FAIL ' "$w"/loop.*.log | head -n 5 | sed 's/^/     | /'
for e in e1 e2; do
	check_eq "every call for $e returned its DEK" \
		"$(awk -v e="$e" '$1 == e { print $3 }' "$w"/loop.*.log | sort -u)" "${DEK0[$e]}"
done
for e in e1 e2; do
	check_eq "$e's readers saw the wrapping key go from A to B" \
		"$(awk '{ print $4 }' "$w/loop.$e.log" | uniq | tr '\n' ' ')" "$A $B "
done
expect_ok kb_admin jobs show "$job" --json
check_json "jobs show: done, all environments re-wrapped" "d['state'] == 'done' and d['done'] == d['total']"
check_eq "B is active" "$(key_state "$B")" active
check_eq "A (the previous key) is available again" "$(key_state "$A")" available
expect_ok kb_admin keys list "$T" --json
check_json "exactly one active key" "[k['id'] for k in d['keys'] if k['state'] == 'active'] == ['$B']"
for e in e1 e2 e4; do
	check_env "$e is wrapped by B now" "$e" "d['mode'] == 'customer' and d['key_id'] == '$B'"
	check_eq "$e's DEK is unchanged after the re-wrap" "$(dek "$e")" "${DEK0[$e]}"
done
check_env "e3 (platform) was not touched" e3 "d['mode'] == 'platform'"
LA2=$(tenant_field last_activation_time_us)
check_recent "B's activation time is recorded on the moved clock" "$LA2"
expect_refused_until "24-hour activation cooldown" $((LA2 + 24 * HOUR)) "$TOL" \
	kb_admin keys activate "$T" "$A"

kbt_section "who may"
"$KB_SRC/deploy/pki.sh" admin other globex >/dev/null
expect_fail PERMISSION_DENIED kb_as admin-other keys activate "$T" "$A"
expect_fail PERMISSION_DENIED kb_as admin-other tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes
expect_fail PERMISSION_DENIED kb_as admin-other envs apply-key "$T" e3
expect_fail PERMISSION_DENIED kb_as admin-other envs backup "$T" e1
expect_fail NOT_FOUND kb_as admin-other jobs show "$job"
expect_fail PERMISSION_DENIED kb_svc "$T" e1 keys activate "$T" "$A"
expect_fail PERMISSION_DENIED kb_svc "$T" e1 envs reset "$T" e1 --yes
check_eq "none of it changed the active key" "$(tenant_field active_key_id)" "$B"

kbt_section "restore, copy, reset"
expect_fail FAILED_PRECONDITION -m 'backup|encryption|key' kb_admin envs restore "$T" e1 "$bk1A" --yes
expect_fail FAILED_PRECONDITION -m 'backup|encryption|platform' kb_admin envs restore "$T" e1 "$bk3P" --yes
expect_ok kb_admin envs restore "$T" e3 "$bk3P" --yes --json
check_json "a platform backup restores into a platform environment" "d['mode'] == 'platform'"
check_eq "e3 serves the backup's DEK" "$(dek e3)" "${DEK0[e3]}"
expect_ok kb_admin envs backup "$T" e1 --json
check_json "a backup of e1 now: customer, key B" "d['mode'] == 'customer' and d['key_id'] == '$B'"
bk1B=$(json 'd["id"]' 2>/dev/null)
expect_ok kb_admin envs restore "$T" e1 "$bk1B" --yes --json
check_json "a backup taken under B restores into e1 (under B)" "d['mode'] == 'customer' and d['key_id'] == '$B'"
check_eq "e1 serves the backup's DEK" "$(dek e1)" "${DEK0[e1]}"
expect_usage kb_admin envs restore "$T" e1 "$bk1B"
expect_fail NOT_FOUND kb_admin envs restore "$T" e1 b-0000000000000000 --yes
expect_fail FAILED_PRECONDITION -m 'same customer key|customer' kb_admin envs copy "$T" e1 e3 --yes
expect_fail FAILED_PRECONDITION -m 'same customer key|customer' kb_admin envs copy "$T" e3 e1 --yes
expect_usage kb_admin envs copy "$T" e1 e2
e2_ver=$(kb_admin envs show "$T" e2 --json && json 'd["dek_version"]' 2>/dev/null)
expect_ok kb_admin envs copy "$T" e1 e2 --yes --json
check_json "copy e1 -> e2 (both under B): e2 still customer, key B" "d['mode'] == 'customer' and d['key_id'] == '$B'"
check_eq "e2 now serves e1's DEK" "$(dek e2)" "${DEK0[e1]}"
check_eq "e2's previous DEK version is still readable" "$(dek e2 --version "$e2_ver")" "${DEK0[e2]}"
DEK_E2=${DEK0[e1]}
expect_ok kb_admin envs backup "$T" e4 --json
bk4B=$(json 'd["id"]' 2>/dev/null)
e4_ver=$(kb_admin envs show "$T" e4 --json && json 'd["dek_version"]' 2>/dev/null)
expect_usage kb_admin envs reset "$T" e4
expect_ok kb_admin envs reset "$T" e4 --yes --json
check_json "reset: e4 back to the platform key, enabled" "d['mode'] == 'platform' and d['key_id'] != '$B' and d['state'] == 'enabled'"
DEK_E4=$(dek e4)
check_ne "reset: e4 has a new DEK" "$DEK_E4" "${DEK0[e4]}"
expect_fail NOT_FOUND kb_svc "$T" e4 datakey get "$T" e4 --version "$e4_ver"
expect_ok kb_admin envs backups "$T" e4 --json
check_json "reset: e4's backups are gone" 'd["backups"] == []'
expect_fail NOT_FOUND kb_admin envs restore "$T" e4 "$bk4B" --yes

kbt_section "lock: the 72-hour cooldown"
LKC=$(tenant_field last_key_change_time_us)
check_eq "the last key change is B's activation" "$LKC" "$LA2"
kbt_clock_to $((LKC + 72 * HOUR - BEFORE))
expect_refused_until "72-hour lock cooldown" $((LKC + 72 * HOUR)) "$TOL" \
	kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes
check_eq "the refused lock changed nothing" "$(tenant_field state)" active
kbt_clock_to $((LKC + 72 * HOUR + AFTER))
# A key upload is a key change: the 72 hours start again.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$w/c.pem" 2>/dev/null
openssl req -x509 -new -key "$w/c.pem" -subj "/CN=kbt key C" -days 30 -out "$w/c.crt" 2>/dev/null
openssl pkcs12 -export -inkey "$w/c.pem" -in "$w/c.crt" -passout "file:$pw" -out "$w/c.pfx"
expect_ok kb_admin keys upload "$T" "$w/c.pfx" --password-file "$pw" --json
C=$(json 'd["id"]' 2>/dev/null)
LKC2=$(tenant_field last_key_change_time_us)
check_recent "the upload is the tenant's last key change" "$LKC2"
expect_refused_until "72-hour lock cooldown" $((LKC2 + 72 * HOUR)) "$TOL" \
	kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes
kbt_clock_to $((LKC2 + 72 * HOUR - BEFORE))
expect_refused_until "72-hour lock cooldown" $((LKC2 + 72 * HOUR)) "$TOL" \
	kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes
kbt_clock_to $((LKC2 + 72 * HOUR + AFTER))

kbt_section "lock: proof of the active key"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$w/x.pem" 2>/dev/null
openssl req -x509 -new -key "$w/x.pem" -subj "/CN=kbt stranger" -days 30 -out "$w/x.crt" 2>/dev/null
openssl pkcs12 -export -inkey "$w/x.pem" -in "$w/x.crt" -passout "file:$pw" -out "$w/x.pfx"
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants lock "$T" --key "$w/x.pfx" --password-file "$pw" --yes
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants lock "$T" --key "$w/a.pfx" --password-file "$pw" --yes
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants lock "$T" --key "$w/c.pfx" --password-file "$pw" --yes
kbt_secret_file "$w/wrongpw" "not it"
expect_fail INVALID_ARGUMENT -m 'password' \
	kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$w/wrongpw" --yes
expect_usage kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw"
check_eq "no refused lock changed anything" "$(tenant_field state)" active
check_token_has "B is in the token before the lock" yes "$B"

kbt_section "lock with B's .pfx"
declare -A DEKL=([e1]=$(dek e1) [e2]=$(dek e2) [e3]=$(dek e3) [e4]=$(dek e4))
check_eq "e2's DEK before the lock is the copied one" "${DEKL[e2]}" "$DEK_E2"
expect_ok kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes --json
check_json "tenants lock: locked with B, two environments locked" \
	"d['state'] == 'locked' and d['lock_key_id'] == '$B' and d['locked_environment_count'] == 2 and d['lock_time_us'] > 0"
LT=$(json 'd["lock_time_us"]' 2>/dev/null)
check_recent "the lock time" "$LT"
for e in e1 e2; do
	expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc "$T" "$e" datakey get "$T" "$e"
	check_env "$e is locked, with its lock time" "$e" "d['state'] == 'locked' and d['lock_time_us'] == $LT"
done
check_eq "e3 (platform) is still served" "$(dek e3)" "${DEKL[e3]}"
check_eq "e4 (platform after its reset) is still served" "$(dek e4)" "${DEKL[e4]}"
kb_admin keys show "$T" "$B" --json
check_json "B is locked, its fingerprint kept" "d['state'] == 'locked' and d['fingerprint'] == '$fpB' and d['lock_time_us'] == $LT"
kb_admin keys show "$T" "$A" --json
check_json "A (available) is deleted, its fingerprint kept" "d['state'] == 'deleted' and d['fingerprint'] == '$fpA' and d['delete_time_us'] > 0"
check_eq "C (uploaded, available) is deleted" "$(key_state "$C")" deleted
check_token_has "B is gone from the token" no "$B"
check_token_has "A is gone from the token" no "$A"
check_token_has "C is gone from the token" no "$C"
check_token_has "the platform key is still in the token" yes kb:platform
check_token_has "the tenant's KEK is gone from the token" no kb:kek:acme
if ((have_p11tool)); then
	SOFTHSM2_CONF=$KBT_DIR/token/softhsm2.conf softhsm2-util --show-slots >"$w/slots" 2>&1
	check "softhsm2-util --show-slots still shows the token" grep -q 'Label: *keybroker' "$w/slots"
fi

kbt_section "a restart while locked"
kbt_stop
kbt_start || kbt_done
check_eq "the tenant is still locked after a restart" "$(tenant_field state)" locked
expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc "$T" e1 datakey get "$T" e1
check_eq "e3 is still served after the restart" "$(dek e3)" "${DEKL[e3]}"
check_token_has "B is still gone from the token after the restart" no "$B"

kbt_section "while locked"
expect_fail FAILED_PRECONDITION -m 'locked' \
	kb_admin keys generate "$T" --out "$w/locked.pfx" --password-file "$pw"
expect_fail FAILED_PRECONDITION -m 'locked' \
	kb_admin keys upload "$T" "$w/x.pfx" --password-file "$pw"
expect_fail FAILED_PRECONDITION -m 'locked|available' kb_admin keys activate "$T" "$A"
expect_fail FAILED_PRECONDITION -m 'locked' kb_admin envs apply-key "$T" e3
expect_fail FAILED_PRECONDITION -m 'locked' kb_admin envs backup "$T" e1
expect_fail FAILED_PRECONDITION -m 'locked' kb_admin envs unlock "$T" e1
expect_fail FAILED_PRECONDITION -m 'already locked|locked' \
	kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes

kbt_section "unlock: the 1-hour cooldown and the key that locked"
kbt_clock_to $((LT + HOUR - BEFORE))
expect_refused_until "1-hour unlock cooldown" $((LT + HOUR)) "$TOL" \
	kb_admin tenants unlock "$T" --key "$w/b.pfx" --password-file "$pw"
check_eq "the refused unlock changed nothing" "$(tenant_field state)" locked
kbt_clock_to $((LT + HOUR + AFTER))
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants unlock "$T" --key "$w/a.pfx" --password-file "$pw"
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants unlock "$T" --key "$w/x.pfx" --password-file "$pw"
check_token_has "a refused unlock put nothing into the token" no "$B"
expect_ok kb_admin tenants unlock "$T" --key "$w/b.pfx" --password-file "$pw" --json
check_json "tenants unlock: active again with B; both environments still locked" \
	"d['state'] == 'active' and d['active_key_id'] == '$B' and d['locked_environment_count'] == 2"
check_eq "B is active again" "$(key_state "$B")" active
check_token_has "B is back in the token" yes "$B"
check_token_has "A stays gone" no "$A"

kbt_section "environments stay locked until unlocked one by one"
expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc "$T" e1 datakey get "$T" e1
expect_fail FAILED_PRECONDITION -m 'locked-environments rule' \
	kb_admin keys generate "$T" --out "$w/d0.pfx" --password-file "$pw"
expect_fail FAILED_PRECONDITION -m 'locked-environments rule' \
	kb_admin keys upload "$T" "$w/x.pfx" --password-file "$pw"
expect_fail FAILED_PRECONDITION -m 'locked' kb_admin envs apply-key "$T" e1
expect_ok kb_admin envs unlock "$T" e1 --json
check_json "envs unlock e1: enabled, customer, key B" "d['state'] == 'enabled' and d['mode'] == 'customer' and d['key_id'] == '$B'"
check_eq "e1 serves the DEK it had before the lock" "$(dek e1)" "${DEKL[e1]}"
expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc "$T" e2 datakey get "$T" e2
# One environment still locked: the rule still holds (just before).
expect_fail FAILED_PRECONDITION -m 'locked-environments rule' \
	kb_admin keys generate "$T" --out "$w/d1.pfx" --password-file "$pw"
expect_ok kb_admin envs unlock "$T" e2
check_eq "e2 serves the DEK it had before the lock" "$(dek e2)" "${DEKL[e2]}"
expect_fail FAILED_PRECONDITION -m 'not locked' kb_admin envs unlock "$T" e2
expect_fail FAILED_PRECONDITION -m 'not locked|platform' kb_admin envs unlock "$T" e3
check_eq "no environment is locked now" "$(tenant_field locked_environment_count)" 0

kbt_section "a second key, uploaded as a .byok, activated"
# None locked: adding a key is allowed again (just after the rule).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$w/d.pem" 2>/dev/null
expect_ok kb_admin byok kek "$T" --json
cp "$KBT_OUT" "$w/kek.json"
expect_ok kb_admin byok wrap --kek "$w/kek.json" --key "$w/d.pem" --out "$w/d.byok"
expect_ok kb_admin keys upload "$T" "$w/d.byok" --json
D=$(json 'd["id"]' 2>/dev/null)
check_json "D: origin byok, available, the PEM key's fingerprint" \
	"d['origin'] == 'byok' and d['state'] == 'available' and d['fingerprint'] == '$(openssl pkey -in "$w/d.pem" -pubout -outform DER | sha256sum | cut -d' ' -f1)'"
LA3=$(tenant_field last_activation_time_us)
check "more than 24 hours since B's activation" test $(($(kbt_now_us) - LA3)) -gt $((24 * HOUR))
expect_ok kb_admin keys activate "$T" "$D" --wait --json
check_json "D's activation re-wrapped both customer environments" \
	"d['state'] == 'done' and d['done'] == d['total'] and d['total'] >= 2 and d['previous_key_id'] == '$B'"
for e in e1 e2; do
	check_env "$e is wrapped by D" "$e" "d['key_id'] == '$D' and d['mode'] == 'customer'"
	check_eq "$e's DEK is unchanged under D" "$(dek "$e")" "${DEKL[$e]}"
done
check_eq "e2's older DEK version was re-wrapped too and still reads" \
	"$(dek e2 --version "$e2_ver")" "${DEK0[e2]}"
check_eq "B is available again" "$(key_state "$B")" available

kbt_section "lock and unlock with D's .byok"
LKC3=$(tenant_field last_key_change_time_us)
check_recent "D's activation is the last key change" "$LKC3"
kbt_clock_to $((LKC3 + 72 * HOUR - BEFORE))
expect_refused_until "72-hour lock cooldown" $((LKC3 + 72 * HOUR)) "$TOL" \
	kb_admin tenants lock "$T" --key "$w/d.byok" --yes
kbt_clock_to $((LKC3 + 72 * HOUR + AFTER))
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants lock "$T" --key "$w/b.pfx" --password-file "$pw" --yes
expect_ok kb_admin tenants lock "$T" --key "$w/d.byok" --yes --json
check_json "locked with D" "d['state'] == 'locked' and d['lock_key_id'] == '$D' and d['locked_environment_count'] == 2"
LT2=$(json 'd["lock_time_us"]' 2>/dev/null)
check_recent "the second lock time" "$LT2"
expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc "$T" e1 datakey get "$T" e1
check_eq "D is locked" "$(key_state "$D")" locked
check_eq "B is deleted" "$(key_state "$B")" deleted
check_token_has "D is gone from the token" no "$D"
check_token_has "B is gone from the token" no "$B"
kbt_clock_to $((LT2 + HOUR - BEFORE))
expect_refused_until "1-hour unlock cooldown" $((LT2 + HOUR)) "$TOL" \
	kb_admin tenants unlock "$T" --key "$w/d.byok"
kbt_clock_to $((LT2 + HOUR + AFTER))
expect_fail FAILED_PRECONDITION -m 'key mismatch' \
	kb_admin tenants unlock "$T" --key "$w/b.pfx" --password-file "$pw"
expect_ok kb_admin tenants unlock "$T" --key "$w/d.byok" --json
check_json "unlocked with D's .byok" "d['state'] == 'active' and d['active_key_id'] == '$D'"
check_token_has "D is back in the token" yes "$D"
for e in e1 e2; do
	expect_ok kb_admin envs unlock "$T" "$e"
	check_eq "$e serves its DEK after the second unlock" "$(dek "$e")" "${DEKL[$e]}"
done

check_eq "e2's older DEK version reads after the second unlock" \
	"$(dek e2 --version "$e2_ver")" "${DEK0[e2]}"

kbt_section "after a restart"
kbt_stop
kbt_start || kbt_done
for e in e1 e2 e3 e4; do
	check_eq "$e serves the same DEK after a restart" "$(dek "$e")" "${DEKL[$e]}"
done
expect_ok kb_admin keys list "$T" --json
check_json "the keys after it all: D active; A, B, C deleted" \
	"sorted((k['id'], k['state']) for k in d['keys']) == sorted([('$A', 'deleted'), ('$B', 'deleted'), ('$C', 'deleted'), ('$D', 'active')])"
check "the broker's log never shows the .pfx password" \
	bash -c "! grep -qF -- \"\$(head -n 1 '$pw')\" '$KBT_LOG'"

kbt_done
