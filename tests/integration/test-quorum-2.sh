#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-quorum-2.sh: the quorum's second part (issue 15). A quorum of 2 of
# alice, bob, carol and dave on tenant acme, limited to GenerateKey,
# UploadKey, ActivateKey and RestoreBackup (keybrokerd-testclock,
# approval_ttl_s = 96 h):
# - the operations list: refused names, shown by 'quorum show', the default
#   (all), an operation left out runs at once; removing one or lowering the
#   quorum is a request; a policy change approved after another one ran
#   fails (its target changed);
# - GenerateKey/UploadKey with a key active: the key is made at once in
#   state pending_approval (the .pfx still goes back once; no password is
#   kept), it cannot be activated until approved; approval makes it
#   available; a deny or an expiry destroys its token object;
# - rules at execution: an ActivateKey approved after an environment got
#   locked fails naming the locked environments; a request whose target
#   changed (another key activated meanwhile; the environment reset) fails
#   naming what changed;
# - attacks on the database: a denied request set back to pending, an
#   executed one set back to pending, a whole row rolled back to an older
#   copy (its approval deleted), an expired one with its expire_time_us
#   moved: none is decided, none runs twice;
# - a key left pending_approval by a broker killed before its request was
#   stored is deleted by the sweeper;
# - 'audit list --request ID' tells each of these stories.
# Run: bash tests/integration/test-quorum-2.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

HOUR=3600
kbt_setup_testclock approval_ttl_s=345600
db=$KBT_DIR/keybroker.db
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "quorum two password"

kbt_start || kbt_done
for a in alice bob carol dave; do
	"$KB_SRC/deploy/pki.sh" admin "$a" >/dev/null || kbt_fail "pki.sh admin $a"
done
alice() { kb_as admin-alice "$@"; }
bob() { kb_as admin-bob "$@"; }
carol() { kb_as admin-carol "$@"; }
dave() { kb_as admin-dave "$@"; }
req_id() { json 'd["request_id"]' 2>/dev/null; }
tenant_field() { kb_admin tenants show acme --json && json "d['$1']" 2>/dev/null; }
key_state() { kb_admin keys show acme "$1" --json && json 'd["state"]' 2>/dev/null; }
req_field() { kb_admin approvals show "$1" --json && json "d['$2']" 2>/dev/null; }
in_token() { kbt_token_ids | grep -qx "$1"; }
sql() { sqlite3 -cmd ".timeout 5000" "$db" "$@"; }
# approve2 ID: bob's approval, then carol's (the second runs it).
approve2() {
	expect_ok bob approvals approve "$1"
	expect_ok carol approvals approve "$1" --json
}
story() { # story ID: the request's events as (method, result, actor)
	kb_as auditor audit list --request "$1" --page-size 1000 --json
}
if kbt_token_ids >/dev/null; then have_p11tool=1; else have_p11tool=; fi

kbt_section "a tenant with an active key, a second key, a backup; no quorum yet"
expect_ok kb_admin tenants create acme
expect_ok kb_admin envs create acme c1
expect_ok kb_admin envs create acme p
expect_ok kb_admin keys generate acme --out "$w/k1.pfx" --password-file "$pw" --json
k1=$(json 'd["key"]["id"]' 2>/dev/null)
expect_ok kb_admin keys activate acme "$k1" --wait
expect_ok kb_admin envs apply-key acme c1
expect_ok kb_admin keys generate acme --out "$w/k6.pfx" --password-file "$pw" --json
k6=$(json 'd["key"]["id"]' 2>/dev/null)
expect_ok kb_admin envs backup acme c1 --json
bk=$(json 'd["id"]' 2>/dev/null)
expect_ok kb_admin keys generate acme --out "$w/k0.pfx" --password-file "$pw" --json
check_json "without a quorum a new key is available at once, no request" \
	"d['key']['state'] == 'available' and 'request_id' not in d"
check "schema 8 or later (the second quorum migration)" test "$(sql 'PRAGMA user_version')" -ge 8

kbt_section "the operations list: checked, stored, shown"
expect_fail INVALID_ARGUMENT -m 'not one a quorum covers.*GenerateKey.*SetQuorum' \
	kb_admin quorum set acme --approvals 2 --approvers alice,bob,carol,dave --operations LockTenant,Nope
