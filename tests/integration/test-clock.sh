#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-clock.sh: policy time never goes backward, and a forward clock jump
# pauses the 28-day sweeper until a platform-wide admin confirms it
# (keybrokerd-testclock, sweep_interval_s = 1, clock_jump_limit_s 3600).
#
# clock_jump_limit_s is validated. A forward jump of 73 hours is audited and
# pauses the sweeper; only a platform-wide admin may confirm it. Two tenants
# are locked 1 h 50 min apart; two hours after the first lock the mark is
# stored by the broker on its own (every 10 s), the broker is SIGKILLed and
# its clock set back 3 days. After the restart policy time has not gone
# back: the first tenant's unlock cooldown, which had passed, is still
# passed (the unlock is allowed and recorded at policy time), the second's,
# which had not, ends when it did (refused, then allowed, around the same
# moment), the set-back clock is logged once and audited. When the wall
# clock catches up, time follows it again. Then a jump to 28 days after the
# first lock, while the broker runs (between two marks): nothing is deleted
# in three sweeps, the pause is logged once, and after 'kbctl clock
# confirm' the first tenant's locked environments are deleted and the
# second's (locked later) are not; the audit log has both events. A backup
# of a locked or a deleted environment is not restored (nor copied from
# it), FAILED_PRECONDITION naming the live-source rule. Last, a jump while
# the broker is stopped pauses the sweeper too.
# Run: bash tests/integration/test-clock.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

S=1000000
HOUR=$((3600 * S))
DAY=$((24 * HOUR))

kbt_setup_testclock
db=$KBT_DIR/keybroker.db
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "clock password"

kbt_section "clock_jump_limit_s: checked before anything starts"
for v in 59 0 1h 31536001; do
	{
		cat "$KBT_CONF"
		echo "clock_jump_limit_s = $v"
	} >"$w/bad.conf"
	kbt_expect_no_start "clock_jump_limit_s = $v is refused" "$w/bad.conf" \
		"clock_jump_limit_s must be a number from 60 to 31536000, not \"$v\""
done
check "--check-config shows the default clock_jump_limit_s = 3600" bash -c \
	"'$KBT_BROKER' --config '$KBT_CONF' --check-config | grep -qx 'clock_jump_limit_s = 3600'"

kbt_start || kbt_done
"$KB_SRC/deploy/pki.sh" admin ops acme >/dev/null || kbt_fail "deploy/pki.sh admin ops acme"

# env_state TENANT ENV; wait_state TENANT ENV STATE SECONDS; dek TENANT ENV
env_state() { kb_admin envs show "$1" "$2" --json && json 'd["state"]' 2>/dev/null; }
wait_state() {
	local i
	for ((i = 0; i < $4 * 5; i++)); do
		[[ $(env_state "$1" "$2") == "$3" ]] && return 0
		sleep 0.2
	done
	return 1
}
dek() { kb_svc "$1" "$2" datakey get "$1" "$2" --json && json 'd["dek"]' 2>/dev/null; }
# log_since LINE ERE: how many lines of the broker's log after LINE match.
log_since() { tail -n +$(($1 + 1)) "$KBT_LOG" | grep -c -- "$2"; }
# events METHOD: the audit events of METHOD (as the auditor), JSON in $KBT_OUT.
events() { kb_as auditor audit list --method "$1" --page-size 1000 --json; }

kbt_section "a new database: schema 6, the mark kept, the sweeper deleting"
check_eq "schema 6" "$(sqlite3 "$db" 'PRAGMA user_version')" 6
check_eq "the clock row is kept" "$(sqlite3 "$db" 'SELECT kept FROM clock')" 1
expect_ok kb_admin clock show --json
check_json "policy time is the wall clock; nothing waits; the limit is 3600 s" \
	"abs(d['policy_time_us'] - d['wall_time_us']) < 2000000 and d['mark_time_us'] > 0 and not d['sweeper_paused'] and d['jump_limit_s'] == 3600"
expect_ok kb_admin clock show
check_out "clock show: the sweeper deletes" '^sweeper: deleting'

