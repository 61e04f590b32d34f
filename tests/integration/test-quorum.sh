#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-quorum.sh: no single admin can destroy a tenant (issue 15). A quorum
# of 2 of alice, bob and carol on tenant acme (keybrokerd-testclock,
# approval_ttl_s = 96 h):
# - a lock requested by alice is a request (kbctl exits 0; --json has a
#   top-level request_id; the proof is verified then, only its fingerprint
#   kept); alice's own approval is refused; bob's is 1 of 2 and nothing
#   happens; a second certificate with CN bob counts no more;
# - a lock approved by bob and carol before the 72 h rule allows it fails
#   with that rule (rules are checked at execution); the request made at
#   the same time, approved after 73 h, locks the tenant;
# - a deny by one approver cancels; a request past approval_ttl_s cannot be
#   approved (and is audited as expired);
# - an approval row inserted by hand (a real seal copied from another
#   request) is not counted;
# - turning the quorum off by one admin alone is a request, not a change;
# - 'approvals watch' prints a new request within 1 s;
# - 'audit list --request ID' tells a request's story.
# Run: bash tests/integration/test-quorum.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

kbt_setup_testclock approval_ttl_s=345600
db=$KBT_DIR/keybroker.db
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "quorum password"

kbt_start || kbt_done
for a in alice bob carol; do
	"$KB_SRC/deploy/pki.sh" admin "$a" >/dev/null || kbt_fail "pki.sh admin $a"
done
# A second certificate for CN bob (limited to acme): the first one kept.
cp "$KBT_PKI/admin-bob.crt" "$w/bob1.crt"
cp "$KBT_PKI/admin-bob.key" "$w/bob1.key"
"$KB_SRC/deploy/pki.sh" admin bob acme >/dev/null || kbt_fail "pki.sh admin bob acme"
mv "$KBT_PKI/admin-bob.crt" "$w/bob2.crt"
mv "$KBT_PKI/admin-bob.key" "$w/bob2.key"
alice() { kb_as admin-alice "$@"; }
bob() { kb_as "$w/bob1" "$@"; }
bob2() { kb_as "$w/bob2" "$@"; }
carol() { kb_as admin-carol "$@"; }
req_id() { json 'd["request_id"]' 2>/dev/null; }
tenant_state() { kb_admin tenants show acme --json && json 'd["state"]' 2>/dev/null; }

kbt_section "a tenant with an active key; no quorum yet: today's behaviour"
kbt_tenant_keyed acme "$w/acme.pfx" "$pw" c1 p
expect_ok kb_admin quorum show acme --json
check_json "quorum show: off by default" "d['approvals'] == 0 and d['inherited']"
check "schema 5 or later" test "$(sqlite3 "$db" 'PRAGMA user_version')" -ge 5

kbt_section "quorum set acme: 2 of alice, bob, carol"
expect_usage kb_admin quorum set --approvals 2
expect_usage kb_admin quorum set acme --platform --approvals 2
expect_fail INVALID_ARGUMENT -m 'the requester never counts' \
	kb_admin quorum set acme --approvals 2 --approvers alice,bob
expect_ok kb_admin quorum set acme --approvals 2 --approvers alice,bob,carol --json
check_json "the policy is stored" "d['approvals'] == 2 and d['approvers'] == ['alice', 'bob', 'carol']"
expect_ok kb_admin quorum show acme
check_out "quorum show says it" '^quorum: 2 approval'

kbt_section "a lock by alice is a request: exit 0, --json request_id, no secret kept"
kbt_secret_file "$w/badpw" "not the password"
expect_fail INVALID_ARGUMENT -m 'password' \
	alice tenants lock acme --key "$w/acme.pfx" --password-file "$w/badpw" --yes
check_eq "a proof that does not verify makes no request" \
	"$(sqlite3 "$db" 'SELECT count(*) FROM approval_requests')" 0
expect_ok alice tenants lock acme --key "$w/acme.pfx" --password-file "$pw" --yes --json
early=$(req_id)
check_json "a pending LockTenant request by alice, 2 needed, the proof's fingerprint kept" \
	"d['state'] == 'pending' and d['method'] == 'LockTenant' and d['requester'] == 'alice' and d['approvals_needed'] == 2 and len(d['proof_fingerprint']) == 64 and 'password' not in d['arguments']"
expect_ok alice tenants lock acme --key "$w/acme.pfx" --password-file "$pw" --yes
check_out "kbctl prints the request" '^request_id: r-[0-9a-f]{24}$'
lock=$(sed -n 's/^request_id: //p' "$KBT_OUT")
check_eq "the tenant is not locked" "$(tenant_state)" active
check_eq "no password or key file in the database" \
	"$(sqlite3 "$db" "SELECT count(*) FROM approval_requests WHERE instr(call, CAST('quorum password' AS BLOB)) > 0 OR length(call) > 200")" 0

kbt_section "the rules: the requester never counts, one CN counts once"
expect_fail PERMISSION_DENIED -m 'requester never counts' alice approvals approve "$lock"
expect_ok bob approvals approve "$lock" --json
check_json "bob: 1 of 2, still pending" "d['state'] == 'pending' and [a['approver'] for a in d['approvals']] == ['bob']"
check_eq "nothing happened" "$(tenant_state)" active
expect_fail ALREADY_EXISTS -m 'counts once' bob2 approvals approve "$lock"
expect_ok kb_admin approvals show "$lock" --json
check_json "still 1 of 2" "d['state'] == 'pending' and len(d['approvals']) == 1"