expect_fail INVALID_ARGUMENT -m '"GetKey" is not one a quorum covers' \
	kb_admin quorum set acme --approvals 2 --operations GetKey
expect_fail INVALID_ARGUMENT -m 'operations given with approvals 0' \
	kb_admin quorum set acme --approvals 0 --operations LockTenant
expect_ok kb_admin quorum show --platform --json
check_json "the default covers every operation, those added later too" \
	"d['all_operations'] and d['operations'][:3] == ['GenerateKey', 'UploadKey', 'ActivateKey'] and {'SetQuorum', 'LockTenant', 'DeleteEnvironment', 'DeleteKey', 'RetireDataKeys'} <= set(d['operations'])"
expect_ok kb_admin quorum show --platform
check_out "quorum show says all" '^operations: +all$'
expect_ok kb_admin quorum set acme --approvals 2 --approvers alice,bob,carol,dave \
	--operations RestoreBackup,ActivateKey,GenerateKey,UploadKey --json
check_json "stored in the table's order, SetQuorum always covered" \
	"d['operations'] == ['GenerateKey', 'UploadKey', 'ActivateKey', 'RestoreBackup', 'SetQuorum'] and not d['all_operations']"
expect_ok kb_admin quorum show acme
check_out "quorum show lists them" '^operations: +GenerateKey, ?UploadKey, ?ActivateKey, ?RestoreBackup, ?SetQuorum$'
expect_ok kb_admin quorum show acme --json
check_json "the tenant's own policy, not the platform default" "not d['inherited'] and d['approvals'] == 2"
expect_ok alice envs reset acme p --yes --json
check_json "ResetEnvironment, left out, runs at once" "'request_id' not in d and d['name'] == 'p'"

kbt_section "GenerateKey with a key active: the key is pending_approval, the .pfx returned"
kbt_clock_set $((25 * HOUR))
expect_ok alice keys generate acme --out "$w/k2.pfx" --password-file "$pw" --json
check_json "state pending_approval, a request id at the top level and in the key" \
	"d['key']['state'] == 'pending_approval' and d['request_id'].startswith('r-') and d['key']['request_id'] == d['request_id']"
g1=$(req_id)
k2=$(json 'd["key"]["id"]' 2>/dev/null)
check "the .pfx was saved, mode 0600" test "$(stat -c %a "$w/k2.pfx")" = 600 -a -s "$w/k2.pfx"
check "the .pfx opens with its password" \
	openssl pkcs12 -in "$w/k2.pfx" -passin "file:$pw" -noout
if [[ -n $have_p11tool ]]; then
	check "the key is in the token" in_token "$k2"
fi
expect_ok kb_admin approvals show "$g1" --json
check_json "a pending GenerateKey request holding the key, no password in it" \
	"d['method'] == 'GenerateKey' and d['state'] == 'pending' and d['key_id'] == '$k2' and d['requester'] == 'alice' and 'password' not in d['arguments']"
check_eq "no password in the database" \
	"$(sql "SELECT count(*) FROM approval_requests WHERE instr(call, CAST('quorum two password' AS BLOB)) > 0")" 0
expect_ok kb_admin keys list acme --json
check_json "keys list shows it pending_approval" \
	"[k['state'] for k in d['keys'] if k['id'] == '$k2'] == ['pending_approval']"

kbt_section "a pending_approval key cannot be activated"
expect_ok alice keys activate acme "$k2" --json
a1=$(req_id)
approve2 "$a1"
check_json "the approved activation fails: the key waits for approval" \
	"d['state'] == 'failed' and 'pending_approval' in d['result'] and 'approved' in d['result']"
check_eq "k1 is still active" "$(tenant_field active_key_id)" "$k1"

kbt_section "approval makes it available"
expect_ok bob approvals approve "$g1" --json
check_json "1 of 2" "d['state'] == 'pending'"
check_eq "still pending_approval" "$(key_state "$k2")" pending_approval
# The row as it is now (pending, bob's approval): kept for the rollback below.
sql "ATTACH '$w/old.db' AS o; CREATE TABLE o.r AS SELECT * FROM approval_requests WHERE id = '$g1'" ||
	kbt_fail "sqlite3 copy"
expect_ok carol approvals approve "$g1" --json
check_json "executed" "d['state'] == 'executed' and d['result'] == 'ok'"
check_eq "k2 is available" "$(key_state "$k2")" available

