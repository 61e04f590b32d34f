#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-upgrade.sh: a database written before envelope v2 (tests/data/
# fixture-v1, RSA-OAEP-wrapped DEKs) is upgraded at start-up: every DEK reads
# back unchanged during and after the upgrade job, the pre-v2 platform key is
# destroyed, a pre-v2 blob forged afterwards is refused, and a tenant locked
# before the upgrade is upgraded at its unlock.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

fx=$KB_SRC/tests/data/fixture-v1
kbt_setup_testclock
w=$KBT_DIR/work
mkdir -p "$w"
# The fixture's token, PIN and databases in place of fresh ones.
rm -rf "$KBT_DIR/token/tokens"
cp -r "$fx/tokens" "$KBT_DIR/token/tokens"
install -m 0600 "$fx/pin" "$KBT_DIR/token/pin"
cp "$fx/keybroker.db" "$fx/keybroker-audit.db" "$KBT_DIR/"
install -m 0600 "$fx/pw" "$w/pw"
cp "$fx"/*.pfx "$w/"
kbt_clock_set $(($(<"$fx/clock-offset") + 3700))
db=$KBT_DIR/keybroker.db
check_eq "the fixture is at schema 2" "$(sqlite3 "$db" 'PRAGMA user_version')" 2
# The newest time the fixture records: the schema 4 migration's seed.
seed=$(sqlite3 "$db" "SELECT max((SELECT max(max(create_time_us, last_activation_us, last_key_change_us, lock_time_us)) FROM tenants), (SELECT max(update_time_us) FROM keys), (SELECT max(update_time_us) FROM environments))")
check_eq "the fixture's DEKs are RSA-OAEP" \
	"$(sqlite3 "$db" "SELECT count(*) FROM deks WHERE wrap_alg LIKE 'RSA-OAEP%'")" 7

# every_dek DESC: each DEK of expected.json but the locked tc/l1, unchanged.
every_dek() {
	local bad=0 t e v want got
	while read -r t e v want; do
		[[ $t == tc ]] && continue
		if ! kb_svc "$t" "$e" datakey get "$t" "$e" --version "$v" --json >/dev/null; then
			kbt_fail "$1: $t/$e version $v" "$(kbt_last)"
			bad=1
			continue
		fi
		got=$(json 'd["dek"]')
		if [[ $got != "$want" ]]; then
			kbt_fail "$1: $t/$e version $v" "got $got, want $want"
			bad=1
		fi
	done < <("$KBT_PY" -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["tenant"], r["env"], r["version"], r["dek"])' "$fx/expected.json")
	((bad == 0)) && kbt_pass "$1"
}
legacy_rows() { sqlite3 "$db" "SELECT count(*) FROM deks WHERE wrap_alg != 'AES-256-GCM'"; }

kbt_start || kbt_done
every_dek "while the upgrade runs, every DEK reads back unchanged"
for ((i = 0; i < 100; i++)); do
	[[ $(legacy_rows) == 1 ]] && break
	sleep 0.2
done
check_eq "the upgrade job re-sealed every row but the locked tenant's" "$(legacy_rows)" 1
check_eq "schema 6" "$(sqlite3 "$db" 'PRAGMA user_version')" 6
check "the clock's mark was seeded (the fixture's newest time: $(kbt_fmt_us "$seed")) and is kept" \
	test "$(sqlite3 "$db" 'SELECT mark_us >= '"$seed"' AND kept = 1 FROM clock')" = 1
expect_ok kb_admin clock show --json
check_json "an upgrade is no clock jump: the sweeper is not paused" "not d['sweeper_paused']"
check_eq "every environment has a uid" \
	"$(sqlite3 "$db" "SELECT count(*) FROM environments WHERE uid IS NULL OR length(uid) != 32")" 0
check_eq "tb got a KEK under its active key" \
	"$(sqlite3 "$db" "SELECT count(*) FROM keys WHERE purpose = 'kek' AND tenant_id = 'tb' AND state = 'active' AND parent_id = (SELECT id FROM keys WHERE tenant_id = 'tb' AND purpose = 'tenant' AND state = 'active')")" 1
for ((i = 0; i < 50; i++)); do
	[[ $(sqlite3 "$db" "SELECT state FROM keys WHERE id = 'kb-platform-1'") == deleted ]] && break
	sleep 0.2
done
check_eq "the pre-v2 platform key is recorded deleted" \
	"$(sqlite3 "$db" "SELECT state FROM keys WHERE id = 'kb-platform-1'")" deleted
check "the upgrade is in the audit log" bash -c \
	"grep -q 'job.upgrade.done' <(KB_CERT=$KBT_PKI/admin.crt KB_KEY=$KBT_PKI/admin.key '$KB_BUILD/kbctl' audit list --json --page-size 1000)"
every_dek "after the upgrade, every DEK reads back unchanged"
kbt_stop
kbt_start || kbt_done
every_dek "after a restart, every DEK reads back unchanged"
expect_ok kb_admin verify tb
expect_ok kb_admin verify ta

# A pre-v2 blob forged with tb's public key: the key may no longer decrypt,
# so it is refused (it was never accepted outside the upgrade anyway).
openssl pkcs12 -in "$w/tb-k1.pfx" -passin "file:$w/pw" -nocerts -nodes 2>/dev/null |
	openssl pkey -pubout -out "$w/tb-pub.pem" 2>/dev/null
head -c 32 /dev/urandom >"$w/forged.dek"
openssl pkeyutl -encrypt -pubin -inkey "$w/tb-pub.pem" -pkeyopt rsa_padding_mode:oaep \
	-pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 -in "$w/forged.dek" -out "$w/forged.bin"
tb_k1=$("$KBT_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tb_k1"])' "$fx/keys.json")
kbt_stop
sqlite3 "$db" "INSERT INTO deks(env_id, version, key_id, wrap_alg, wrapped, create_time_us)
	SELECT id, 2, '$tb_k1', 'RSA-OAEP-SHA1', readfile('$w/forged.bin'), 0 FROM environments
	WHERE tenant_id = 'tb' AND name = 'c1';
	UPDATE environments SET dek_version = 2 WHERE tenant_id = 'tb' AND name = 'c1';"
kbt_start || kbt_done
expect_fail DATA_LOSS -m "pre-v2|integrity" kb_svc tb c1 datakey get tb c1
check "the forged DEK was not served" bash -c "! grep -qF \"\$(base64 -w0 '$w/forged.dek')\" '$KBT_OUT'"
expect_ok kb_admin health

# tc was locked before the upgrade: its rows move at its unlock.
expect_ok kb_admin tenants unlock tc --key "$w/tc-k1.pfx" --password-file "$w/pw"
for ((i = 0; i < 100; i++)); do
	[[ $(sqlite3 "$db" "SELECT count(*) FROM deks d JOIN environments e ON e.id = d.env_id WHERE e.tenant_id = 'tc' AND d.wrap_alg != 'AES-256-GCM'") == 0 ]] && break
	sleep 0.2
done
check_eq "tc's row was upgraded after its unlock" \
	"$(sqlite3 "$db" "SELECT count(*) FROM deks d JOIN environments e ON e.id = d.env_id WHERE e.tenant_id = 'tc' AND d.wrap_alg != 'AES-256-GCM'")" 0
expect_ok kb_admin envs unlock tc l1
expect_ok kb_svc tc l1 datakey get tc l1 --json
check_eq "tc/l1 serves the DEK it had before the lock and the upgrade" "$(json 'd["dek"]')" \
	"$("$KBT_PY" -c '
import json, sys
print([r["dek"] for r in json.load(open(sys.argv[1])) if r["tenant"] == "tc"][0])' "$fx/expected.json")"
kbt_stop
kbt_done
