#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-doctor.sh: kbctl doctor (RunDiagnostics, online) and keybrokerd
# --doctor (offline) on a real broker and a real SoftHSMv2 token (issue 14).
#
# On keybrokerd-testclock. Two tenants: acme (a generated key, active,
# three customer-managed environments: prod, dev, qa; one on the platform
# key) and globex (a key, web customer-managed, api on the platform key).
#  1. Healthy: online and offline both exit 0, every finding ok, each check
#     present (token, its mechanisms, keys, certificates, CRL, clock, disk,
#     jobs, deletions); --json agrees. The offline run changes no file of
#     the var directory (database, WAL, token) and creates none. A
#     tenant-limited admin is refused PERMISSION_DENIED: exit 1 (the doctor
#     could not run), not a report's status.
#  2. The broker's certificate expires in 10 days (reissued with
#     deploy/pki.sh --days 10 server): a WARN naming tls_cert, exit 4 online
#     and offline; the other findings stay ok.
#  3. A full disk: the database and the audit log moved to a small tmpfs
#     mounted for the test (or in a private mount namespace): ok while it
#     has room (doctor_disk_warn_mb = 4, doctor_disk_fail_mb = 2), then
#     filled: a FAIL naming the database's file system, exit 5, online and
#     offline. Skipped (saying so) only if no tmpfs can be mounted.
#  4. Policy time jumps 73 hours forward: a WARN saying the sweeper waits
#     for 'kbctl clock confirm', exit 4; confirmed, 0. globex locked: its
#     environment and key are counted as locked, the environment's deletion
#     date shown, still exit 0.
#  5. acme's KEK destroyed in the token under the running broker: a WARN
#     (the next start unwraps it again) saying 'kbctl repair acme', exit 4;
#     repaired, 0.
#  6. acme's tenant key destroyed in the token (p11tool): offline and
#     online a FAIL naming the key and its environments acme/prod, acme/dev,
#     acme/qa (not acme/plat), exit 5.
# Run: bash tests/integration/test-doctor.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

# The mount namespace: when the test cannot mount in its own, it runs
# itself again under `unshare -m` (private mounts, gone with the process).
if [[ ${KBT_DOCTOR_NS:-} != 1 && $(id -u) == 0 ]]; then
	probe=$(mktemp -d "${TMPDIR:-/tmp}/kbt-mnt.XXXXXX")
	if mount -t tmpfs -o size=1m kbt-probe "$probe" 2>/dev/null; then
		umount "$probe"
	elif unshare -m --propagation private true 2>/dev/null; then
		rmdir "$probe"
		KBT_DOCTOR_NS=1 exec unshare -m --propagation private bash "$0" "$@"
	fi
	rmdir "$probe" 2>/dev/null
fi

kbt_setup_testclock workers=4
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "doctor test password"
"$KB_SRC/deploy/pki.sh" admin ops acme >/dev/null || kbt_fail "pki.sh admin ops acme"

# doctor_on DESC WANT [KBCTL ARGS...]: kbctl doctor (as the admin) exits WANT.
doctor_on() {
	local desc=$1 want=$2
	shift 2
	kb_admin doctor "$@"
	if [[ $KBT_RC == "$want" ]]; then
		kbt_pass "online: $desc (exit $KBT_RC)"
	else
		kbt_fail "online: $desc: expected exit $want" "$(kbt_last)"
	fi
}

# doctor_off DESC WANT [ARGS...]: keybrokerd --doctor exits WANT.
doctor_off() {
	local desc=$1 want=$2
	shift 2
	timeout -k 5 60 "$KBT_BROKER" --config "$KBT_CONF" --doctor "$@" \
		</dev/null >"$KBT_OUT" 2>"$KBT_ERR"
	KBT_RC=$?
	if [[ $KBT_RC == "$want" ]]; then
		kbt_pass "offline: $desc (exit $KBT_RC)"
	else
		kbt_fail "offline: $desc: expected exit $want" "$(kbt_last)"
	fi
}

# var_state: every file under the var directory but the test's own, with
# its size, mode and SHA-256 (what "changes nothing" compares). SoftHSMv2
# rewrites its token.object (a generation counter) at every login, whoever
# logs in: that file's bytes are left out, every key object's are in.
var_state() {
	(cd "$KBT_DIR" && find . -path ./work -prune -o -path ./out -prune -o \
		-path ./err -prune -o -name '*.log' -prune -o -type f -printf '%p %s %m\n' | sort &&
		find . -path ./work -prune -o -type f \( -name '*.db*' -o -path './token/*' \) \
			! -name token.object -exec sha256sum {} + | sort)
}

