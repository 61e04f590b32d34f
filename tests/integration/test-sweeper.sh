#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-sweeper.sh: locked environments not unlocked within 28 days are
# deleted, for good (keybrokerd-testclock, sweep_interval_s = 1).
#
# Two tenants, each with two customer-managed environments and a platform
# one, locked a day apart. At 28 days minus 2 minutes after the first lock,
# after several sweeps, nothing is deleted. Past 28 days the first tenant's
# locked environments become 'deleted' within seconds (GetDataKey NOT_FOUND,
# every DEK version gone, not counted as locked any more), while its platform
# environment and the second tenant's environments (locked a day later) are
# untouched. Unlocking a tenant afterwards works (its key comes back) but
# brings no deleted environment back: 'envs unlock' is refused, GetDataKey
# stays NOT_FOUND, also after a restart; with no locked environment left,
# adding a key is allowed again. The second tenant is unlocked in time (with
# a .byok of the key it was locked with as a .pfx) and one environment
# unlocked: past its 28 days only the other one, left locked, is deleted.
# Each move of the clock by days is a forward clock jump (beyond
# clock_jump_limit_s), which pauses the sweeper until 'kbctl clock confirm'
# (test-clock.sh tests the pause itself).
# Run: bash tests/integration/test-sweeper.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

HOUR=$((3600 * 1000000))
DAY=$((24 * HOUR))

kbt_setup_testclock
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "sweeper password"

# dek TENANT ENV: the DEK its service reads ("" on failure).
dek() {
	kb_svc "$1" "$2" datakey get "$1" "$2" --json && json 'd["dek"]' 2>/dev/null
}
env_state() { # env_state TENANT ENV
	kb_admin envs show "$1" "$2" --json && json 'd["state"]' 2>/dev/null
}
# wait_state TENANT ENV STATE SECONDS: poll envs show until STATE.
wait_state() {
	local i
	for ((i = 0; i < $4 * 5; i++)); do
		[[ $(env_state "$1" "$2") == "$3" ]] && return 0
		sleep 0.2
	done
	return 1
}

declare -A DEK KEYFILE
for t in alpha beta; do
	kbt_section "tenant $t: a key, two customer environments, a platform one"
	kbt_tenant_keyed "$t" "$w/$t.pfx" "$pw" "c1 c2" p
	KEYFILE[$t]=$w/$t.pfx
	for e in c1 c2 p; do
		DEK[$t/$e]=$(dek "$t" "$e")
		check "$t/$e has a DEK" test -n "${DEK[$t/$e]}"
	done
	expect_ok kb_admin envs backup "$t" c1
done

kbt_section "lock alpha, and beta a day later"
kbt_clock_set $((73 * 3600))
expect_ok kb_admin tenants lock alpha --key "${KEYFILE[alpha]}" --password-file "$pw" --yes --json
LA=$(json 'd["lock_time_us"]' 2>/dev/null)
check_json "alpha locked, two environments locked" "d['state'] == 'locked' and d['locked_environment_count'] == 2"
kbt_clock_set $((97 * 3600))
expect_ok kb_admin tenants lock beta --key "${KEYFILE[beta]}" --password-file "$pw" --yes --json
LB=$(json 'd["lock_time_us"]' 2>/dev/null)
check "beta was locked about a day after alpha" test $((LB - LA)) -gt $((DAY - 120 * 1000000))

kbt_section "28 days minus 2 minutes after alpha's lock: nothing deleted"
kbt_clock_to $((LA + 28 * DAY - 120 * 1000000))
expect_ok kb_admin clock confirm --yes --json
check_json "the clock jump is confirmed: the sweeper runs" "not d['sweeper_paused']"
sleep 3 # three sweeps at sweep_interval_s = 1
for e in c1 c2; do
	check_eq "alpha/$e is still locked" "$(env_state alpha "$e")" locked
	expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc alpha "$e" datakey get alpha "$e"
done
kb_admin tenants show alpha --json
check_json "alpha still counts two locked environments" "d['locked_environment_count'] == 2"

kbt_section "past 28 days: alpha's locked environments are deleted"
kbt_clock_to $((LA + 28 * DAY + 5 * 1000000))
start=$(date +%s%N)
if wait_state alpha c1 deleted 15 && wait_state alpha c2 deleted 5; then
	kbt_pass "alpha/c1 and alpha/c2 are deleted $((($(date +%s%N) - start) / 1000000)) ms after the 28 days"
else
	kbt_fail "alpha/c1 and alpha/c2 are deleted within 15 s" \
		"states: c1 $(env_state alpha c1), c2 $(env_state alpha c2)" "$(kbt_print_log)"
