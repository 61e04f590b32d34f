#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-storage-faults.sh: keybrokerd with its database directory full or
# read-only (issue 6, "Storage faults").
#
# The database and the audit log (beside it, the default) live on a small
# tmpfs mounted for the test (root only: without mount permission the test
# prints "skip" and exits 0).
#
#  1. Disk full (a filler file takes the rest of the tmpfs): writes (create a
#     tenant, an environment, a key) fail RESOURCE_EXHAUSTED naming the full
#     disk, within a bound; reads (list, show) answer what was there;
#     GetDataKey fails UNAVAILABLE because the audit log cannot record it (a
#     data key is never handed out unaudited); the broker stays up. Space
#     back: writes work again without a restart, the data written before is
#     intact, both databases pass PRAGMA integrity_check, the audit log has no
#     gap.
#  2. Read-only. The kernel refuses a read-only remount while the broker has
#     its files open for writing (EBUSY); the test tries it and, if it is
#     refused, reaches a read-only database two other ways:
#     a. at start: the tmpfs remounted read-only while the broker is stopped:
#        the broker refuses to start, saying the database cannot be written;
#        remounted read-write, it starts with the data intact;
#     b. under a running broker: ext4 on a loop device mounted
#        errors=remount-ro, and a file-system error triggered through
#        /sys/fs/ext4/DEV/trigger_fs_error (what a failing disk does): writes
#        fail, reads answer, GetDataKey fails cleanly, the broker stays up;
#        after e2fsck and a restart the data is intact and writes work. (The
#        kernel never makes such a file system writable again under open
#        files, so this recovery needs a restart.) Skipped without loop
#        devices.
#  3. The database path empty (its volume not mounted) on a token that holds
#     keybroker's keys: the broker should refuse to start (pending).
#  4. The audit log on another file system (audit_database): the database
#     disk full stops writes, GetDataKey keeps answering.
#
# Checks marked "pending" describe behaviour the broker lacks today (see the
# issue 6 report); they print "pending" instead of failing unless
# KBT_PENDING_STRICT=1.
# Run: bash tests/integration/test-storage-faults.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
# shellcheck disable=SC2317 # functions handed to check/pending run indirectly
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

# A call must be answered (refused) within this many seconds.
FAST_S=5
# Size of the database tmpfs.
DB_FS_SIZE=8m

# ---- helpers ----

# pending DESC CMD...: a check of behaviour the broker lacks today. Passing is
# reported as ok; failing prints "pending" (a FAIL with KBT_PENDING_STRICT=1).
pending() {
	local desc=$1 out
	shift
	if out=$("$@" 2>&1); then
		kbt_pass "$desc (pending check now passes: turn it into an ordinary check)"
	elif [[ ${KBT_PENDING_STRICT:-0} == 1 ]]; then
		kbt_fail "$desc" "${out:0:2000}"
	else
		printf 'pending %s\n' "$desc"
		[[ -n $out ]] && printf '%s\n' "${out:0:1000}" | sed 's/^/     | /'
	fi
	return 0
}

# last_err_matches ERE: the last call's stderr matches ERE (for pending).
last_err_matches() {
	grep -Eq -- "$1" "$KBT_ERR" || { cat "$KBT_ERR"; return 1; }
}

# broker_alive DESC: the broker kbt_start started is still running.
broker_alive() {
	if [[ -n $KBT_PID ]] && kill -0 "$KBT_PID" 2>/dev/null; then
		kbt_pass "$1 (pid $KBT_PID)"
	else
		kbt_fail "$1" "the broker is gone" "$(kbt_print_log)"
	fi
}

# dek_of TENANT ENV: the DEK (base64) GetDataKey returns now, or "".
dek_of() {
	kb_svc "$1" "$2" datakey get "$1" "$2" --json && json 'd["dek"]'
}

# snapshot: what the admin reads of acme now (tenants, environments with
# their key and DEK version, keys), one text to compare.
snapshot() {
	local out=''
	kb_admin tenants list --json && out+=$(json '[(f(t, "id") or f(t, "tenant_id"), f(t, "state")) for t in items(d, "tenants")]')
	kb_admin envs list acme --json && out+=$(json '[(e["name"], f(e, "key_id"), f(e, "dek_version"), e["state"]) for e in items(d, "environments")]')
	kb_admin keys list acme --json && out+=$(json '[(f(k, "key_id") or k.get("id"), k["state"], k["fingerprint"]) for k in items(d, "keys")]')
	printf '%s' "$out"
}