kbt_start || kbt_done

kbt_section "tenants, keys and environments"
for t in acme globex; do
	expect_ok kb_admin tenants create "$t" --name "$t Inc"
done
for te in acme/prod acme/dev acme/qa acme/plat globex/web globex/api; do
	expect_ok kb_admin envs create "${te%/*}" "${te#*/}"
done
expect_ok kb_admin keys generate acme --out "$w/acme.pfx" --password-file "$pw" --json
KEY=$(json 'd["key"]["id"]')
expect_ok kb_admin keys activate acme "$KEY" --wait
for e in prod dev qa; do
	expect_ok kb_admin envs apply-key acme "$e"
done
expect_ok kb_admin keys generate globex --out "$w/globex.pfx" --password-file "$pw" --json
GKEY=$(json 'd["key"]["id"]')
expect_ok kb_admin keys activate globex "$GKEY" --wait
expect_ok kb_admin envs apply-key globex web
expect_ok kb_admin byok kek acme --json

kbt_section "1. healthy: exit 0 online and offline"
doctor_on "a healthy broker" 0
cat "$KBT_OUT"
for c in token token.mech database key cert crl clock disk job deletion; do
	check "online: the report has a '$c' finding" grep -Eq "^OK    $c " "$KBT_OUT"
done
check_out "online: no WARN or FAIL" '^doctor: [0-9]+ ok, 0 warn, 0 fail \(online'
check_out "online: the keys are checked in the token" \
	"^OK    key .*all [0-9]+ needed in the token are in token 'keybroker'"
doctor_on "--json" 0 --json
check_json "online --json: status ok, every finding ok, online" \
	'd["status"] == "ok" and d["exit_status"] == 0 and d["mode"] == "online" and d["findings"] and all(x["severity"] == "ok" for x in d["findings"])'
check_json "online --json: each finding has check, subject, found, remedy" \
	'all(set(x) >= {"severity", "check", "subject", "found", "remedy"} for x in d["findings"])'
kb_as admin-ops doctor
check "a tenant-limited admin: PERMISSION_DENIED, exit 1 (the doctor did not run)" \
	bash -c "[[ $KBT_RC == 1 ]] && grep -q PERMISSION_DENIED '$KBT_ERR'"
kbt_stop
before=$(var_state)
doctor_off "a healthy broker, stopped" 0
cat "$KBT_OUT"
check_out "offline: no WARN or FAIL" '^doctor: [0-9]+ ok, 0 warn, 0 fail \(offline'
for c in token token.mech database key cert crl clock disk job deletion; do
	check "offline: the report has a '$c' finding" grep -Eq "^OK    $c " "$KBT_OUT"
done
doctor_off "--json" 0 --json
check_json "offline --json: status ok, mode offline" \
	'd["status"] == "ok" and d["mode"] == "offline" and all(x["severity"] == "ok" for x in d["findings"])'
printf '%s\n' "$before" >"$w/state.before"
var_state >"$w/state.after"
check "offline: no file of the var directory changed or appeared (database, WAL, token)" \
	diff "$w/state.before" "$w/state.after"
check "offline: no -wal or -shm was created beside the stopped broker's database" \
	bash -c "! ls '$KBT_DIR'/keybroker*.db-wal '$KBT_DIR'/keybroker*.db-shm 2>/dev/null | grep -q ."
timeout 20 "$KBT_BROKER" --config "$KBT_CONF" --json </dev/null >"$KBT_OUT" 2>"$KBT_ERR"
KBT_RC=$?
check_eq "--json without --doctor: a usage error" "$KBT_RC" 2

kbt_section "2. the broker's certificate expires in 10 days: WARN, exit 4"
cp -p "$KBT_PKI/server.crt" "$w/server.crt.good"
cp -p "$KBT_PKI/server.key" "$w/server.key.good"
"$KB_SRC/deploy/pki.sh" --days 10 server >/dev/null || kbt_fail "pki.sh --days 10 server"
kbt_start || kbt_done
doctor_on "a server certificate expiring in 10 days" 4
cat "$KBT_OUT"
check_out "online: WARN names the server certificate (tls_cert) and its 10 days" \
	"^WARN  cert +server certificate \"keybroker\" \(tls_cert $KBT_PKI/server.crt\): expires in (9 d 2[0-9] h|10 d 0 h)"