fi
for e in c1 c2; do
	expect_fail NOT_FOUND kb_svc alpha "$e" datakey get alpha "$e"
	expect_fail NOT_FOUND kb_svc alpha "$e" datakey get alpha "$e" --version 1
	kb_admin envs show alpha "$e" --json
	check_json "alpha/$e: state deleted" "d['state'] == 'deleted'"
done
check_eq "alpha/p (platform) is untouched" "$(dek alpha p)" "${DEK[alpha/p]}"
kb_admin tenants show alpha --json
check_json "alpha: no locked environments left, still locked itself" \
	"d['locked_environment_count'] == 0 and d['state'] == 'locked'"
for e in c1 c2; do
	check_eq "beta/$e (locked a day later) is still locked" "$(env_state beta "$e")" locked
done
check 'the log says the environments were deleted' grep -q 'alpha/c1 DELETED' "$KBT_LOG"

kbt_section "unlocking alpha brings nothing back"
expect_ok kb_admin tenants unlock alpha --key "${KEYFILE[alpha]}" --password-file "$pw" --json
check_json "alpha is active again, no locked environments" \
	"d['state'] == 'active' and d['locked_environment_count'] == 0"
for e in c1 c2; do
	expect_fail 'FAILED_PRECONDITION|NOT_FOUND' -m 'deleted|not locked' kb_admin envs unlock alpha "$e"
	expect_fail NOT_FOUND kb_svc alpha "$e" datakey get alpha "$e"
	check_eq "alpha/$e stays deleted" "$(env_state alpha "$e")" deleted
done
expect_fail 'FAILED_PRECONDITION|NOT_FOUND' kb_admin envs apply-key alpha c1
expect_fail 'FAILED_PRECONDITION|NOT_FOUND' kb_admin envs restore alpha c1 b-0000000000000000 --yes
expect_ok kb_admin envs backups alpha c1 --json
check_json "alpha/c1's backups are gone" 'd["backups"] == []'
expect_ok kb_admin keys generate alpha --out "$w/alpha2.pfx" --password-file "$pw"

kbt_section "beta: unlocked (with a .byok of its key), one environment unlocked"
# The same key in the other format: a .byok made from the .pfx's key.
openssl pkcs12 -in "${KEYFILE[beta]}" -nocerts -nodes -passin "file:$pw" 2>/dev/null |
	openssl pkey -out "$w/beta.pem" 2>/dev/null
expect_ok kb_admin byok kek beta --json
cp "$KBT_OUT" "$w/beta-kek.json"
expect_ok kb_admin byok wrap --kek "$w/beta-kek.json" --key "$w/beta.pem" --out "$w/beta.byok"
expect_ok kb_admin tenants unlock beta --key "$w/beta.byok" --json
check_json "beta unlocked with the .byok of the key that locked it (a .pfx)" \
	"d['state'] == 'active' and d['locked_environment_count'] == 2"
expect_ok kb_admin envs unlock beta c1
check_eq "beta/c1 serves its DEK again" "$(dek beta c1)" "${DEK[beta/c1]}"

kbt_section "past 28 days after beta's lock: only its still-locked environment goes"
kbt_clock_to $((LB + 28 * DAY - 120 * 1000000))
expect_ok kb_admin clock confirm --yes
sleep 2
check_eq "beta/c2 is still locked 2 minutes before its 28 days" "$(env_state beta c2)" locked
kbt_clock_to $((LB + 28 * DAY + 5 * 1000000))
if wait_state beta c2 deleted 15; then
	kbt_pass "beta/c2 (never unlocked) is deleted, though its tenant was unlocked"
else
	kbt_fail "beta/c2 is deleted within 15 s" "state: $(env_state beta c2)"
fi
expect_fail NOT_FOUND kb_svc beta c2 datakey get beta c2
check_eq "beta/c1 (unlocked in time) is enabled" "$(env_state beta c1)" enabled
check_eq "beta/c1 still serves its DEK" "$(dek beta c1)" "${DEK[beta/c1]}"
check_eq "beta/p (platform) is untouched" "$(dek beta p)" "${DEK[beta/p]}"
kb_admin tenants show beta --json
check_json "beta: no locked environments left" "d['locked_environment_count'] == 0"

kbt_section "after a restart"
kbt_stop
kbt_start || kbt_done
for env in alpha/c1 alpha/c2 beta/c2; do
	expect_fail NOT_FOUND kb_svc "${env%/*}" "${env#*/}" datakey get "${env%/*}" "${env#*/}"
done
for env in alpha/p beta/c1 beta/p; do
	check_eq "$env still serves its DEK" "$(dek "${env%/*}" "${env#*/}")" "${DEK[$env]}"
done

kbt_done