# integrity DESC DIR [AUDIT_DIR]: keybroker.db in DIR and keybroker-audit.db
# in AUDIT_DIR (default DIR) pass PRAGMA integrity_check, and the audit
# log's sequence numbers have no gap.
integrity() {
	local audit=${3:-$2}/keybroker-audit.db
	check_eq "$1: PRAGMA integrity_check of keybroker.db" \
		"$(sqlite3 "$2/keybroker.db" 'PRAGMA integrity_check' 2>&1)" ok
	check_eq "$1: PRAGMA integrity_check of keybroker-audit.db" \
		"$(sqlite3 "$audit" 'PRAGMA integrity_check' 2>&1)" ok
	check_eq "$1: the audit log's events are numbered without a gap" \
		"$(sqlite3 "$audit" 'SELECT count(*) = max(seq) FROM events' 2>&1)" 1
}

# getdatakey_unaudited: GetDataKey fails UNAVAILABLE, saying the audit log
# cannot record it; the cause must reach the message too (pending: today
# the message is garbled, see the report).
getdatakey_unaudited() {
	local cause=$1
	expect_fail_within "$FAST_S" UNAVAILABLE "audit log cannot record" \
		kb_svc acme prod datakey get acme prod
	check "  ... and no data key is printed" test ! -s "$KBT_OUT"
	pending "  ... and the message gives the cause once: /$cause/" \
		last_err_matches "cannot record this call \(audit log: [^()]*$cause"
}

# health_not_serving: health tells a load balancer that GetDataKey cannot
# be served while the audit log cannot record.
health_not_serving() {
	kb_admin --timeout 5 health
	echo "kbctl health: exit $KBT_RC, $(cat "$KBT_OUT" "$KBT_ERR")"
	[[ $KBT_RC == 1 ]] && grep -qx NOT_SERVING "$KBT_OUT"
}

# ---- mounts (undone by the EXIT trap, before lib.sh removes $KBT_DIR) ----

DB=
EXT=
LOOP=

storage_cleanup() {
	local rc=$?
	if [[ -n $KBT_PID ]]; then
		kill -KILL "$KBT_PID" 2>/dev/null
		wait "$KBT_PID" 2>/dev/null
		KBT_PID=
	fi
	[[ -n $EXT ]] && mountpoint -q "$EXT" && { umount "$EXT" || umount -l "$EXT"; }
	[[ -n $LOOP ]] && losetup -d "$LOOP" 2>/dev/null
	[[ -n $DB ]] && mountpoint -q "$DB" && { umount "$DB" || umount -l "$DB"; }
	(exit "$rc")
	kbt_cleanup
}

kbt_setup
trap storage_cleanup EXIT
kbt_secret_file "$KBT_DIR/pw" 'a long passphrase'

DB=$KBT_DIR/db
mkdir -p "$DB"
if ! out=$(mount -t tmpfs -o "size=$DB_FS_SIZE,mode=0700" kbt-db "$DB" 2>&1); then
	DB=
	kbt_skip "storage faults" "cannot mount a tmpfs here (mount: ${out:-failed}; needs root)"
	kbt_done
fi
kbt_write_conf "database=$DB/keybroker.db"
"$KBT_BROKER" --check-config --config "$KBT_CONF" >"$KBT_OUT" 2>&1
check_out "the audit log is beside the database, on the same tmpfs" \
	"^audit_database = $DB/keybroker-audit\.db$"

kbt_section "data before the faults"
kbt_start || kbt_done
broker_pid=$KBT_PID
expect_ok kb_admin tenants create acme --name "Acme Corp"
expect_ok kb_admin envs create acme prod
expect_ok kb_admin envs create acme dev
expect_ok kb_admin keys generate acme --out "$KBT_DIR/k1.pfx" --password-file "$KBT_DIR/pw"
dek_prod=$(dek_of acme prod)
dek_dev=$(dek_of acme dev)
check "GetDataKey answers acme/prod and acme/dev" test -n "$dek_prod" -a -n "$dek_dev"
before=$(snapshot)
check "a snapshot of tenants, environments and keys" test -n "$before"