kbt_section "UploadKey with a key active: pending_approval; one deny destroys it"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$w/k3.pem" -out "$w/k3.crt" \
	-subj /CN=k3 -days 2 2>/dev/null || kbt_fail "openssl req"
openssl pkcs12 -export -inkey "$w/k3.pem" -in "$w/k3.crt" -name k3 \
	-passout "file:$pw" -out "$w/k3.pfx" || kbt_fail "openssl pkcs12"
expect_ok alice keys upload acme "$w/k3.pfx" --password-file "$pw" --json
check_json "pending_approval, with request_id" "d['state'] == 'pending_approval' and d['request_id'].startswith('r-')"
u1=$(req_id)
k3=$(json 'd["id"]' 2>/dev/null)
if [[ -n $have_p11tool ]]; then
	check "the uploaded key is in the token" in_token "$k3"
fi
expect_ok bob approvals deny "$u1" --json
check_json "denied by bob" "d['state'] == 'denied' and 'bob' in d['result']"
check_eq "the key is deleted" "$(key_state "$k3")" deleted
if [[ -n $have_p11tool ]]; then
	check "its token object is destroyed" eval "! in_token $k3"
fi
expect_fail FAILED_PRECONDITION -m 'is denied' carol approvals approve "$u1"

kbt_section "a request whose target changed: another key activated meanwhile"
expect_ok alice keys activate acme "$k6" --json
a2=$(req_id)
expect_ok alice keys activate acme "$k2" --json
a3=$(req_id)
approve2 "$a3"
check_json "k2's activation ran" "d['state'] == 'executed'"
for _ in $(seq 50); do
	[[ $(tenant_field active_key_id) == "$k2" ]] && break
	sleep 0.1
done
check_eq "k2 is active" "$(tenant_field active_key_id)" "$k2"
approve2 "$a2"
check_json "k6's fails, naming the key it was made against and the one now" \
	"d['state'] == 'failed' and 'target changed' in d['result'] and 'active key $k1' in d['result'] and 'active key $k2' in d['result']"
check_eq "k2 stays active" "$(tenant_field active_key_id)" "$k2"

kbt_section "a request whose target changed: the environment reset meanwhile"
for _ in $(seq 50); do
	kb_admin envs show acme c1 --json && [[ $(json 'd["key_id"]') == "$k2" ]] && break
	sleep 0.1
done
expect_ok alice envs restore acme c1 "$bk" --yes --json
r1=$(req_id)
check_json "a RestoreBackup request" "d['method'] == 'RestoreBackup' and d['state'] == 'pending'"
expect_ok kb_admin envs reset acme c1 --yes
approve2 "$r1"
check_json "it fails: the environment is not what it was" \
	"d['state'] == 'failed' and 'target changed' in d['result'] and 'c1' in d['result'] and 'platform' in d['result']"

kbt_section "an ActivateKey approved after an environment got locked fails, naming them"
expect_ok kb_admin envs apply-key acme c1
expect_ok alice keys activate acme "$k6" --json
a4=$(req_id)
# 72 h after the last key change (k3's upload at 25 h): lock and unlock,
# neither covered by this quorum; c1 stays locked.
kbt_clock_set $((98 * HOUR))
expect_ok alice tenants lock acme --key "$w/k2.pfx" --password-file "$pw" --yes
check_eq "locked" "$(tenant_field state)" locked
check_eq "the lock destroyed the available key k6" "$(key_state "$k6")" deleted
kbt_clock_set $((99 * HOUR + 60))
expect_ok kb_admin tenants unlock acme --key "$w/k2.pfx" --password-file "$pw"
check_eq "k2 active again" "$(tenant_field active_key_id)" "$k2"
kb_admin envs show acme c1 --json
check_json "c1 is still locked" "d['state'] == 'locked'"
approve2 "$a4"
check_json "failed with the locked-environment rule" \
	"d['state'] == 'failed' and 'FAILED_PRECONDITION' in d['result'] and 'locked' in d['result'] and 'target changed' not in d['result']"
expect_fail FAILED_PRECONDITION -m 'locked' alice keys generate acme --out "$w/kx.pfx" --password-file "$pw"
expect_ok kb_admin envs unlock acme c1

