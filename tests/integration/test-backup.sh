#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-backup.sh: the disaster-recovery drill (issue 14), on a real broker
# and a real SoftHSMv2 token.
#
# Three tenants: acme (a generated key, active, two customer-managed
# environments, one on the platform key, a BYOK key-exchange key), globex
# (a key, one customer-managed environment and one platform one, then
# locked, on keybrokerd-testclock past the 72-hour rule), initech (two
# platform environments). Every DEK is read. Then `kbctl backup create`
# runs while 16 readers call GetDataKey without pause (0 failed reads,
# every answer the recorded DEK); the file is mode 0600, its manifest names
# the token, every key and the audit head, and carries no DEK; the backup
# is audited (started, then ok); a tenant-limited admin and an auditor are
# refused PERMISSION_DENIED and leave no file.
# The broker stops, the database and the audit database are wiped (the
# token directory stays: it is the HSM). Refused, nothing written: the
# backup with one byte flipped (the checksum named); the backup onto a
# copy of the token without acme's tenant key (that key named, with its 2
# environments and tenant); onto a fresh token (every key named). Then the
# restore; a second one without --force is refused; the broker refuses to
# start on the restored audit log (events recorded after the backup are
# gone: the anchor in the token is ahead) until it is started once with
# --accept-audit-loss, as the restore printed. After that: every DEK as
# before, globex still locked, `kbctl audit verify --online` names exactly
# the first event after the backup's head as missing (and nothing else),
# and the next start needs no flag. A --force restore while the broker
# runs is refused (the database is in use).
# Run: bash tests/integration/test-backup.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

HOUR=3600
READERS=16
kbt_setup_testclock workers=8 log_level=info
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "backup drill password"
DB=$KBT_DIR/keybroker.db
ADB=$KBT_DIR/keybroker-audit.db
"$KB_SRC/deploy/pki.sh" admin ops acme >/dev/null || kbt_fail "pki.sh admin ops acme"
"$KB_SRC/deploy/pki.sh" auditor carol >/dev/null || kbt_fail "pki.sh auditor carol"
kb_aud() { kb_as auditor-carol "$@"; }

# dek TENANT ENV: the environment's DEK (base64), or "" when refused.
dek() {
	kb_svc "$1" "$2" datakey get "$1" "$2" --json && json 'd["dek"]'
}
# broker TENANT ... (keybrokerd --restore with a config), capturing.
restore() {
	timeout -k 5 60 "$KBT_BROKER" "$@" </dev/null >"$KBT_OUT" 2>"$KBT_ERR"
	KBT_RC=$?
}
no_db_files() {
	check "$1: no database or audit database was written" \
		bash -c "! ls '$DB' '$ADB' '$DB'.restore-* '$ADB'.restore-* 2>/dev/null | grep -q ."
}

kbt_section "tenants, keys and environments"
declare -A KEY
for t in acme globex initech; do
	expect_ok kb_admin tenants create "$t" --name "$t Inc"
done
ENVS="acme/prod acme/stage acme/dev globex/web globex/api initech/one initech/two"
for te in $ENVS; do
	expect_ok kb_admin envs create "${te%/*}" "${te#*/}"
done
for t in acme globex; do
	expect_ok kb_admin keys generate "$t" --out "$w/$t.pfx" --password-file "$pw" --json
	KEY[$t]=$(json 'd["key"]["id"]')
	expect_ok kb_admin keys activate "$t" "${KEY[$t]}" --wait
done
for te in acme/prod acme/stage globex/web; do
	expect_ok kb_admin envs apply-key "${te%/*}" "${te#*/}"
done
expect_ok kb_admin byok kek acme --json
XKEY=$(json 'd["kid"]' 2>/dev/null || true)
declare -A DEK
for te in $ENVS; do
	DEK[$te]=$(dek "${te%/*}" "${te#*/}")
	check "$te serves a DEK" test -n "${DEK[$te]}"
done
kbt_clock_set $((73 * HOUR))
expect_ok kb_admin tenants lock globex --key "$w/globex.pfx" --password-file "$pw" --yes
expect_fail FAILED_PRECONDITION -m "locked" kb_svc globex web datakey get globex web
ENABLED="acme/prod acme/stage acme/dev globex/api initech/one initech/two"
set -- $ENABLED
NEN=$#