kbt_section "1. the disk is full"
# Empty both write-ahead logs first: SQLite reuses a WAL file's space, so a
# write could still fit in it on a full disk and the check would depend on
# history. A checkpoint is what SQLite does by itself, any time.
check_eq "WAL of keybroker.db checkpointed and truncated" \
	"$(sqlite3 "$DB/keybroker.db" 'PRAGMA wal_checkpoint(TRUNCATE)' 2>&1)" "0|0|0"
check_eq "WAL of keybroker-audit.db checkpointed and truncated" \
	"$(sqlite3 "$DB/keybroker-audit.db" 'PRAGMA wal_checkpoint(TRUNCATE)' 2>&1)" "0|0|0"
pre_fault_seq=$(sqlite3 "$DB/keybroker-audit.db" 'SELECT max(seq) FROM events' 2>&1)
dd if=/dev/zero of="$DB/filler" bs=64k >/dev/null 2>&1
dd if=/dev/zero of="$DB/filler2" bs=512 >/dev/null 2>&1
check_eq "the database's file system has no space left" \
	"$(df --output=avail -k "$DB" | tail -n 1 | tr -d ' ')" 0

expect_fail_within "$FAST_S" RESOURCE_EXHAUSTED "disk is full" kb_admin tenants create beta
expect_fail_within "$FAST_S" RESOURCE_EXHAUSTED "disk is full" kb_admin envs create acme staging
expect_fail_within "$FAST_S" RESOURCE_EXHAUSTED "disk is full" \
	kb_admin keys generate acme --out "$KBT_DIR/k2.pfx" --password-file "$KBT_DIR/pw"
expect_ok kb_admin tenants list
expect_ok kb_admin envs show acme prod
check_eq "reads answer what was there before the disk filled" "$(snapshot)" "$before"
getdatakey_unaudited "disk is full"
# Many at once: the audit writer fails each batch promptly.
t0=$(date +%s%N)
pids=()
for ((n = 0; n < 8; n++)); do
	KB_CERT=$KBT_PKI/service-acme-prod.crt KB_KEY=$KBT_PKI/service-acme-prod.key \
		timeout -k 5 30 "$KB_BUILD/kbctl" datakey get acme prod \
		</dev/null >"$KBT_DIR/many.$n.out" 2>"$KBT_DIR/many.$n" &
	pids+=($!)
done
bad=0
for ((n = 0; n < 8; n++)); do
	wait "${pids[n]}"
	rc=$?
	if ((rc != 1)) || ! grep -q UNAVAILABLE "$KBT_DIR/many.$n" || [[ -s $KBT_DIR/many.$n.out ]]; then
		bad=$((bad + 1))
		echo "     | call $n: exit $rc: $(head -c 300 "$KBT_DIR/many.$n")"
	fi
done
ms=$((($(date +%s%N) - t0) / 1000000))
check "8 GetDataKey at once: all UNAVAILABLE, no key printed (${ms} ms)" \
	test "$bad" = 0 -a "$ms" -le $((FAST_S * 1000))
check "health is NOT_SERVING while the audit log cannot record (GetDataKey cannot be served)" \
	health_not_serving
broker_alive "the broker stays up with the disk full"

kbt_section "space returns: writes work again without a restart"
rm -f "$DB/filler" "$DB/filler2"
check "the broker is the same process" test "$KBT_PID" = "$broker_pid"
check_eq "GetDataKey acme/prod: the same DEK as before" "$(dek_of acme prod)" "$dek_prod"
check_eq "reads: nothing changed during the full disk" "$(snapshot)" "$before"
expect_ok kb_admin tenants create beta
expect_ok kb_admin envs create acme staging
expect_ok kb_admin keys generate acme --out "$KBT_DIR/k2.pfx" --password-file "$KBT_DIR/pw"
dek_staging=$(dek_of acme staging)
check "the environment created after the fault serves a DEK" test -n "$dek_staging"
check_eq "GetDataKey acme/dev: the same DEK as before" "$(dek_of acme dev)" "$dek_dev"
integrity "after the full disk (broker running)" "$DB"
kb_rpc ListEvents '{"filter": {"method": "GetDataKey", "result": "ok"}, "page_size": 1000}'
check_json "GetDataKey calls after the fault are audited again" 'len(d.get("events", [])) >= 3'
# The log says it recovered, first, under this broker's instance: a
# verifier counts this broker's calls then still waiting as cut short.
kb_rpc ListEvents '{"filter": {"method": "audit.recovered"}, "page_size": 10}'
check_json "the first event after the fault is audit.recovered, by the broker, naming its instance" \
	'len(d.get("events", [])) == 1 and __import__("re").fullmatch(r"sys-[0-9a-f]{8}-[0-9a-f]+", d["events"][0]["request_id"] if "request_id" in d["events"][0] else d["events"][0]["requestId"]) is not None'