kbt_section "attack: a denied request set back to pending"
sql "UPDATE approval_requests SET state = 'pending', result = '' WHERE id = '$u1'" || kbt_fail "sqlite3"
expect_fail DATA_LOSS -m 'state .*fails its integrity check' carol approvals approve "$u1"
expect_ok kb_admin approvals list --tenant acme --json
check_json "approvals list does not show it" "'$u1' not in [r['request_id'] for r in d['requests']]"

kbt_section "attack: an executed request set back to pending"
sql "UPDATE approval_requests SET state = 'pending', result = '' WHERE id = '$g1'" || kbt_fail "sqlite3"
expect_fail DATA_LOSS -m 'state .*fails its integrity check' dave approvals approve "$g1"

kbt_section "attack: an executed request rolled back whole (its older row, carol's approval deleted)"
sql "ATTACH '$w/old.db' AS o; DELETE FROM approval_requests WHERE id = '$g1';
	INSERT INTO approval_requests SELECT * FROM o.r;
	DELETE FROM approvals WHERE request_id = '$g1' AND approver = 'carol'" || kbt_fail "sqlite3"
expect_ok kb_admin approvals show "$g1" --json
check_json "the old row passes its seals: pending, 1 of 2" "d['state'] == 'pending' and len(d['approvals']) == 1"
expect_ok carol approvals approve "$g1" --json
check_json "the second approval does not run it again: its one-time object is gone" \
	"d['state'] == 'failed' and 'left pending before' in d['result']"
check_eq "k2 untouched (active)" "$(key_state "$k2")" active
check "the broker logged the replay" grep -q "request $g1 left pending before" "$KBT_LOG"

kbt_section "a pending request's state seal removed: it cannot be decided"
expect_ok alice keys activate acme "$k2" --json
a5=$(req_id)
sql "UPDATE approval_requests SET state_seal = NULL WHERE id = '$a5'" || kbt_fail "sqlite3"
expect_fail FAILED_PRECONDITION -m 'before request states were sealed' bob approvals approve "$a5"

kbt_section "a staged key's request expires: its token object is destroyed"
expect_ok alice keys generate acme --out "$w/k7.pfx" --password-file "$pw"
check_out "kbctl says the key waits for approval" '^Key k-[0-9a-f]+ is pending_approval: it cannot be activated until request r-'
g2=$(sed -n 's/^request_id: *//p' "$KBT_OUT")
k7=$(sed -n 's/^id: *//p' "$KBT_OUT")
check "the text output names the request and the key" test -n "$g2" -a -n "$k7"
kbt_clock_set $((99 * HOUR + 97 * HOUR))
# Nobody reads the request: the sweeper (every second here) expires it.
for _ in $(seq 100); do
	[[ $(key_state "$k7") == deleted ]] && break
	sleep 0.1
done
check_eq "the sweeper expired it: the key is deleted" "$(key_state "$k7")" deleted
expect_fail FAILED_PRECONDITION -m 'is expired' bob approvals approve "$g2"
if [[ -n $have_p11tool ]]; then
	check "its token object is destroyed" eval "! in_token $k7"
fi

kbt_section "attack: an expired request with its expire_time_us moved"
sql "UPDATE approval_requests SET state = 'pending', expire_time_us = expire_time_us + 1000000000000 WHERE id = '$g2'" ||
	kbt_fail "sqlite3"
expect_fail DATA_LOSS -m 'fails its integrity check' bob approvals approve "$g2"
sql "UPDATE approval_requests SET state = 'expired' WHERE id = '$g2'" || kbt_fail "sqlite3"
expect_fail DATA_LOSS -m 'fails its integrity check' bob approvals approve "$g2"

kbt_section "removing an operation or lowering the quorum needs the quorum"
expect_ok alice quorum set acme --approvals 2 --approvers alice,bob,carol,dave \
	--operations GenerateKey,UploadKey --json
s1=$(req_id)
check_json "removing ActivateKey and RestoreBackup is a request" "d['method'] == 'SetQuorum' and d['state'] == 'pending'"
expect_ok alice quorum set acme --approvals 1 --approvers alice,bob,carol,dave --json
s2=$(req_id)
check_json "lowering to 1 is a request" "d['method'] == 'SetQuorum' and d['state'] == 'pending'"
expect_ok kb_admin quorum show acme --json
check_json "nothing changed yet" "d['approvals'] == 2 and 'ActivateKey' in d['operations']"
approve2 "$s1"
check_json "approved: executed" "d['state'] == 'executed'"
expect_ok kb_admin quorum show acme --json
check_json "ActivateKey and RestoreBackup left out" \
	"d['operations'] == ['GenerateKey', 'UploadKey', 'SetQuorum'] and d['approvals'] == 2"
