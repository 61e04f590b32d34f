#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-census.sh: the key census, key retirement and DEK rotation per
# environment (issue 14), against a real broker and token.
#
# 1. Census: 1,030 environments with mixed keys: tenant plat (500 seeded
#    platform-managed), tenant cust (an active key; 30 created through the
#    API, 20 of them customer-managed, then 300 seeded under a second KEK of
#    the same key), tenant ret (an available key kOld, the active key kNew
#    with 20 customer-managed environments, then 180 seeded under a KEK of
#    kOld: what an activation cut short leaves behind, which the API alone
#    cannot produce on purpose); some rotated DEKs, some backups. The
#    census of every key (kbctl keys show --json) equals an independent
#    count with sqlite3, and the numbers the test built; the counts of all
#    keys add up to every DEK row.
# 2. Retirement: refused for the active key and the current platform key;
#    refused, naming the count, while one of kOld's environments is locked
#    (which 'envs unlock' cannot move either: it is not under the active
#    key); once the 28-day sweeper deleted it (test clock), done: kOld's
#    census is 0, it is retired and pending deletion (cannot be activated;
#    undelete gives it back retired), its KEK destroyed, and every
#    environment of ret serves the DEK it served before.
# 3. DEK rotation: rotate-dek makes a new version GetDataKey returns by
#    default, the old one stays readable by number (by that environment's
#    service only); retire-dek --below refuses N above the current version
#    and backups of the versions, destroys them, and GetDataKey for one is
#    refused by number, also when its row is put back from a copy of the
#    database (the bound of what a copy with the bound edited too can give
#    is the README's).
# 4. Past its deletion window the retired key is deleted and destroyed.
# Run: bash tests/integration/test-census.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

SEED=$KB_BUILD/tests/kb-seed
if [[ ! -x $SEED ]]; then
	kbt_fail "$SEED exists" "build it first (cmake --build build)"
	kbt_done
fi
kbt_setup_testclock workers=4 rewrap_threads=1
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
db=$KBT_DIR/keybroker.db
sql() { sqlite3 "$db" "$1"; }
pw=$w/pw
kbt_secret_file "$pw" "census password"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto KBT_PKI
DAY=$((86400 * 1000000))

seed() { # seed TENANT COUNT [ARGS...]
	local t=$1 n=$2
	shift 2
	check "kb-seed: $n environments of $t $*" env SOFTHSM2_CONF="$KBT_DIR/token/softhsm2.conf" \
		"$SEED" --db "$db" --pin-file "$KBT_DIR/token/pin" --tenant "$t" --count "$n" "$@"
}
key_id() { json 'd["key"]["id"]' 2>/dev/null; }
# deks TENANT FILE: every environment of TENANT not deleted, its DEK read by
# its own service certificate, as "NAME BASE64" lines in FILE.
deks() {
	local out=$w/py.deks.$1.out
	sql "SELECT name FROM environments WHERE tenant_id = '$1' AND state != 'deleted'" >"$w/envs.$1"
	"$KBT_PY" "$here/test-census.py" deks --tenant "$1" --envs "$w/envs.$1" \
		--certs "$w/certs.$1" --out "$2" >"$out" 2>&1
	kbt_py_report "$out"
}