rec_seq=$(json 'd["events"][0]["seq"]')
check_eq "  ... right after the last event before the disk filled (nothing was recorded meanwhile)" \
	"$rec_seq" $((pre_fault_seq + 1))
snap_full=$(snapshot)

kbt_section "2. read-only"
# A live read-only remount: the kernel refuses while files are open for
# writing. If it is allowed somewhere, run the read-only checks on it.
ro_checks() {
	local what=$1 snap=$2
	expect_fail_within "$FAST_S" "RESOURCE_EXHAUSTED|UNAVAILABLE" "database" \
		kb_admin tenants create gamma
	pending "  ... with UNAVAILABLE and a message saying the file system is read-only" \
		last_err_matches "UNAVAILABLE: .*read-only"
	expect_fail_within "$FAST_S" "RESOURCE_EXHAUSTED|UNAVAILABLE" "database" \
		kb_admin envs create acme ro
	expect_ok kb_admin envs show acme prod
	check_eq "reads answer what was there ($what)" "$(snapshot)" "$snap"
	getdatakey_unaudited "read-only"
	broker_alive "the broker stays up ($what)"
}
if out=$(mount -o remount,ro "$DB" 2>&1); then
	kbt_pass "the tmpfs was remounted read-only under the running broker"
	ro_checks "live read-only tmpfs" "$snap_full"
	check "remounted read-write" mount -o remount,rw "$DB"
	expect_ok kb_admin tenants create gamma
	check "the broker is the same process" test "$KBT_PID" = "$broker_pid"
	snap_full=$(snapshot)
else
	printf 'note the kernel refuses a read-only remount under the running broker (%s):\n' \
		"$(printf '%s' "$out" | head -n 1)"
	printf '     files open for writing keep a file system writable; read-only comes\n'
	printf '     at start (2a) or from a file-system error (2b)\n'
fi

kbt_section "2a. the database read-only at start"
kbt_stop
check "the tmpfs remounts read-only with the broker stopped" mount -o remount,ro "$DB"
kbt_expect_no_start "the broker refuses to start on a read-only database, saying so" \
	"$KBT_CONF" "cannot be written|read-only"
names_db() { grep "$DB/keybroker" "$KBT_DIR/no-start.err" || tail -n 1 "$KBT_DIR/no-start.err"; }
check "  ... naming the database file" names_db
check "remounted read-write" mount -o remount,rw "$DB"
kbt_start || kbt_done
check_eq "after the read-only start: the same data" "$(snapshot)" "$snap_full"
check_eq "after the read-only start: GetDataKey acme/prod, the same DEK" "$(dek_of acme prod)" "$dek_prod"

kbt_section "2b. a file-system error makes the database read-only under the broker"
# ext4_setup: an ext4 file system on a loop device at $EXT, mounted
# errors=remount-ro; on failure prints why and returns 1.
ext4_setup() {
	local img=$KBT_DIR/ext4.img dev
	for t in losetup mkfs.ext4 e2fsck; do
		command -v "$t" >/dev/null || { echo "$t is missing"; return 1; }
	done
	if ! truncate -s 32M "$img" || ! mkfs.ext4 -q -F "$img"; then
		echo "mkfs.ext4 failed"
		return 1
	fi
	LOOP=$(losetup -f --show "$img" 2>&1) || { echo "no loop device: $LOOP"; LOOP=; return 1; }
	EXT=$KBT_DIR/ext4
	mkdir -p "$EXT"
	mount -o errors=remount-ro "$LOOP" "$EXT" 2>&1 || { EXT=; return 1; }
	dev=$(basename "$LOOP")
	[[ -w /sys/fs/ext4/$dev/trigger_fs_error ]] ||
		{ echo "no /sys/fs/ext4/$dev/trigger_fs_error"; return 1; }
}
# (Not in $(...): LOOP and EXT must reach the EXIT trap.)
if ! ext4_setup >"$KBT_DIR/ext4.why" 2>&1; then
	kbt_skip "2b" "$(head -c 300 "$KBT_DIR/ext4.why")"