kbt_section "rules are checked at execution: approved before the 72 h rule allows it"
expect_ok bob approvals approve "$early"
expect_ok carol approvals approve "$early" --json
check_json "the M-th approval ran it: failed with the 72 h rule" \
	"d['state'] == 'failed' and 'FAILED_PRECONDITION' in d['result'] and '72' in d['result']"
check_eq "not locked" "$(tenant_state)" active
expect_fail FAILED_PRECONDITION -m 'is failed' bob approvals approve "$early"

kbt_section "one deny cancels"
expect_ok alice envs reset acme p --yes --json
deny=$(req_id)
expect_ok bob approvals deny "$deny" --json
check_json "denied by bob" "d['state'] == 'denied' and 'bob' in d['result']"
expect_fail FAILED_PRECONDITION -m 'is denied' carol approvals approve "$deny"

kbt_section "an approval row inserted by hand is not counted"
expect_ok alice envs reset acme p --yes --json
forged=$(req_id)
sqlite3 -cmd ".timeout 5000" "$db" "INSERT INTO approvals(request_id, approver, decision, time_us, seal) SELECT '$forged', 'bob', decision, time_us, seal FROM approvals WHERE request_id = '$lock' AND approver = 'bob'" ||
	kbt_fail "sqlite3 insert"
check_eq "the row is in the table" "$(sqlite3 "$db" "SELECT count(*) FROM approvals WHERE request_id = '$forged'")" 1
expect_ok carol approvals approve "$forged" --json
check_json "carol's is the only one counted: 1 of 2, not run" \
	"d['state'] == 'pending' and [a['approver'] for a in d['approvals']] == ['carol']"
check_out "the environment was not reset" '"state": "pending"'
check "the broker logged the forged row" grep -q "approve of bob on request $forged fails its integrity check" "$KBT_LOG"

kbt_section "turning the quorum off alone is a request"
expect_ok alice quorum set acme --approvals 0 --json
off=$(req_id)
check_json "a SetQuorum request" "d['method'] == 'SetQuorum' and d['state'] == 'pending'"
expect_ok kb_admin quorum show acme --json
check_json "the quorum is still 2" "d['approvals'] == 2"

kbt_section "approvals watch sees a new request within 1 s"
KB_CERT=$KBT_PKI/admin-carol.crt KB_KEY=$KBT_PKI/admin-carol.key \
	"$KB_BUILD/kbctl" --json approvals watch >"$w/watch.out" 2>"$w/watch.err" &
watch=$!
sleep 1
expect_ok alice envs reset acme p --yes --json
watched=$(req_id)
t0=$(date +%s%3N)
seen=
while (($(date +%s%3N) - t0 < 3000)); do
	grep -q "$watched" "$w/watch.out" && { seen=$(($(date +%s%3N) - t0)); break; }
	sleep 0.05
done
kill "$watch" 2>/dev/null
wait "$watch" 2>/dev/null
if [[ -n $seen ]] && ((seen <= 1000)); then
	kbt_pass "watch printed request $watched ${seen} ms after kbctl returned"
else
	kbt_fail "watch did not print $watched within 1 s" "$(cat "$w/watch.out" "$w/watch.err")"
fi
check "watch printed a JSON line with request_id and method" "$KBT_PY" -c \
	"import json,sys; l=[json.loads(x) for x in open('$w/watch.out')]; sys.exit(not any(d['request_id']=='$watched' and d['method']=='ResetEnvironment' for d in l))"

kbt_section "after 73 h: the lock requested before, approved now, locks"
kbt_clock_set $((73 * 3600))
expect_ok carol approvals approve "$lock" --json
check_json "executed: ok" "d['state'] == 'executed' and d['result'] == 'ok'"
check_eq "the tenant is locked" "$(tenant_state)" locked

kbt_section "past approval_ttl_s (96 h) a request cannot be approved"
kbt_clock_set $((97 * 3600))
expect_fail FAILED_PRECONDITION -m 'is expired' bob approvals approve "$off"
expect_ok kb_admin quorum show acme --json
check_json "the quorum is still 2" "d['approvals'] == 2"

kbt_section "audit list --request tells the story"
expect_ok kb_as auditor audit list --request "$lock" --page-size 1000 --json
check_json "requested, refused approvals, approvals, started and ok" \
	"[(e['method'], e['result'], e['actor']) for e in d['events']] == [('LockTenant','requested','alice'), ('ApproveRequest','denied','alice'), ('ApproveRequest','ok','bob'), ('ApproveRequest','error','bob'), ('LockTenant','started','carol'), ('LockTenant','ok','carol'), ('ApproveRequest','ok','carol')]"
expect_ok kb_as auditor audit list --request "$off" --page-size 1000 --json
check_json "the expiry is audited" "any(e['method'] == 'quorum.expire' for e in d['events'])"
expect_ok kb_as auditor audit verify --online
kbt_done