# The independent count: joins over the tables (the broker's queries use a
# subquery of sealing keys), for key K: its own rows and its KEKs' rows.
SEALED="FROM deks d JOIN keys s ON s.id = d.key_id JOIN environments e ON e.id = d.env_id"
own() { printf "(s.id = '%s' OR (s.purpose = 'kek' AND s.parent_id = '%s'))" "$1" "$1"; }
# census_check DESC [TENANT] KEY VERSIONS ENVS BACKUPS LOCKED: keys show
# --json agrees with sqlite3 and with the numbers expected (- skips one).
census_check() {
	local desc=$1 args=() k v e b l q
	if (($# == 7)); then
		args=("$2" "$3")
		k=$3
		shift 3
	else
		args=("$2")
		k=$2
		shift 2
	fi
	expect_ok kb_admin keys show "${args[@]}" --json --envs 10000
	v=$(sql "SELECT count(*) $SEALED WHERE $(own "$k")")
	e=$(sql "SELECT count(DISTINCT d.env_id) $SEALED WHERE $(own "$k")")
	b=$(sql "SELECT count(*) FROM backups x JOIN deks d ON d.env_id = x.env_id AND d.version = x.dek_version JOIN keys s ON s.id = d.key_id WHERE $(own "$k")")
	l=$(sql "SELECT count(DISTINCT e.id) $SEALED WHERE $(own "$k") AND e.state = 'locked'")
	q="c['dek_versions'] == $v and c['environments'] == $e and c['backups'] == $b and c['environments_locked'] == $l and len(c['dependents']) == $e"
	check_json "$desc: census of $k = sqlite3's count ($v versions, $e environments, $b backups, $l locked)" \
		"(lambda c: $q)(d['census'])"
	[[ $1 != - ]] && check_eq "  ... $1 DEK versions, as built" "$v" "$1"
	[[ $2 != - ]] && check_eq "  ... $2 environments, as built" "$e" "$2"
	[[ $3 != - ]] && check_eq "  ... $3 backups, as built" "$b" "$3"
	[[ $4 != - ]] && check_eq "  ... $4 locked environments, as built" "$l" "$4"
}

kbt_section "1. build 1,030 environments with mixed keys"
for t in plat cust ret; do
	expect_ok kb_admin tenants create "$t"
done
expect_ok kb_admin keys generate cust --out "$w/kc.pfx" --password-file "$pw" --json
kC=$(key_id)
expect_ok kb_admin keys activate cust "$kC" --wait
for i in $(seq -w 0 29); do
	kb_admin envs create cust "c-$i" || kbt_fail "envs create cust c-$i" "$(kbt_last)"
done
for i in $(seq -w 0 19); do
	kb_admin envs apply-key cust "c-$i" || kbt_fail "envs apply-key cust c-$i" "$(kbt_last)"
done
kbt_pass "cust: 30 environments created, 20 of them under key $kC"
expect_ok kb_admin keys generate ret --out "$w/kold.pfx" --password-file "$pw" --json
kOld=$(key_id)
expect_ok kb_admin keys generate ret --out "$w/knew.pfx" --password-file "$pw" --json
kNew=$(key_id)
expect_ok kb_admin keys activate ret "$kNew" --wait
for i in $(seq -w 0 19); do
	{ kb_admin envs create ret "r-$i" && kb_admin envs apply-key ret "r-$i"; } ||
		kbt_fail "envs create + apply-key ret r-$i" "$(kbt_last)"
done
kbt_pass "ret: 20 environments under the active key $kNew; $kOld available"
# Backups, one of a version about to be rotated away (c-02, version 1).
for e in cust/c-02 cust/c-20 cust/c-25 ret/r-00 ret/r-01; do
	expect_ok kb_admin envs backup "${e%/*}" "${e#*/}"
done
for e in c-00 c-00 c-01 c-02 c-03 c-04 c-20 c-21 c-22 c-23 c-24; do
	kb_admin envs rotate-dek cust "$e" --json || kbt_fail "envs rotate-dek cust $e" "$(kbt_last)"
done
check_json "rotate-dek: c-24 now at version 2, version 1 kept" \
	"d['current_version'] == 2 and d['versions'] == [2, 1] and d['min_version'] == 0"
for e in c-00 c-01; do
	expect_ok kb_admin envs backup cust "$e"
done
kbt_stop
seed plat 500
seed cust 300 --customer-key "$kC"
seed ret 180 --customer-key "$kOld" --deks-out "$w/ret.seeded"
# One of kOld's environments locked (its lock time: now, on the broker's clock).
LOCK_US=$(kbt_now_us)
sql "UPDATE environments SET state = 'locked', lock_time_us = $LOCK_US WHERE tenant_id = 'ret' AND name = 's-0000007'"
kbt_start || kbt_done
check_eq "1,030 environments in all" "$(sql "SELECT count(*) FROM environments")" 1030
P=$(sql "SELECT id FROM keys WHERE purpose = 'platform' AND state = 'active' AND wrap_alg = 'AES-256-GCM'")
kekC=$(sql "SELECT id FROM keys WHERE purpose = 'kek' AND parent_id = '$kC' AND id NOT LIKE 'kek-bench-%'")
kekOld=$(sql "SELECT id FROM keys WHERE purpose = 'kek' AND parent_id = '$kOld'")

kbt_section "1. the census of every key, against sqlite3"
# plat 500 + cust's 10 platform-managed (c-20..c-29) and 5 rotations.
census_check "the platform key" "$P" 515 510 2 0
check_json "  ... one tenant's environments, by tenant and name" \
	"d['census']['tenants'] == 2 and d['census']['dependents'][0]['tenant_id'] == 'cust' and d['purpose'] == 'platform'"
# cust: 300 seeded + 20 applied + 6 rotations; backups of c-00, c-01, c-02.
census_check "cust's key" cust "$kC" 326 320 3 0
check_json "  ... through its two KEKs, each counted: $kekC 26, kek-bench 300" \
	"sorted((v['key_id'], v['dek_versions'], v['environments']) for v in d['census']['via']) == sorted([('$kekC', 26, 20), ('kek-bench-${kC#k-}', 300, 300)])"
check_json "  ... and the key's own record is there" "d['id'] == '$kC' and d['state'] == 'active' and d['fingerprint'] != ''"
census_check "cust's KEK $kekC alone" cust "$kekC" 26 20 3 0
census_check "ret's active key" ret "$kNew" 20 20 2 0
census_check "ret's available key" ret "$kOld" 180 180 0 1
check_json "  ... which names the locked one" \
	"[x['name'] for x in d['census']['dependents'] if x['state'] == 'locked'] == ['s-0000007']"
total=$(sql "SELECT count(*) FROM deks")
check_eq "the census of the four keys adds up to every DEK row" $((515 + 326 + 20 + 180)) "$total"
expect_ok kb_admin keys show "$P" --json
check_json "without --envs: 100 environments listed, the counts whole" \
	"len(d['census']['dependents']) == 100 and d['census']['dependents_truncated'] and d['census']['dek_versions'] == 515"
expect_ok kb_admin keys show "$P"
check_out "text: what it seals in one line" "seals: 515 data key version\(s\) of 510 environment\(s\)"
expect_ok kb_admin keys show cust "$kC"
check_out "text: each KEK it seals through" "through_kek: kek-bench-"
"$KB_SRC/deploy/pki.sh" admin ops cust >/dev/null || kbt_fail "pki.sh admin ops cust"
expect_fail PERMISSION_DENIED kb_as admin-ops keys show ret "$kOld"
expect_fail PERMISSION_DENIED -m kb://platform kb_as admin-ops keys show "$P"
expect_ok kb_as admin-ops keys show cust "$kC" --json
expect_fail NOT_FOUND kb_admin keys show cust "$kOld"
expect_fail NOT_FOUND kb_admin keys show "$kC"

kbt_section "2. retirement refused while something cannot be moved"
expect_fail FAILED_PRECONDITION -m "active key.*326 data key version" kb_admin keys retire cust "$kC"
expect_fail FAILED_PRECONDITION -m "current KEK" kb_admin keys retire cust "kek-bench-${kC#k-}"
expect_fail FAILED_PRECONDITION -m "current platform key" kb_admin keys retire "$P"
expect_fail FAILED_PRECONDITION -m "1 data key version\(s\) of 1 locked environment\(s\) depend on it \(ret/s-0000007 first\)" \
	kb_admin keys retire ret "$kOld"
check_eq "  ... and nothing changed: $kOld still available" \
	"$(sql "SELECT state FROM keys WHERE id = '$kOld'")" available
expect_fail FAILED_PRECONDITION -m "not the tenant's active key" kb_admin envs unlock ret s-0000007
kbt_section "2. past 28 days the sweeper deletes the locked one; then retirement is done"
kbt_clock_to $((LOCK_US + 28 * DAY + 5 * 1000000))
expect_ok kb_admin clock confirm --yes
for ((i = 0; i < 75; i++)); do
	[[ $(sql "SELECT state FROM environments WHERE tenant_id = 'ret' AND name = 's-0000007'") == deleted ]] && break
	sleep 0.2
done
check_eq "ret/s-0000007 deleted by the sweeper" \
	"$(sql "SELECT state FROM environments WHERE tenant_id = 'ret' AND name = 's-0000007'")" deleted
census_check "ret's available key, nothing locked now" ret "$kOld" 179 179 0 0
deks ret "$w/ret.before"
grep -v '^s-0000007 ' "$w/ret.seeded" | sort >"$w/ret.seeded.live"
check "the 179 seeded environments serve the DEKs kb-seed sealed" \
	bash -c "grep '^s-' '$w/ret.before' | cmp -s - '$w/ret.seeded.live'"
expect_ok kb_admin keys retire ret "$kOld" --wait --json
check_json "the retire job is done: 179 data keys re-sealed under ret's KEK" \
	"d['state'] == 'done' and d['kind'] == 'retire' and d['total'] == 179 and d['done'] == 179"
census_check "the retired key" ret "$kOld" 0 0 0 0
check_json "  ... retired and its deletion scheduled: pending_deletion, final deletion_window_days (7) after its retirement" \
	"d['state'] == 'pending_deletion' and d['retire_time'] and d['delete_final_time_us'] - d['delete_request_time_us'] == 7 * 86400 * 10**6"
RET_FINAL=$(json 'd["delete_final_time_us"]')
census_check "ret's active key, which holds them now" ret "$kNew" 199 199 2 0
check_eq "$kOld's KEK $kekOld is deleted" "$(sql "SELECT state FROM keys WHERE id = '$kekOld'")" deleted
if ids=$(kbt_token_ids); then
	check "the token no longer holds the KEK $kekOld" bash -c "! grep -qxF -- '$kekOld' <<<'$ids'"
	check "the retired key $kOld stays in the token until it is deleted" grep -qxF -- "$kOld" <<<"$ids"
else
	kbt_skip "the token no longer holds $kekOld" "p11tool (gnutls-bin) is not installed"
fi
deks ret "$w/ret.after"
check "every environment of ret serves the same DEK as before the retirement" \
	cmp -s "$w/ret.before" "$w/ret.after"
expect_fail FAILED_PRECONDITION -m "pending_deletion: only an available key can be activated" kb_admin keys activate ret "$kOld"
expect_fail FAILED_PRECONDITION -m "pending deletion" kb_admin keys retire ret "$kOld"
expect_ok kb_admin keys undelete ret "$kOld" --json
check_json "undelete gives the key back retired, not available" "d['state'] == 'retired' and d['delete_final_time_us'] == 0"
expect_fail FAILED_PRECONDITION -m "retired: only an available key can be activated" kb_admin keys activate ret "$kOld"
expect_fail FAILED_PRECONDITION -m "already retired" kb_admin keys retire ret "$kOld"
expect_ok kb_admin keys delete ret "$kOld" --yes --json
check_json "a retired key can be deleted again by hand" "d['state'] == 'pending_deletion'"
RET_FINAL=$(json 'd["delete_final_time_us"]')
"$KB_SRC/deploy/pki.sh" auditor carol >/dev/null || kbt_fail "pki.sh auditor carol"
expect_ok kb_as auditor-carol audit list --method key.retired --json
check_json "the audit log records key.retired for $kOld" \
	"any(e['key_id'] == '$kOld' and e['result'] == 'ok' for e in items(d, 'events'))"
expect_ok kb_as auditor-carol audit list --method key.delete.requested --json
check_json "  ... and the deletion its retirement scheduled (key.delete.requested by keybroker)" \
	"any(e['key_id'] == '$kOld' and e['actor'] == 'keybroker' and 'retired' in e['reason'] for e in items(d, 'events'))"
expect_ok kb_as auditor-carol audit list --method RetireKey --json
check_json "  ... and each RetireKey call (started, ok; the refusals denied)" \
	"sum(e['result'] == 'started' for e in items(d, 'events')) >= 1 and any(e['result'] == 'ok' for e in items(d, 'events'))"

kbt_section "3. DEK rotation: new version by default, the old one by number"
expect_ok kb_admin envs create cust dr
expect_ok kb_svc cust dr datakey get cust dr --json
D1=$(json 'd["dek"]')
expect_ok kb_admin envs rotate-dek cust dr --json
check_json "rotate-dek: current version 2, versions [2, 1]" "d['current_version'] == 2 and d['versions'] == [2, 1]"
expect_ok kb_svc cust dr datakey get cust dr --json
check_json "GetDataKey by default: version 2, a new DEK" "d['dek_version'] == 2 and d['dek'] != '$D1'"
D2=$(json 'd["dek"]')
expect_ok kb_svc cust dr datakey get cust dr --version 1 --json
check_json "GetDataKey version 1: the old DEK" "d['dek_version'] == 1 and d['dek'] == '$D1'"
expect_fail PERMISSION_DENIED kb_svc cust c-25 datakey get cust dr --version 1
expect_fail NOT_FOUND -m "no data key version 7" kb_svc cust dr datakey get cust dr --version 7
expect_fail FAILED_PRECONDITION -m "current version is 2" kb_admin envs retire-dek cust dr --below 3 --yes
expect_usage kb_admin envs retire-dek cust dr --below 0 --yes
expect_usage kb_admin envs retire-dek cust dr --below 1
expect_fail INVALID_ARGUMENT -m below_version kb_rpc RetireDataKeys '{"tenant_id": "cust", "name": "dr", "below_version": 0}'
expect_fail FAILED_PRECONDITION -m "1 backup\(s\) need them" kb_admin envs retire-dek cust c-02 --below 2 --yes
expect_ok kb_admin envs retire-dek cust c-02 --below 2 --with-backups --yes --json
check_json "  ... with --with-backups: version 1 and its backup destroyed" \
	"d['destroyed'] == 1 and d['backups_destroyed'] == 1 and d['versions'] == [2] and d['min_version'] == 2"
# The row about to be retired, as an old copy of the database holds it.
row=$(sql "SELECT d.key_id, d.wrap_alg, hex(d.wrapped), d.create_time_us FROM deks d JOIN environments e ON e.id = d.env_id WHERE e.tenant_id = 'cust' AND e.name = 'dr' AND d.version = 1")
expect_ok kb_admin envs retire-dek cust dr --below 2 --yes --json
check_json "retire-dek --below 2: version 1 destroyed, 2 kept" \
	"d['destroyed'] == 1 and d['versions'] == [2] and d['min_version'] == 2 and d['current_version'] == 2"
expect_fail FAILED_PRECONDITION -m "version 1 of cust/dr was retired" kb_svc cust dr datakey get cust dr --version 1
expect_ok kb_svc cust dr datakey get cust dr --json
check_json "the current version still serves its DEK" "d['dek_version'] == 2 and d['dek'] == '$D2'"
census_check "the census counts the versions that remain: the platform key (515 + dr's version 2)" "$P" 516 511 2 0
census_check "  ... and cust's key (326 - c-02's version 1; its backup gone)" cust "$kC" 325 320 2 0
expect_ok kb_as auditor-carol audit list --method RetireDataKeys --json
check_json "each retire-dek is audited (started, then ok)" \
	"sum(e['result'] == 'ok' for e in items(d, 'events')) == 2"
expect_ok kb_as auditor-carol audit list --method RotateDataKey --env dr --json
check_json "  ... and each rotate-dek" "sum(e['result'] == 'ok' for e in items(d, 'events')) == 1"

kbt_section "3. with a quorum in force, retire-dek waits for its approval"
"$KB_SRC/deploy/pki.sh" admin bob >/dev/null || kbt_fail "pki.sh admin bob"
c03() { sql "SELECT group_concat(d.version) FROM (SELECT d.version FROM deks d JOIN environments e ON e.id = d.env_id WHERE e.tenant_id = 'cust' AND e.name = 'c-03' ORDER BY d.version) d"; }
expect_ok kb_admin quorum set cust --approvals 1 --approvers bob,carol --json
expect_ok kb_admin envs retire-dek cust c-03 --below 2 --yes --json
check_json "retire-dek is an approval request" "d['request_id'].startswith('r-')"
rid=$(json 'd["request_id"]' 2>/dev/null)
check_eq "  ... nothing destroyed yet: versions 1,2 of cust/c-03" "$(c03)" "1,2"
expect_ok kb_as admin-bob approvals approve "$rid" --json
check_json "bob's approval runs it" "d['state'] == 'executed'"
check_eq "  ... version 1 of cust/c-03 destroyed" "$(c03)" "2"
expect_ok kb_admin quorum set cust --approvals 0 --json
rid=$(json 'd["request_id"]' 2>/dev/null)
expect_ok kb_as admin-bob approvals approve "$rid" --json
check_json "  ... and the quorum is off again (bob approved that too)" "d['state'] == 'executed'"

kbt_section "3. an attacker with the database puts the retired row back"
kbt_stop
IFS='|' read -r rk ralg rhex rct <<<"$row"
sql "INSERT INTO deks(env_id, version, key_id, wrap_alg, wrapped, create_time_us) SELECT id, 1, '$rk', '$ralg', x'$rhex', $rct FROM environments WHERE tenant_id = 'cust' AND name = 'dr'"
kbt_start || kbt_done
expect_fail FAILED_PRECONDITION -m "version 1 of cust/dr was retired" kb_svc cust dr datakey get cust dr --version 1
kbt_stop
sql "UPDATE environments SET min_dek_version = 0 WHERE tenant_id = 'cust' AND name = 'dr'"
kbt_start || kbt_done
expect_ok kb_svc cust dr datakey get cust dr --version 1 --json
check_json "the bound (README): with the bound edited back too, the row opens while the key that sealed it lives" \
	"d['dek'] == '$D1'"
kbt_section "4. past its window the retired key is deleted for good"
kbt_clock_to $((RET_FINAL + 5 * 1000000))
expect_ok kb_admin clock confirm --yes
for ((i = 0; i < 75; i++)); do
	[[ $(sql "SELECT state FROM keys WHERE id = '$kOld'") == deleted ]] && break
	sleep 0.2
done
check_eq "past its window the sweeper deletes the retired key" "$(sql "SELECT state FROM keys WHERE id = '$kOld'")" deleted
if ids=$(kbt_token_ids); then
	check "... and destroys it in the token" bash -c "! grep -qxF -- '$kOld' <<<'$ids'"
else
	kbt_skip "the token no longer holds $kOld" "p11tool (gnutls-bin) is not installed"
fi
kbt_done
