#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-delete.sh: deleting what must go, with a way back until it is final
# (issue 14), on keybrokerd-testclock with the sweeper every second.
# - deletion_window_days outside 1..30 is refused at start-up, naming it;
# - envs delete (typed confirmation on a terminal, --yes without one): the
#   environment is pending deletion; GetDataKey, backup, restore of its
#   backup, copy from it, apply-key and a new environment of its name are
#   refused naming the state, the final time and 'kbctl envs undelete';
#   list and show say when it becomes final; undelete within the window
#   gives it back with the same DEK;
# - past the window the sweeper destroys its data keys: GetDataKey (every
#   version), restore of its backups and copy from it are refused, undelete
#   too; every step is an audit event naming the final time;
# - an attack: the data key row of a deleted environment, taken from a copy
#   of the database made before the final deletion and put back (grafted
#   into the current database, or the whole copy restored), still opens
#   before the README's bound; after a platform-key rotation (platform
#   environment), and after the tenant's next activation and the final
#   deletion of the key that was active (customer environment), it does not;
# - keys delete: refused for the active key and, with the count, for an
#   available key a backup still depends on; allowed once nothing does;
#   pending (not activatable), undeleted, deleted again, final: the token
#   object is gone (p11tool);
# - a locked environment can be deleted (undelete gives it back locked);
#   once final, the tenant can add a key again;
# - with a quorum in force, DeleteEnvironment and DeleteKey are approval
#   requests that act only once approved.
# Run: bash tests/integration/test-delete.sh (KB_BUILD=build dir, KBT_KEEP=1).
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
kbt_secret_file "$pw" "delete password"
sql() { sqlite3 "$db" "$1"; }

kbt_section "deletion_window_days outside 1..30 is refused at start-up"
for v in 0 31; do
	grep -v '^deletion_window_days' "$KBT_CONF" >"$w/bad.conf"
	echo "deletion_window_days = $v" >>"$w/bad.conf"
	kbt_expect_no_start "deletion_window_days = $v: refused, naming the key" "$w/bad.conf" \
		'deletion_window_days must be a number from 1 to 30'
done

kbt_start || kbt_done

dek() { # dek TENANT ENV [ARGS]: the DEK its service reads ("" on failure)
	kb_svc "$1" "$2" datakey get "$1" "$2" "${@:3}" --json && json 'd["dek"]' 2>/dev/null
}
env_state() { kb_admin envs show "$1" "$2" --json && json 'd["state"]' 2>/dev/null; }
key_state() { kb_admin keys show "$1" "$2" --json && json 'd["state"]' 2>/dev/null; }
wait_state() { # wait_state TENANT ENV STATE SECONDS
	local i
	for ((i = 0; i < $4 * 5; i++)); do
		[[ $(env_state "$1" "$2") == "$3" ]] && return 0
		sleep 0.2
	done
	return 1
}
wait_key_state() { # wait_key_state TENANT KEY STATE SECONDS
	local i
	for ((i = 0; i < $4 * 5; i++)); do
		[[ $(key_state "$1" "$2") == "$3" ]] && return 0
		sleep 0.2
	done
	return 1
}
# jump US: the broker's clock to US, and the forward jump confirmed so the
# sweeper deletes again (test-clock.sh tests the pause itself).
jump() {
	kbt_clock_to "$1"
	kb_admin clock confirm --yes
	if ((KBT_RC != 0)) && ! grep -q 'no forward clock jump is waiting' "$KBT_ERR"; then
		kbt_fail "clock confirm after moving the clock to $(kbt_fmt_us "$1")" "$(kbt_last)"
	fi
}
# stop_copy FILE: stop the broker and copy the database, whole, to FILE.
stop_copy() {
	kbt_stop
	sqlite3 "$db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null
	cp "$db" "$1"
}
# put_back FILE: the database file replaced by FILE (the broker stopped).
put_back() {
	cp "$1" "$db"
	rm -f "$db-wal" "$db-shm"
}
# graft FROM TENANT ENV: into the stopped broker's database, the DEK rows of
# TENANT/ENV from the copy FROM, and the environment made enabled again: what
# an attacker who writes the database files can do.
graft() {
	sqlite3 "$db" "ATTACH '$1' AS o;
		DELETE FROM deks WHERE env_id = (SELECT id FROM environments WHERE tenant_id = '$2' AND name = '$3');
		INSERT INTO deks SELECT d.* FROM o.deks d JOIN o.environments e ON e.id = d.env_id
			WHERE e.tenant_id = '$2' AND e.name = '$3';
		UPDATE environments SET state = 'enabled', delete_request_us = 0, delete_final_us = 0
			WHERE tenant_id = '$2' AND name = '$3';"
}