kbt_section "backup while $READERS readers call GetDataKey"
# reader I: GetDataKey on one environment until $w/stop, each answer
# compared with the DEK read before; counts in $w/reader.I.
reader() {
	local i=$1 te t e ok=0 bad=0 got
	set -- $ENABLED
	shift $((i % NEN))
	te=$1 t=${te%/*} e=${te#*/}
	while [[ ! -e $w/stop ]]; do
		got=$(KB_CERT=$KBT_PKI/service-$t-$e.crt KB_KEY=$KBT_PKI/service-$t-$e.key \
			timeout 20 "$KB_BUILD/kbctl" datakey get "$t" "$e" --json 2>>"$w/reader.$i.err" |
			"$KBT_PY" -c 'import json,sys; print(json.load(sys.stdin)["dek"])' 2>/dev/null)
		if [[ $got == "${DEK[$te]}" ]]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
		echo "$ok $bad" >"$w/reader.$i"
	done
}
rm -f "$w/stop"
pids=()
for ((i = 0; i < READERS; i++)); do
	reader "$i" &
	pids+=($!)
done
# Every reader has been served before the backup starts.
for ((n = 0; n < 150; n++)); do
	c=$(cat "$w"/reader.* 2>/dev/null | awk '$1 > 0' | wc -l)
	((c == READERS)) && break
	sleep 0.2
done
check_eq "all $READERS readers are served before the backup" "$c" "$READERS"
before=$(cat "$w"/reader.* | awk '{s += $1} END {print s}')
timed expect_ok kb_admin backup create --out "$w/b1.kbb"
BMS=$KBT_MS
cat "$KBT_OUT"
after=$(cat "$w"/reader.* | awk '{s += $1} END {print s}')
touch "$w/stop"
wait "${pids[@]}"
total=$(cat "$w"/reader.* | awk '{s += $1} END {print s}')
failed=$(cat "$w"/reader.* | awk '{s += $2} END {print s}')
check_eq "0 failed or wrong reads ($total served, $((after - before)) during the ${BMS} ms backup)" "$failed" 0
check "reads were served during the backup" test "$after" -gt "$before"
check_eq "the backup file is mode 0600" "$(stat -c %a "$w/b1.kbb")" 600
check "no temporary file is left beside it" bash -c "! ls '$w'/b1.kbb.tmp-* 2>/dev/null | grep -q ."
check "the broker left no snapshot directory" bash -c "! ls -d '$KBT_DIR'/.kb-backup-* 2>/dev/null | grep -q ."
expect_usage kb_admin backup create --out "$w/b1.kbb"
check "... an existing file is refused without --force" grep -q "exists; it is left alone (--force replaces it)" "$KBT_ERR"

# The manifest (line 2), checked in Python.
"$KBT_PY" - "$w/b1.kbb" "$DB" "${KEY[acme]}" "${KEY[globex]}" "${DEK[@]}" >"$w/manifest.out" 2>&1 <<'PY'
import base64, hashlib, json, sqlite3, sys
path, db, ka, kg, deks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
raw = open(path, "rb").read()
def report(ok, desc):
    print(("ok   " if ok else "FAIL ") + desc)
lines = raw.split(b"\n", 2)
report(lines[0] == b"keybroker-backup 1", "line 1 is the magic")
m = json.loads(lines[1])
report(raw[-72:-65] == b"sha256 " and raw[-65:-1].decode() == hashlib.sha256(raw[:-72]).hexdigest(),
       "the trailer is the SHA-256 of everything before it")
report(m["token"]["label"] == "keybroker" and m["token"]["serial"], "the manifest names the token")
report(m["schema_version"] >= 3 and m["audit_head"]["seq"] > 0 and len(m["audit_head"]["hash"]) == 64,
       "... the schema version and the audit head (seq %d)" % m["audit_head"]["seq"])
keys = {k["id"]: k for k in m["keys"]}
conn = sqlite3.connect(db)
want = {r[0]: r[1] for r in conn.execute("SELECT id, state FROM keys")}
report(set(keys) == set(want), "... every key of the database (%d), with its state" % len(want))
report(all(keys[i]["state"] == want[i] for i in want), "... states as in the database")
report(keys[ka]["in_token"] and keys[ka]["environments"] == 2 and keys[ka]["tenant_ids"] == "acme"
       and len(keys[ka]["fingerprint"]) == 64, "acme's key: needed, 2 environments, its fingerprint")