declare -A KEYFILE BK DEK
for t in acme beta; do
	kbt_section "tenant $t: a key, two customer environments with a backup, a platform one"
	expect_ok kb_admin tenants create "$t"
	for e in c1 c2 p; do
		expect_ok kb_admin envs create "$t" "$e"
	done
	expect_ok kb_admin keys generate "$t" --out "$w/$t.pfx" --password-file "$pw" --json
	KEYFILE[$t]=$w/$t.pfx
	key=$(json 'd["key"]["id"]' 2>/dev/null)
	expect_ok kb_admin keys activate "$t" "$key" --wait
	for e in c1 c2; do
		expect_ok kb_admin envs apply-key "$t" "$e"
	done
	expect_ok kb_admin envs backup "$t" c1 --json
	BK[$t]=$(json 'd["id"]' 2>/dev/null)
done

kbt_section "a forward jump of 73 hours: audited, the sweeper paused until a platform admin confirms"
kbt_clock_set $((73 * 3600))
expect_ok kb_admin clock show --json
check_json "clock show: paused by a jump of 73 hours (and the seconds since the last mark)" \
	"d['sweeper_paused'] and 0 <= d['jump_to_time_us'] - d['jump_from_time_us'] - 73 * 3600 * 10**6 < 15 * 10**6"
expect_ok kb_admin clock show
check_out "... and says what to do" 'sweeper: PAUSED: the clock jumped 3 d 1 h forward .*kbctl clock confirm'
expect_ok kb_as auditor clock show --json
check_json "an auditor reads the clock too" "d['sweeper_paused']"
expect_usage kb_admin clock confirm
expect_fail PERMISSION_DENIED -m 'platform-wide admin' kb_as admin-ops clock confirm --yes
expect_fail PERMISSION_DENIED -m 'may not call ConfirmClockJump' kb_as auditor clock confirm --yes
expect_ok kb_admin clock show --json
check_json "still paused after the refusals" "d['sweeper_paused']"
expect_ok kb_admin clock confirm --yes --json
check_json "confirmed by admin: the sweeper deletes again" \
	"not d['sweeper_paused'] and d['confirmed_by'] == 'admin' and d['confirm_time_us'] > 0 and d['jump_from_time_us'] == 0"
expect_fail FAILED_PRECONDITION -m 'no forward clock jump is waiting' kb_admin clock confirm --yes

kbt_section "acme locked; beta locked 1 h 50 min later; the clock 2 h after acme's lock"
expect_ok kb_admin tenants lock acme --key "${KEYFILE[acme]}" --password-file "$pw" --yes --json
LT=$(json 'd["lock_time_us"]' 2>/dev/null)
kbt_clock_to $((LT + 110 * 60 * S))
expect_ok kb_admin tenants lock beta --key "${KEYFILE[beta]}" --password-file "$pw" --yes --json
LB=$(json 'd["lock_time_us"]' 2>/dev/null)
check "beta was locked 1 h 50 min after acme (to the second)" test $((LB - LT)) -ge $(((110 * 60 - 2) * S))
expect_ok kb_admin clock confirm --yes # that move was a jump too (over an hour)
kbt_clock_to $((LT + 2 * HOUR))
# Nothing is called now: the broker stores the mark on its own.
before=$(kbt_now_us)
sleep 11
P0=$(sqlite3 "$db" 'SELECT mark_us FROM clock')
check "the broker stored the mark on its own within 10 s ($(kbt_fmt_us "${P0:-0}"))" test "${P0:-0}" -ge "$before"
for e in c1 c2; do
	check_eq "acme/$e is locked" "$(env_state acme "$e")" locked
done

kbt_section "SIGKILL, the clock set back 3 days, restart: policy time has not gone back"
off=$(kbt_clock_offset)
kbt_kill
kbt_clock_set $((off - 3 * 86400))
nlog=$(wc -l <"$KBT_LOG")
kbt_start || kbt_done
expect_ok kb_admin clock show --json
check_json "policy time is at least the stored mark; the wall clock is 3 days behind" \
	"d['policy_time_us'] >= $P0 and d['wall_time_us'] < $P0 - 2 * 86400 * 10**6"