kbt_section "tenant acme: a key, platform and customer environments, backups"
expect_ok kb_admin tenants create acme
for e in p c c2 keep; do
	expect_ok kb_admin envs create acme "$e"
done
expect_ok kb_admin keys generate acme --out "$w/k1.pfx" --password-file "$pw" --json
K1=$(json 'd["key"]["id"]' 2>/dev/null)
expect_ok kb_admin keys activate acme "$K1" --wait
expect_ok kb_admin envs apply-key acme c
expect_ok kb_admin envs apply-key acme c2
declare -A DEK BK
for e in p c c2 keep; do
	DEK[$e]=$(dek acme "$e")
	check "acme/$e has a DEK" test -n "${DEK[$e]}"
done
for e in p c c2; do
	expect_ok kb_admin envs backup acme "$e" --json
	BK[$e]=$(json 'd["id"]' 2>/dev/null)
done
check_eq "schema 6 or later" "$(sql 'SELECT user_version >= 6 FROM pragma_user_version')" 1

kbt_section "envs delete: pending deletion, every use refused, and undelete"
expect_usage kb_admin envs delete acme p
check_eq "without --yes and without a terminal nothing is deleted" "$(env_state acme p)" enabled
# on_tty ANSWER ARGS...: kbctl ARGS as the admin on a terminal (script(1)
# gives it a pty), ANSWER typed at its confirmation prompt.
on_tty() {
	local answer=$1
	shift
	printf '%s\n' "$answer" | KB_CERT=$KBT_PKI/admin.crt KB_KEY=$KBT_PKI/admin.key \
		timeout 30 script -qec "$(printf '%q ' "$KB_BUILD/kbctl" "$@")" /dev/null >"$KBT_OUT" 2>&1
	KBT_RC=$?
}
if command -v script >/dev/null; then
	on_tty keep envs delete acme p
	check "on a terminal, typing another name deletes nothing (exit 1)" \
		test "$KBT_RC" = 1 -a "$(env_state acme p)" = enabled
	on_tty p envs delete acme p
	check "on a terminal, typing the environment name deletes it" \
		test "$KBT_RC" = 0 -a "$(env_state acme p)" = pending_deletion
	expect_ok kb_admin envs undelete acme p
else
	kbt_skip "script (util-linux) is not installed: the typed confirmation is not tried"
fi
t0=$(kbt_now_us)
expect_ok kb_admin envs delete acme p --yes --json
FINAL=$(json 'd["delete_final_time_us"]' 2>/dev/null)
check_json "pending deletion, final 7 days on (deletion_window_days default), was enabled" \
	"d['state'] == 'pending_deletion' and d['state_before_deletion'] == 'enabled' and abs(d['delete_final_time_us'] - d['delete_request_time_us'] - 7 * 86400 * 10**6) == 0 and abs(d['delete_request_time_us'] - $t0) < 30 * 10**6"
when=$(kbt_fmt_us "$FINAL")
pend="pending deletion.*final at ${when:0:16}.*kbctl envs undelete acme p"
expect_fail FAILED_PRECONDITION -m "GetDataKey refused.*$pend" kb_svc acme p datakey get acme p
expect_fail FAILED_PRECONDITION -m "$pend" kb_svc acme p datakey get acme p --version 1
expect_fail FAILED_PRECONDITION -m "backup refused.*$pend" kb_admin envs backup acme p
expect_fail FAILED_PRECONDITION -m "restore of backup ${BK[p]}.*$pend" \
	kb_admin envs restore acme keep "${BK[p]}" --yes