check_out "online: ... with what to do" "^ +-> issue a new server certificate.*tls_cert"
check_out "online: nothing else warns or fails" '^doctor: [0-9]+ ok, 1 warn, 0 fail'
doctor_on "--json" 4 --json
check_json "online --json: status warn, the cert finding warn" \
	'd["status"] == "warn" and [x["check"] for x in d["findings"] if x["severity"] != "ok"] == ["cert"]'
kbt_stop
doctor_off "a server certificate expiring in 10 days" 4
check_out "offline: the same WARN" "^WARN  cert +server certificate \"keybroker\" \(tls_cert "
cp -p "$w/server.crt.good" "$KBT_PKI/server.crt"
cp -p "$w/server.key.good" "$KBT_PKI/server.key"
doctor_off "the certificate put back" 0

kbt_section "3. a full disk: FAIL, exit 5"
DB=$w/db
mkdir -p "$DB"
disk_cleanup() {
	local rc=$?
	if [[ -n $KBT_PID ]]; then
		kill -KILL "$KBT_PID" 2>/dev/null
		wait "$KBT_PID" 2>/dev/null
		KBT_PID=
	fi
	[[ -n $DB ]] && mountpoint -q "$DB" && { umount "$DB" || umount -l "$DB"; }
	(exit "$rc")
	kbt_cleanup
}
trap disk_cleanup EXIT
if out=$(mount -t tmpfs -o size=16m,mode=0700 kbt-doctor-db "$DB" 2>&1); then
	kbt_pass "a 16 MiB tmpfs for the database and the audit log${KBT_DOCTOR_NS:+ (in a private mount namespace: unshare -m)}"
	cp -p "$KBT_DIR/keybroker.db" "$KBT_DIR/keybroker-audit.db" "$DB/"
	kbt_write_conf "database=$DB/keybroker.db" doctor_disk_warn_mb=4 doctor_disk_fail_mb=2
	kbt_start || kbt_done
	doctor_on "the database on a tmpfs with room" 0
	check_out "online: the tmpfs is named, with its free space" \
		"^OK    disk +free disk for the database and the audit log \($DB\): 1[0-9] MiB of 16 MiB free"
	dd if=/dev/zero of="$DB/filler" bs=64k >/dev/null 2>&1
	dd if=/dev/zero of="$DB/filler2" bs=512 >/dev/null 2>&1
	check_eq "the tmpfs is full" "$(df --output=avail -k "$DB" | tail -n 1 | tr -d ' ')" 0
	doctor_on "the database's disk full" 5
	cat "$KBT_OUT"
	check_out "online: FAIL names the database's file system" \
		"^FAIL  disk +free disk for the database and the audit log \($DB\): 0 MiB of 16 MiB free, below doctor_disk_fail_mb \(2\)"
	check_out "online: ... with what to do" "^ +-> free space on that file system"
	doctor_on "--json" 5 --json
	check_json "online --json: status fail, the disk finding fail" \
		'd["status"] == "fail" and [x["check"] for x in d["findings"] if x["severity"] == "fail"] == ["disk"]'
	rm -f "$DB/filler" "$DB/filler2"
	kbt_stop
	dd if=/dev/zero of="$DB/filler" bs=64k >/dev/null 2>&1
	dd if=/dev/zero of="$DB/filler2" bs=512 >/dev/null 2>&1
	doctor_off "the database's disk full, broker stopped" 5
	check_out "offline: the same FAIL" \
		"^FAIL  disk +free disk for the database and the audit log \($DB\): 0 MiB"
	rm -f "$DB/filler" "$DB/filler2"
	doctor_off "room again" 0
	# Back where it was, as the broker left it (its audit log is ahead
	# of the copy it started from, and so is the token's anchor).
	cp -p "$DB/keybroker.db" "$DB/keybroker-audit.db" "$KBT_DIR/"
	kbt_write_conf "database=$KBT_DIR/keybroker.db" doctor_disk_warn_mb=1024 doctor_disk_fail_mb=64
	umount "$DB" || umount -l "$DB"
	DB=
else
	DB=
	kbt_skip "a full disk" "cannot mount a tmpfs here, nor in a private mount namespace (mount: ${out:-failed}); run as root"
fi