expect_ok kb_admin clock show
check_out "clock show: the wall clock is behind policy time" '^wall_time: .* behind policy time'
expect_ok kb_admin clock show --json
check_eq "the log says CLOCK SET BACK once (after three checks)" "$(log_since "$nlog" 'CLOCK SET BACK')" 1
events clock.backward
check_json "the audit log has the set-back clock, stamped at policy time" \
	"len(items(d, 'events')) == 1 and items(d, 'events')[0]['time_us'] >= $P0 and 'behind policy time' in items(d, 'events')[0]['reason']"

kbt_section "acme's unlock cooldown had passed: it still has; beta's had not: it ends when it did"
expect_ok kb_admin tenants unlock acme --key "${KEYFILE[acme]}" --password-file "$pw" --json
check_json "acme unlocked, the change recorded at policy time, not on the wall clock" \
	"d['state'] == 'active' and d['last_key_change_time_us'] >= $P0"
expect_refused_until "1-hour unlock cooldown" $((LB + HOUR)) 1 \
	kb_admin tenants unlock beta --key "${KEYFILE[beta]}" --password-file "$pw"

kbt_section "the wall clock catches up: time follows it again"
kbt_clock_set "$off"
expect_ok kb_admin clock show --json
check_json "wall clock and policy time agree, no jump" \
	"abs(d['policy_time_us'] - d['wall_time_us']) < 3 * 10**6 and not d['sweeper_paused']"
check "the log says the wall clock caught up" grep -q 'caught up with policy time' "$KBT_LOG"
kbt_clock_to $((LB + HOUR - 60 * S))
expect_refused_until "1-hour unlock cooldown" $((LB + HOUR)) 1 \
	kb_admin tenants unlock beta --key "${KEYFILE[beta]}" --password-file "$pw"
kbt_clock_to $((LB + HOUR + 5 * S))
expect_ok kb_admin tenants unlock beta --key "${KEYFILE[beta]}" --password-file "$pw" --json
check_json "beta unlocked just after its cooldown, its environments still locked" \
	"d['state'] == 'active' and d['locked_environment_count'] == 2"

kbt_section "a jump to 28 days after acme's lock, while running: nothing deleted until confirmed"
nlog=$(wc -l <"$KBT_LOG")
kbt_clock_to $((LT + 28 * DAY + 60 * S))
sleep 3 # three sweeps at sweep_interval_s = 1
for e in c1 c2; do
	check_eq "acme/$e is still locked, 28 days after its lock" "$(env_state acme "$e")" locked
done
expect_ok kb_admin clock show --json
check_json "clock show: paused by a jump of about 27 days" \
	"d['sweeper_paused'] and 26 * 86400 * 10**6 < d['jump_to_time_us'] - d['jump_from_time_us'] < 28 * 86400 * 10**6"
check_eq "the log says the sweeper is paused, once in three sweeps" "$(log_since "$nlog" 'sweeper PAUSED')" 1
check_eq "the log says the clock jumped, once" "$(log_since "$nlog" 'CLOCK JUMPED FORWARD')" 1
expect_ok kb_admin clock confirm --yes
start=$(date +%s%N)
if wait_state acme c1 deleted 15 && wait_state acme c2 deleted 5; then
	kbt_pass "after the confirmation acme/c1 and acme/c2 are deleted ($((($(date +%s%N) - start) / 1000000)) ms)"
else
	kbt_fail "acme/c1 and acme/c2 are deleted within 15 s of the confirmation" \
		"states: c1 $(env_state acme c1), c2 $(env_state acme c2)" "$(kbt_print_log)"
fi
for e in c1 c2; do
	check_eq "beta/$e (locked 1 h 50 min later) is still locked" "$(env_state beta "$e")" locked
done