report(not keys[kg]["in_token"] and keys[kg]["state"] == "locked", "globex's locked key: not needed in the token")
purposes = {k["purpose"] for k in m["keys"]}
report({"platform", "audit", "tenant", "kek", "exchange"} <= purposes, "purposes: %s" % sorted(purposes))
secs = m["sections"]
off = len(lines[0]) + len(lines[1]) + 2
ok = True
for s in secs:
    body = raw[off:off + s["bytes"]]
    ok = ok and hashlib.sha256(body).hexdigest() == s["sha256"] and body[:16] == b"SQLite format 3\0"
    off += s["bytes"]
report(ok and off == len(raw) - 72 and [s["name"] for s in secs] == ["database", "audit_database"],
       "two SQLite sections, each with its SHA-256")
leaked = [d for d in deks if base64.b64decode(d) in raw]
report(not leaked, "no DEK in plaintext in the file")
PY
kbt_py_report "$w/manifest.out"

kbt_section "who may back up"
expect_fail PERMISSION_DENIED -m "kb://platform" kb_as admin-ops backup create --out "$w/ops.kbb"
check "... and no file is left" bash -c "! ls '$w'/ops.kbb* 2>/dev/null | grep -q ."
expect_fail PERMISSION_DENIED kb_aud backup create --out "$w/aud.kbb"
expect_fail PERMISSION_DENIED kb_svc acme prod backup create --out "$w/svc.kbb"
kb_aud audit list --method CreateBackup --json
check_json "the backups are audited: started and ok for the admin, denied for the others" \
	"[(e['actor'], e['result']) for e in d['events']][:2] == [('admin', 'started'), ('admin', 'ok')] and sum(e['result'] == 'denied' for e in d['events']) == 3"

kbt_section "disaster: the broker stops, the databases are wiped"
kbt_stop
cp -a "$KBT_DIR/token" "$w/token-copy"
rm -f "$DB" "$DB"-wal "$DB"-shm "$ADB" "$ADB"-wal "$ADB"-shm
check "the token directory stays" test -d "$KBT_DIR/token/tokens"

kbt_section "refused restores write nothing"
cp "$w/b1.kbb" "$w/flip.kbb"
size=$(stat -c %s "$w/flip.kbb")
"$KBT_PY" -c '
import sys
p, at = sys.argv[1], int(sys.argv[2])
b = bytearray(open(p, "rb").read()); b[at] ^= 0x01; open(p, "wb").write(b)' "$w/flip.kbb" $((size / 2))
restore --config "$KBT_CONF" --restore "$w/flip.kbb"
check_eq "one byte flipped: refused (exit 1)" "$KBT_RC" 1
check "... naming the checksum" grep -q "fails its checksum" "$KBT_ERR"
no_db_files "the flipped backup"
head -c $((size - 100)) "$w/b1.kbb" >"$w/cut.kbb"
restore --config "$KBT_CONF" --restore "$w/cut.kbb"
check "a truncated backup: refused" bash -c "[[ $KBT_RC == 1 ]] && grep -qE 'checksum|cut short' '$KBT_ERR'"
no_db_files "the truncated backup"

# A copy of the token without acme's tenant key.
sed "s|$KBT_DIR/token|$w/token-copy|g; s|^database = .*|database = $w/db-copy/keybroker.db|" \
	"$KBT_CONF" >"$w/copy.conf"
sed -i "s|$KBT_DIR/token|$w/token-copy|g" "$w/token-copy/softhsm2.conf"
mkdir -p "$w/db-copy"
kbt_token_delete "${KEY[acme]}" "$w/token-copy"
restore --config "$w/copy.conf" --restore "$w/b1.kbb"
cat "$KBT_ERR"
check_eq "a token without acme's key: refused (exit 1)" "$KBT_RC" 1
check "... naming that key, its 2 environments and its tenant" \
	grep -Eq "MISSING tenant key ${KEY[acme]} of tenant acme .*2 environment\(s\) depend on it \(tenants: acme\)" "$KBT_ERR"
check_eq "... and no other key" "$(grep -c MISSING "$KBT_ERR")" 1
check "... the summary says 1 key and 2 environments, nothing written" \
	grep -q "1 of the .* keys it needs are not in token 'keybroker' (2 environment(s) depend on them.*nothing was written" "$KBT_ERR"
check "nothing was written beside the copy" bash -c "[[ -z \$(ls -A '$w/db-copy') ]]"