expect_fail FAILED_PRECONDITION -m "applying the tenant key refused.*$pend" kb_admin envs apply-key acme p
expect_fail FAILED_PRECONDITION -m "reset refused.*$pend" kb_admin envs reset acme p --yes
expect_fail ALREADY_EXISTS -m "pending deletion.*name stays taken" kb_admin envs create acme p
expect_fail FAILED_PRECONDITION -m "already pending deletion.*final at" kb_admin envs delete acme p --yes
expect_fail FAILED_PRECONDITION -m "not pending deletion" kb_admin envs undelete acme keep
expect_ok kb_admin envs list acme --json
check_json "envs list shows it pending, with its final time" \
	"[(e['name'], e['state'], e['delete_final_time_us']) for e in items(d, 'environments') if e['name'] == 'p'] == [('p', 'pending_deletion', $FINAL)]"
expect_ok kb_admin envs list acme
check_out "the table says until when" "^p +platform +pending_deletion until ${when:0:10}"
check_eq "acme/keep still serves" "$(dek acme keep)" "${DEK[keep]}"
jump $((t0 + 3 * DAY))
sleep 2
check_eq "3 days later (two sweeps): still pending" "$(env_state acme p)" pending_deletion
expect_ok kb_admin envs undelete acme p --json
check_json "undeleted: enabled again, no deletion pending" \
	"d['state'] == 'enabled' and d['delete_final_time_us'] == 0"
check_eq "acme/p serves the same DEK again" "$(dek acme p)" "${DEK[p]}"
expect_ok kb_admin envs backups acme p --json
check_json "its backup is there" "[b['id'] for b in items(d, 'backups')] == ['${BK[p]}']"
# A forward clock jump past the final time, not confirmed: the sweeper
# makes nothing final, and the deletion can still be cancelled.
expect_ok kb_admin envs delete acme keep --yes --json
FK=$(json 'd["delete_final_time_us"]' 2>/dev/null)
kbt_clock_to $((FK + HOUR))
sleep 2
expect_ok kb_admin clock show --json
check_json "the clock jumped past the final time: the sweeper is paused" "d['sweeper_paused']"
check_eq "acme/keep is still pending deletion, not deleted" "$(env_state acme keep)" pending_deletion
expect_ok kb_admin envs undelete acme keep
check_eq "while the jump waits, the undelete is allowed: acme/keep serves its DEK" \
	"$(dek acme keep)" "${DEK[keep]}"
expect_ok kb_admin clock confirm --yes
expect_ok kb_as auditor audit list --tenant acme --env p --json
check_json "audited: requested (naming the final time) and undeleted" \
	"[(e['method'], '${when:0:16}' in e['reason']) for e in [e for e in d['events'] if e['method'].startswith('env.delete')][-2:]] == [('env.delete.requested', True), ('env.delete.undeleted', True)]"

kbt_section "past the window the sweeper destroys the data keys: every API refuses"
expect_ok kb_admin envs delete acme p --yes --json
FP=$(json 'd["delete_final_time_us"]' 2>/dev/null)
expect_ok kb_admin envs delete acme c --yes --json
FC=$(json 'd["delete_final_time_us"]' 2>/dev/null)
check_json "a customer environment too, same window" "d['state'] == 'pending_deletion' and d['mode'] == 'customer'"
stop_copy "$w/pending.db" # the attacker's copy, taken before the final deletion
kbt_start || kbt_done
jump $((FP - 120 * S))
sleep 3
check_eq "2 minutes before the final time: still pending" "$(env_state acme p)" pending_deletion
jump $((FC + 5 * S))
if wait_state acme p deleted 15 && wait_state acme c deleted 5; then
	kbt_pass "acme/p and acme/c are deleted once their window has ended"
else
	kbt_fail "acme/p and acme/c are deleted within 15 s of the final time" \
		"states: p $(env_state acme p), c $(env_state acme c)" "$(kbt_print_log)"