# (The reset destroyed the backup: the handler says so, no request is made.)
expect_fail NOT_FOUND -m 'does not exist' alice envs restore acme c1 "$bk" --yes
approve2 "$s2"
check_json "the other change, asked of the policy before, fails" \
	"d['state'] == 'failed' and 'target changed' in d['result'] and 'policy of' in d['result']"
expect_ok kb_admin quorum show acme --json
check_json "still 2" "d['approvals'] == 2"

kbt_section "a broker killed between staging a key and storing its request"
kbt_stop
KB_TEST_CRASH_AT=quorum-key-staged kbt_start || kbt_done
alice keys generate acme --out "$w/k8.pfx" --password-file "$pw" --json
check "the call dies where the key is stored and its request is not (kbctl fails: $KBT_RC)" test "$KBT_RC" != 0
wait "$KBT_PID" 2>/dev/null
KBT_PID=
k8=$(sql "SELECT id FROM keys WHERE state = 'pending_approval'")
check "a pending_approval key is left, held by no request" test -n "$k8" -a \
	"$(sql "SELECT count(*) FROM approval_requests WHERE key_id = '$k8'")" = 0
kbt_start || kbt_done
for _ in $(seq 100); do
	[[ $(key_state "$k8") == deleted ]] && break
	sleep 0.1
done
check_eq "the sweeper deletes the key no request holds" "$(key_state "$k8")" deleted
if [[ -n $have_p11tool ]]; then
	check "its token object is destroyed" eval "! in_token $k8"
fi
kb_as auditor audit list --method quorum.key_destroyed --page-size 1000 --json
check_json "audited as the broker's, naming the key" \
	"any(e['key_id'] == '$k8' and e['actor'] == 'keybroker' and 'no approval request holds it' in e['reason'] for e in d['events'])"

kbt_section "audit list --request tells each story"
story "$g1"
check_json "GenerateKey: requested with its key, approvals, the commit, the replay refused" \
	"[(e['method'], e['result'], e['actor']) for e in d['events'] if e['method'] != 'ApproveRequest' or e['result'] == 'ok'] == [('GenerateKey','started','alice'), ('GenerateKey','requested','alice'), ('ApproveRequest','ok','bob'), ('GenerateKey','started','carol'), ('GenerateKey','ok','carol'), ('ApproveRequest','ok','carol'), ('quorum.replay','denied','carol'), ('ApproveRequest','ok','carol')] and all(e['key_id'] == '$k2' for e in d['events'][1:] if e['method'].startswith(('GenerateKey', 'quorum')))"
check_json "the edited state's refused approval is in it" \
	"any(e['method'] == 'ApproveRequest' and e['actor'] == 'dave' and 'integrity' in e['reason'] for e in d['events'])"
story "$u1"
check_json "UploadKey: requested, denied, the key destroyed, the forged approval refused" \
	"[(e['method'], e['result']) for e in d['events']] == [('UploadKey','started'), ('UploadKey','requested'), ('quorum.key_destroyed','ok'), ('DenyRequest','ok'), ('ApproveRequest','denied'), ('ApproveRequest','error')]"
story "$g2"
check_json "expiry, by the broker itself: quorum.expire then the key destroyed" \
	"[(e['method'], e['actor']) for e in d['events'] if e['method'].startswith('quorum')] == [('quorum.expire', 'keybroker'), ('quorum.key_destroyed', 'keybroker')]"
story "$a4"
check_json "the locked-environment failure is recorded with its reason" \
	"any(e['method'] == 'ActivateKey' and e['result'] == 'denied' and 'locked' in e['reason'] for e in d['events'])"
story "$a2"
check_json "the changed target is recorded with its reason" \
	"any(e['method'] == 'ActivateKey' and e['result'] == 'denied' and 'target changed' in e['reason'] for e in d['events'])"
expect_ok kb_as auditor audit verify --online
kbt_done