kbt_section "4. a clock jump waits for confirmation: WARN, exit 4; locked environments counted"
kbt_start || kbt_done
kbt_clock_set $((73 * 3600))
expect_ok kb_admin clock show
check_out "the broker saw the jump: the sweeper is paused" '^sweeper: PAUSED'
doctor_on "a forward clock jump waiting" 4
check_out "online: WARN says the jump waits, and what to do" \
	"^WARN  clock +policy time .*: a forward jump of 3 d [01] h .* waits for confirmation: the sweeper deletes nothing meanwhile"
check_out "online: ... kbctl clock confirm" "^ +-> check the host's clock .*kbctl clock confirm"
check_out "online: nothing else warns or fails" '^doctor: [0-9]+ ok, 1 warn, 0 fail'
expect_ok kb_admin clock confirm --yes
doctor_on "the jump confirmed" 0
expect_ok kb_admin tenants lock globex --key "$w/globex.pfx" --password-file "$pw" --yes
doctor_on "globex locked" 0
check_out "online: the locked environment is counted, with its deletion date" \
	"^OK    deletion +environments in state locked: 1 locked: pending deletion by the sweeper 28 days after each lock unless unlocked, the first at $(date -u -d "@$(($(kbt_now_us) / 1000000 + 28 * 86400))" +%Y-%m-%d)"
check_out "online: the locked keys are counted (the tenant key and its KEK)" "^OK    deletion +keys in state locked: 2 locked"
expect_ok kb_admin tenants create initech
expect_ok kb_admin envs create initech old
expect_ok kb_admin envs delete initech old --yes
doctor_on "an environment pending deletion" 0
check_out "online: the environment pending deletion is counted apart, with the date it becomes final" \
	"^OK    deletion +environments in state pending_deletion: 1 pending deletion \(kbctl envs undelete cancels one until then\), the first final at $(date -u -d "@$(($(kbt_now_us) / 1000000 + 7 * 86400))" +%Y-%m-%d)"
kbt_stop
doctor_off "globex locked" 0

kbt_section "5. acme's KEK destroyed under the running broker: WARN, exit 4; repaired, 0"
kbt_start || kbt_done
kbt_token_delete "kb:kek:acme" "$KBT_DIR/token" secret-key
doctor_on "the KEK gone from the token, its tenant key there" 4
cat "$KBT_OUT"
check_out "online: WARN names the KEK and its tenant key" \
	"^WARN  key +KEK kek-[0-9a-f]+ of tenant acme \(state active\): not in token 'keybroker', but its tenant key $KEY is"
check_out "online: ... and says kbctl repair acme" "^ +-> kbctl repair acme "
expect_ok kb_admin repair acme --yes
check_out "kbctl repair: all 3 data keys the KEK seals repaired, none marked unrecoverable" \
	'^[0-9]+ data keys checked, 3 repaired, 0 unrecoverable'
for e in prod dev qa; do
	check "acme/$e serves its data key again" kb_svc acme "$e" datakey get acme "$e"
done
doctor_on "the KEK unwrapped again by kbctl repair" 0
kbt_stop

kbt_section "6. acme's tenant key destroyed in the token: FAIL naming it, exit 5"
kbt_token_delete "$KEY"
doctor_off "the tenant key gone from the token" 5
cat "$KBT_OUT"
check_out "offline: FAIL names the key, its tenant and its 3 environments" \
	"^FAIL  key +tenant key $KEY of tenant acme \(state active, fingerprint [0-9a-f]{16}\.\.\.\): not in token 'keybroker': no private key with id $KEY; 3 environment\(s\) of 1 tenant\(s\) depend on it: acme/dev, acme/prod, acme/qa \(tenants: acme\)"
check "offline: the platform-managed acme/plat is not named" bash -c "! grep -q 'acme/plat' '$KBT_OUT'"
check_out "offline: ... with what to do" "^ +-> restore the token from its backup"
doctor_off "--json" 5 --json
check_json "offline --json: the failing finding is the key, naming acme/prod" \
	'[(x["check"], "acme/prod" in x["found"]) for x in d["findings"] if x["severity"] == "fail"] == [("key", True)]'
kbt_start || kbt_done
doctor_on "the tenant key gone from the token" 5
check_out "online: the same FAIL" \
	"^FAIL  key +tenant key $KEY of tenant acme .*depend on it: acme/dev, acme/prod, acme/qa"

kbt_done