fi
for e in p c; do
	expect_fail NOT_FOUND -m 'deleted' kb_svc acme "$e" datakey get acme "$e"
	expect_fail NOT_FOUND kb_svc acme "$e" datakey get acme "$e" --version 1
	expect_fail FAILED_PRECONDITION -m "became final|is deleted" kb_admin envs undelete acme "$e"
	check_eq "acme/$e: no data key row left" \
		"$(sql "SELECT count(*) FROM deks d JOIN environments e ON e.id = d.env_id WHERE e.tenant_id = 'acme' AND e.name = '$e'")" 0
done
expect_fail FAILED_PRECONDITION -m "live-source rule.*deleted" \
	kb_admin envs restore acme keep "${BK[p]}" --yes
expect_fail FAILED_PRECONDITION -m "live-source rule.*deleted" \
	kb_admin envs restore acme c2 "${BK[c]}" --yes
expect_fail FAILED_PRECONDITION -m "live-source rule.*deleted" kb_admin envs copy acme c c2 --yes
kb_admin envs show acme p --json
check_json "envs show: deleted, and when it became final" \
	"d['state'] == 'deleted' and d['delete_final_time_us'] == $FP"
expect_ok kb_admin envs backups acme c
check_eq "its backups are no longer listed" "$(grep -c b- "$KBT_OUT")" 0
expect_ok kb_as auditor audit list --tenant acme --method env.delete.final --json
check_json "env.delete.final audited for p and c, by the broker" \
	"sorted(e['environment'] for e in d['events']) == ['c', 'p'] and all(e['actor'] == 'keybroker' for e in d['events'])"
check 'the log says so' grep -q 'acme/p DELETED: its deletion' "$KBT_LOG"
check_eq "the rest of the tenant is untouched" "$(dek acme c2)" "${DEK[c2]}"

kbt_section "attack: the copy's data key rows put back, before and after the bound"
stop_copy "$w/final.db"
graft "$w/pending.db" acme p
kbt_start || kbt_done
check_eq "before any platform rotation, a grafted platform row still opens (the README's bound)" \
	"$(dek acme p)" "${DEK[p]}"
kbt_stop
put_back "$w/final.db"
kbt_start || kbt_done
expect_ok kb_admin platform rotate-key --wait --json
check_json "the platform key is rotated" "d['state'] == 'done'"
stop_copy "$w/rotated.db"
put_back "$w/pending.db"
kbt_expect_no_start "the whole copy from before the final deletion, after the rotation: refused, its platform key is gone" \
	"$KBT_CONF" "platform key .* is not in token"
put_back "$w/rotated.db"
graft "$w/pending.db" acme p
kbt_start || kbt_done
expect_fail 'UNAVAILABLE|DATA_LOSS' kb_svc acme p datakey get acme p
check "after the rotation, the grafted platform row yields no DEK" test "$(dek acme p)" != "${DEK[p]}"
expect_fail 'UNAVAILABLE|DATA_LOSS|FAILED_PRECONDITION' kb_admin envs copy acme p keep --yes
kbt_stop
put_back "$w/rotated.db"
graft "$w/pending.db" acme c
kbt_start || kbt_done
check_eq "a grafted customer row still opens while its KEK's key is in the token (the bound)" \
	"$(dek acme c)" "${DEK[c]}"
kbt_stop
put_back "$w/rotated.db"
kbt_start || kbt_done

kbt_section "keys delete: refused while the key protects something, with the count"
expect_ok kb_admin keys generate acme --out "$w/k2.pfx" --password-file "$pw" --json
K2=$(json 'd["key"]["id"]' 2>/dev/null)
expect_ok kb_admin keys activate acme "$K2" --wait
check_eq "K1 is available now" "$(key_state acme "$K1")" available
expect_fail FAILED_PRECONDITION -m "is active: only an available.*activate another key first" \
	kb_admin keys delete acme "$K2" --yes
expect_fail FAILED_PRECONDITION -m "still protects 0 data key version\(s\), 0 KEK\(s\) and 1 backup\(s\)" \
	kb_admin keys delete acme "$K1" --yes