else
	kbt_stop
	# The copy must be on disk before the error: the broker fsyncs what it
	# writes, cp does not (an aborted journal drops what is not committed).
	cp -a "$DB"/keybroker* "$EXT"/ && sync -f "$EXT/keybroker.db"
	kbt_write_conf "database=$EXT/keybroker.db"
	kbt_start || kbt_done
	check_eq "on ext4: the same data" "$(snapshot)" "$snap_full"
	echo "kbt: test-storage-faults" >"/sys/fs/ext4/$(basename "$LOOP")/trigger_fs_error"
	check "the kernel made the file system read-only" \
		grep -Eq "^$LOOP $EXT ext4 (ro|.*emergency_ro)" /proc/mounts
	ro_checks "file-system error" "$snap_full"
	kbt_stop
	umount "$EXT"
	e2fsck -fy "$LOOP" >"$KBT_DIR/e2fsck.out" 2>&1
	rc=$?
	check "e2fsck repairs the file system (exit $rc)" test "$rc" -le 1
	check "mounted again read-write" mount "$LOOP" "$EXT"
	integrity "after the file-system error" "$EXT"
	kbt_start || kbt_done
	check_eq "after the restart: the same data" "$(snapshot)" "$snap_full"
	check_eq "after the restart: GetDataKey acme/prod, the same DEK" "$(dek_of acme prod)" "$dek_prod"
	check_eq "after the restart: GetDataKey acme/staging, the same DEK" "$(dek_of acme staging)" "$dek_staging"
	expect_ok kb_admin tenants create delta
	expect_ok kb_admin envs create acme after-ro
fi

kbt_section "3. the database missing (its volume not mounted)"
# The token already holds keybroker's keys; a database path with nothing
# behind it (a volume that did not mount) should not become a new, empty
# database: services would get NOT_FOUND and admins re-create environments
# with new DEKs while the real database waits on the unmounted volume.
kbt_stop
mkdir -p "$KBT_DIR/unmounted"
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "${KBT_CONF_SETTINGS[@]}" \
	"database=$KBT_DIR/unmounted/keybroker.db" >"$KBT_DIR/missing-db.conf"
kbt_expect_no_start "the broker refuses to start a new, empty database on a token that already holds its keys" \
	"$KBT_DIR/missing-db.conf" "does not exist" "allow-new-database"

kbt_section "4. the audit log on another file system: a full database disk stops writes only"
# A fresh token and database (section 3 may one day refuse a new database on
# the first token), the database on the tmpfs, the audit log elsewhere.
"$KB_SRC/deploy/token.sh" "$KBT_DIR/t2" >/dev/null || kbt_fail "deploy/token.sh t2"
mkdir -p "$DB/split" "$KBT_DIR/audit-disk"
kbt_write_conf "database=$DB/split/keybroker.db" \
	"audit_database=$KBT_DIR/audit-disk/keybroker-audit.db" \
	"pin_file=$KBT_DIR/t2/token/pin" "softhsm2_conf=$KBT_DIR/t2/token/softhsm2.conf"
kbt_start || kbt_done
expect_ok kb_admin tenants create acme
expect_ok kb_admin envs create acme prod
dek_split=$(dek_of acme prod)
check "GetDataKey answers a DEK" test -n "$dek_split"
check_eq "WAL of the database checkpointed and truncated" \
	"$(sqlite3 "$DB/split/keybroker.db" 'PRAGMA wal_checkpoint(TRUNCATE)' 2>&1)" "0|0|0"
dd if=/dev/zero of="$DB/filler" bs=64k >/dev/null 2>&1
dd if=/dev/zero of="$DB/filler2" bs=512 >/dev/null 2>&1
expect_fail_within "$FAST_S" RESOURCE_EXHAUSTED "disk is full" kb_admin tenants create beta
check_eq "GetDataKey still answers, audited on the other disk: the same DEK" \
	"$(dek_of acme prod)" "$dek_split"
expect_ok kb_admin envs list acme
rm -f "$DB/filler" "$DB/filler2"
expect_ok kb_admin tenants create beta
integrity "split database and audit log" "$DB/split" "$KBT_DIR/audit-disk"

kbt_done