kbt_section "the audit log has the jumps and their confirmations"
events clock.jump
check_json "clock.jump: the 73-hour, the 1 h 50 min and the 27-day jumps, result error" \
	"len(items(d, 'events')) == 3 and all(e['result'] == 'error' and 'clock_jump_limit_s = 3600' in e['reason'] for e in items(d, 'events'))"
check_json "... the last one says the sweeper is paused" \
	"'27 d' in items(d, 'events')[-1]['reason'] and 'kbctl clock confirm' in items(d, 'events')[-1]['reason']"
events clock.jump.confirm
check_json "clock.jump.confirm: three, each naming the admin" \
	"len(items(d, 'events')) == 3 and all('confirmed by admin' in e['reason'] for e in items(d, 'events'))"
events ConfirmClockJump
check_json "ConfirmClockJump calls: started and ok for each confirmation, the refusals denied" \
	"[e['result'] for e in items(d, 'events')].count('ok') == 3 and [e['result'] for e in items(d, 'events')].count('denied') >= 3"
events sweeper.delete
check_json "sweeper.delete: acme/c1 and acme/c2, after the confirmation" \
	"sorted(e['environment'] for e in items(d, 'events')) == ['c1', 'c2']"

kbt_section "beta/c2 unlocked in time (beta/c1 left locked)"
expect_ok kb_admin envs unlock beta c2
DEK[beta/c2]=$(dek beta c2)
check "beta/c2 serves its DEK again" test -n "${DEK[beta/c2]}"

kbt_section "RestoreBackup (and CopyEnvironment) from a locked or a deleted environment: refused, naming the rule"
expect_fail FAILED_PRECONDITION -m "restore refused by the live-source rule: backup ${BK[beta]} is of beta/c1, which is locked" \
	kb_admin envs restore beta c2 "${BK[beta]}" --yes
expect_fail FAILED_PRECONDITION -m "copy refused by the live-source rule: the source beta/c1, which is locked" \
	kb_admin envs copy beta c1 c2 --yes
expect_fail FAILED_PRECONDITION -m "restore refused by the enabled-environment rule: environment beta/c1 is locked" \
	kb_admin envs restore beta c1 "${BK[beta]}" --yes
expect_fail FAILED_PRECONDITION -m "restore refused by the live-source rule: backup ${BK[acme]} is of acme/c1, which is deleted; its data keys were destroyed" \
	kb_admin envs restore acme p "${BK[acme]}" --yes
expect_fail FAILED_PRECONDITION -m "copy refused by the live-source rule: the source acme/c1, which is deleted" \
	kb_admin envs copy acme c1 p --yes
check_eq "beta/c2 still serves the same DEK" "$(dek beta c2)" "${DEK[beta/c2]}"
expect_ok kb_admin envs backups acme c1 --json
check_json "a deleted environment lists no backups" 'd["backups"] == []'
expect_ok kb_admin envs backup beta c2 --json
b2=$(json 'd["id"]' 2>/dev/null)
expect_ok kb_admin envs restore beta c2 "$b2" --yes
check_eq "a backup of an enabled environment restores (the control)" "$(dek beta c2)" "${DEK[beta/c2]}"

kbt_section "a jump while the broker is stopped pauses the sweeper too"
kbt_stop
kbt_clock_set $(($(kbt_clock_offset) + 2 * 3600))
kbt_start || kbt_done
sleep 2
check_eq "beta/c1 (now past its 28 days) is not deleted" "$(env_state beta c1)" locked
expect_ok kb_admin clock show --json
check_json "clock show: paused by the 2-hour jump found at start-up" \
	"d['sweeper_paused'] and 2 * 3600 * 10**6 <= d['jump_to_time_us'] - d['jump_from_time_us'] < 2 * 3600 * 10**6 + 60 * 10**6"
expect_ok kb_admin clock confirm --yes
if wait_state beta c1 deleted 15; then
	kbt_pass "after the confirmation beta/c1 is deleted"
else
	kbt_fail "beta/c1 is deleted within 15 s of the confirmation" "state: $(env_state beta c1)"
fi
check_eq "beta/c2 (unlocked in time) stays enabled" "$(env_state beta c2)" enabled

kbt_done