check_eq "refused: K1 is still available" "$(key_state acme "$K1")" available
expect_usage kb_admin keys delete acme "$K1"
expect_fail NOT_FOUND kb_admin keys delete acme k-0000000000000000 --yes
expect_ok kb_admin envs reset acme c2 --yes # its backup (under K1) goes with it
expect_ok kb_admin keys delete acme "$K1" --yes --json
KF=$(json 'd["delete_final_time_us"]' 2>/dev/null)
check_json "K1 is pending deletion, final in 7 days" \
	"d['state'] == 'pending_deletion' and d['delete_final_time_us'] - d['delete_request_time_us'] == 7 * 86400 * 10**6"
expect_fail FAILED_PRECONDITION -m "pending_deletion: only an available key can be activated.*undelete" \
	kb_admin keys activate acme "$K1"
expect_ok kb_admin keys undelete acme "$K1" --json
check_json "undeleted: available again" "d['state'] == 'available' and d['delete_final_time_us'] == 0"
expect_ok kb_admin keys delete acme "$K1" --yes --json
KF=$(json 'd["delete_final_time_us"]' 2>/dev/null)
expect_ok kb_admin keys list acme
check_out "keys list says until when" "pending_deletion until $(kbt_fmt_us "$KF" | cut -c1-10)"
ids=$(kbt_token_ids)
rc=$?
if ((rc == 2)); then
	kbt_skip "p11tool (gnutls-bin) is not installed: the token is not listed"
else
	check "K1's object is in the token while pending" grep -qx "$K1" <<<"$ids"
fi
jump $((KF + 5 * S))
if wait_key_state acme "$K1" deleted 15; then
	kbt_pass "K1 is deleted once its window has ended"
else
	kbt_fail "K1 is deleted within 15 s of its final time" "state $(key_state acme "$K1")" "$(kbt_print_log)"
fi
expect_fail FAILED_PRECONDITION -m "became final|not pending" kb_admin keys undelete acme "$K1"
if ((rc != 2)); then
	ids=$(kbt_token_ids)
	check "K1's token object is destroyed (p11tool lists no object with its id)" \
		bash -c "! grep -qx '$K1' <<<'$ids'"
	check "K2's is still there" grep -qx "$K2" <<<"$ids"
fi
expect_ok kb_as auditor audit list --tenant acme --method key.delete.final --json
check_json "key.delete.final audited, naming K1" "[e['key_id'] for e in d['events']] == ['$K1']"
# The copy from before the final deletion, grafted into today's database
# with the copy's key rows too (K1 active, its KEK active): the tenant was
# activated again since and the key that was active then is destroyed.
stop_copy "$w/keys.db"
graft "$w/pending.db" acme c
sqlite3 "$db" "ATTACH '$w/pending.db' AS o;
	DELETE FROM keys WHERE tenant_id = 'acme' AND id IN (SELECT id FROM o.keys);
	INSERT INTO keys SELECT * FROM o.keys WHERE tenant_id = 'acme';
	UPDATE keys SET state = 'deleted' WHERE id = '$K2';"
kbt_start || kbt_done
expect_fail 'UNAVAILABLE|DATA_LOSS' kb_svc acme c datakey get acme c
check "after the next activation and K1's final deletion, the grafted customer row yields no DEK" \
	test "$(dek acme c)" != "${DEK[c]}"
kbt_stop
put_back "$w/keys.db"
kbt_start || kbt_done

kbt_section "a locked environment can be deleted (the Dataverse case)"
expect_ok kb_admin tenants create beta
expect_ok kb_admin envs create beta lc
expect_ok kb_admin keys generate beta --out "$w/b.pfx" --password-file "$pw" --json
BK1=$(json 'd["key"]["id"]' 2>/dev/null)
expect_ok kb_admin keys activate beta "$BK1" --wait
expect_ok kb_admin envs apply-key beta lc
jump $(($(kbt_now_us) + 73 * HOUR))
expect_ok kb_admin tenants lock beta --key "$w/b.pfx" --password-file "$pw" --yes
jump $(($(kbt_now_us) + 2 * HOUR))
expect_ok kb_admin tenants unlock beta --key "$w/b.pfx" --password-file "$pw"
check_eq "the tenant is unlocked, beta/lc stays locked (not unlocked one by one)" \
	"$(env_state beta lc)" locked