mkdir -p "$w/fresh"
"$KB_SRC/deploy/token.sh" "$w/fresh" >/dev/null || kbt_fail "token.sh fresh"
sed "s|$KBT_DIR/token|$w/fresh/token|g; s|^database = .*|database = $w/fresh/keybroker.db|" \
	"$KBT_CONF" >"$w/fresh.conf"
restore --config "$w/fresh.conf" --restore "$w/b1.kbb"
check_eq "a fresh token: refused (exit 1)" "$KBT_RC" 1
check "... naming acme's key" grep -q "MISSING tenant key ${KEY[acme]} of tenant acme" "$KBT_ERR"
check "... the platform key, with the 4 environments on it" \
	grep -Eq "MISSING platform key .*4 environment\(s\) depend on it \(tenants: acme, globex, initech\)" "$KBT_ERR"
check "... the audit key and acme's KEK and key-exchange key" \
	bash -c "grep -q 'MISSING audit key' '$KBT_ERR' && grep -q 'MISSING kek key .* of tenant acme' '$KBT_ERR' && grep -q 'MISSING exchange key' '$KBT_ERR'"
check "... and the token's serial" grep -q "bound to token 'keybroker' (serial" "$KBT_ERR"
check "nothing was written on the fresh machine" bash -c "! ls '$w/fresh'/keybroker*.db* 2>/dev/null | grep -q ."

kbt_section "the restore"
restore --config "$KBT_CONF" --restore "$w/b1.kbb"
cat "$KBT_OUT" "$KBT_ERR"
cp "$KBT_OUT" "$w/restore.out"
check_eq "restore onto the right token: exit 0" "$KBT_RC" 0
check_out "... every key it needs is there" "holds all [0-9]+ keys"
check_out "... it says the start needs --accept-audit-loss, with the exact command" \
	"keybrokerd --config $KBT_CONF --accept-audit-loss"
check_eq "the restored database is mode 0600" "$(stat -c %a "$DB")" 600
restore --config "$KBT_CONF" --restore "$w/b1.kbb"
check "a second restore without --force: refused, naming --force" \
	bash -c "[[ $KBT_RC == 1 ]] && grep -q 'exists.*--force' '$KBT_ERR'"
A=$(sed -n 's/.*anchor says the log reached event \([0-9]*\);.*/\1/p' "$w/restore.out")
H=$("$KBT_PY" -c 'import json,sys; print(json.loads(open(sys.argv[1],"rb").read().split(b"\n")[1])["audit_head"]["seq"])' "$w/b1.kbb")
kbt_expect_no_start "the broker refuses the restored audit log as it is (events after the backup lost)" \
	"$KBT_CONF" "events $((H + 1)) to [0-9]+ are missing" "--accept-audit-loss"
kbt_start "$KBT_CONF" --accept-audit-loss || kbt_done

kbt_section "after the restore"
for te in $ENABLED; do
	check_eq "$te serves the same DEK" "$(dek "${te%/*}" "${te#*/}")" "${DEK[$te]}"
done
expect_fail FAILED_PRECONDITION -m "locked" kb_svc globex web datakey get globex web
kb_admin tenants show globex --json
check_json "globex is still locked" "d['state'] == 'locked'"
kb_aud audit list --method audit.loss_accepted --json
check_json "the loss is in the log, naming event $((H + 1))" \
	"len(d['events']) == 1 and 'first bad event $((H + 1))' in d['events'][0]['reason']"
kb_aud audit verify --online
check_eq "audit verify --online fails (exit 1): events were lost" "$KBT_RC" 1
check_out "... at exactly the events recorded after the backup ($((H + 1)) to $A), nothing earlier" \
	"^FAILED at seq $((H + 1)): event $((H + 1)) is missing \(the next event present is $((A + 1))\)"
restore --config "$KBT_CONF" --restore "$w/b1.kbb" --force
check "a --force restore while the broker runs: refused (in use), nothing replaced" \
	bash -c "[[ $KBT_RC == 1 ]] && grep -q 'in use' '$KBT_ERR'"
check_eq "... acme/prod still serves its DEK" "$(dek acme prod)" "${DEK[acme/prod]}"
kbt_stop
kbt_start || kbt_done
kbt_pass "the next start needs no flag (the anchor moved)"
check_eq "acme/prod serves its DEK" "$(dek acme prod)" "${DEK[acme/prod]}"
kbt_done