expect_fail FAILED_PRECONDITION -m 'locked-environments rule' \
	kb_admin keys generate beta --out "$w/b2.pfx" --password-file "$pw"
expect_ok kb_admin envs delete beta lc --yes --json
check_json "a locked environment: pending deletion, was locked" \
	"d['state'] == 'pending_deletion' and d['state_before_deletion'] == 'locked'"
FL=$(json 'd["delete_final_time_us"]' 2>/dev/null)
expect_fail FAILED_PRECONDITION -m 'unlock refused.*pending deletion' kb_admin envs unlock beta lc
expect_ok kb_admin envs undelete beta lc --json
check_json "undelete gives it back locked" "d['state'] == 'locked'"
expect_fail FAILED_PRECONDITION -m 'environment locked' kb_svc beta lc datakey get beta lc
expect_ok kb_admin envs delete beta lc --yes --json
FL=$(json 'd["delete_final_time_us"]' 2>/dev/null)
jump $((FL + 5 * S))
if wait_state beta lc deleted 15; then
	kbt_pass "beta/lc is deleted once its window has ended"
else
	kbt_fail "beta/lc is deleted within 15 s" "state $(env_state beta lc)" "$(kbt_print_log)"
fi
kb_admin tenants show beta --json
check_json "beta has no locked environment left" "d['locked_environment_count'] == 0"
expect_ok kb_admin keys generate beta --out "$w/b2.pfx" --password-file "$pw"

kbt_section "quorum: DeleteEnvironment and DeleteKey wait for approval"
"$KB_SRC/deploy/pki.sh" admin alice >/dev/null || kbt_fail "pki.sh admin alice"
expect_ok kb_admin quorum set acme --approvals 1 --approvers alice,bob --json
expect_ok kb_admin envs delete acme keep --yes --json
check_json "DeleteEnvironment is a request (exit 0, top-level request_id)" \
	"d['request_id'].startswith('r-') and d['method'] == 'DeleteEnvironment' and d['state'] == 'pending'"
rq=$(json 'd["request_id"]' 2>/dev/null)
check_eq "acme/keep is not deleted: it still serves" "$(dek acme keep)" "${DEK[keep]}"
expect_ok kb_as admin-alice approvals approve "$rq" --json
check_json "alice approves: the request ran" "d['state'] == 'executed'"
check_eq "acme/keep is pending deletion now" "$(env_state acme keep)" pending_deletion
expect_ok kb_admin envs undelete acme keep
check_eq "undelete is not covered: acme/keep serves again" "$(dek acme keep)" "${DEK[keep]}"
expect_ok kb_admin keys generate acme --out "$w/k3.pfx" --password-file "$pw" --json
K3=$(json 'd["key"]["id"]' 2>/dev/null)
rq=$(json 'd["request_id"]' 2>/dev/null)
check_eq "under the quorum a new key waits for approval" "$(key_state acme "$K3")" pending_approval
expect_ok kb_as admin-alice approvals approve "$rq" --json
check_eq "approved: K3 is available" "$(key_state acme "$K3")" available
expect_ok kb_admin keys delete acme "$K3" --yes --json
rq=$(json 'd["request_id"]' 2>/dev/null)
check_eq "DeleteKey is a request: K3 is still available" "$(key_state acme "$K3")" available
expect_ok kb_as admin-alice approvals approve "$rq" --json
check_json "approved: the request ran" "d['state'] == 'executed'"
check_eq "K3 is pending deletion" "$(key_state acme "$K3")" pending_deletion
expect_ok kb_as auditor audit list --request "$rq" --page-size 1000 --json
check_json "the request's story: requested, started, key.delete.requested, ok" \
	"[(e['method'], e['result']) for e in d['events'] if e['method'] in ('DeleteKey', 'key.delete.requested')] == [('DeleteKey', 'requested'), ('DeleteKey', 'started'), ('key.delete.requested', 'ok'), ('DeleteKey', 'ok')]"

expect_ok kb_as auditor audit verify --online
kbt_stop
kbt_done
