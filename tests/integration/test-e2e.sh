#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-e2e.sh: the end-to-end path against a real keybrokerd and SoftHSMv2 token.
#
# Tenants and environments through kbctl (table and --json), a service's data
# key (stable across calls and a restart; the same through Python grpcio), the
# role, tenant and environment limits of each certificate, refusals
# (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, certificates from another CA,
# expired or not yet valid), and that none of the refusals changed anything.
# KBT_DB=postgres (integration/test-e2e-pg): the same on a PostgreSQL
# database, then what only PostgreSQL has: the server stopped under the
# broker (health NOT_SERVING naming the database, calls UNAVAILABLE) and
# started again (SERVING again, the same DEKs, no restart of the broker);
# backup create and --restore refused, pointing at pg_dump; an empty
# database beside a token with keys refused; a password in the connection
# string refused; database_password_file checked like the PIN file.
# Run: bash tests/integration/test-e2e.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

pki() { "$KB_SRC/deploy/pki.sh" "$@" >/dev/null || kbt_fail "deploy/pki.sh $*"; }

kbt_setup
kbt_start || kbt_done

kbt_section "health and identity"
expect_ok kb_admin health
expect_ok kb_admin whoami
check_out "whoami names the admin" 'admin'
expect_ok kb_admin whoami --json
check_json "whoami --json: role admin, name admin, no tenant limit" \
	'"ADMIN" in str(f(d, "role")).upper() and d.get("name") == "admin" and not d.get("tenants")'
expect_ok kb_as auditor whoami --json
check_json "whoami --json as the auditor: role auditor" \
	'"AUDITOR" in str(f(d, "role")).upper() and d.get("name") == "auditor"'

kbt_section "tenants"
expect_ok kb_admin tenants create acme --name "Acme Corp"
expect_ok kb_admin tenants create globex --name Globex
id63=$(printf 'a%.0s' {1..63})
expect_ok kb_admin tenants create "$id63"
name200=$(printf 'x%.0s' {1..200})
expect_ok kb_admin tenants create longname --name "$name200"
utf8name=$(printf '\xc3\xa9%.0s' {1..100}) # 100 x U+00E9: 200 bytes
expect_ok kb_admin tenants create utf8 --name "$utf8name"
expect_ok kb_admin tenants list
check_out "tenants list shows acme with its name" 'acme.*Acme Corp'
check_out "tenants list shows globex" 'globex'
expect_ok kb_admin tenants list --json
check_json "tenants list --json: exactly the five tenants" \
	"sorted(t['id'] for t in items(d, 'tenants')) == sorted(['acme', 'globex', '$id63', 'longname', 'utf8'])"
check_json "tenants list --json: acme's display name" \
	"[f(t, 'display_name') for t in items(d, 'tenants') if t['id'] == 'acme'] == ['Acme Corp']"
check_json "tenants list --json: a 200-byte UTF-8 name comes back intact" \
	"[f(t, 'display_name') for t in items(d, 'tenants') if t['id'] == 'utf8'] == ['\u00e9' * 100]"
expect_ok kb_admin tenants show acme
check_out "tenants show acme shows its name" 'Acme Corp'
expect_ok kb_admin tenants show acme --json
check_json "tenants show acme --json: id, display name, create time" \
	'd["id"] == "acme" and f(d, "display_name") == "Acme Corp" and int(f(d, "create_time_us") or 0) > 1.7e15'

kbt_section "environments"
expect_ok kb_admin envs create acme prod
expect_ok kb_admin envs create acme dev
expect_ok kb_admin envs create globex prod
expect_ok kb_admin envs create acme "$id63"
expect_ok kb_admin envs list acme
check_out "envs list acme shows prod" 'prod'
check_out "envs list acme shows dev" 'dev'
expect_ok kb_admin envs list acme --json
check_json "envs list acme --json: dev, prod and the 63-character name" \
	"sorted(e['name'] for e in items(d, 'environments')) == sorted(['dev', 'prod', '$id63'])"
expect_ok kb_admin envs list longname --json
check_json "envs list of a tenant without environments is empty" \
	'items(d, "environments") == []'
expect_ok kb_admin envs show acme prod
check_out "envs show acme prod shows its name" 'prod'
expect_ok kb_admin envs show acme prod --json
check_json "envs show --json: acme/prod, platform mode, enabled, DEK version 1" \
	'f(d, "tenant_id") == "acme" and d["name"] == "prod" and "PLATFORM" in str(d.get("mode")).upper() and "ENABLED" in str(d.get("state")).upper() and int(f(d, "dek_version") or 0) == 1'
check_json "envs show --json: a wrap algorithm and a key id" \
	'str(f(d, "wrap_algorithm")) == "AES-256-GCM" and str(f(d, "key_id")).startswith("kb-pk-")'
expect_ok kb_admin tenants show acme --json
check_json "tenants show acme --json: environment_count 3" \
	'int(f(d, "environment_count") or 0) == 3'

kbt_section "data keys"
pki service acme prod
pki service acme dev
expect_ok kb_as service-acme-prod whoami --json
check_json "whoami as service acme/prod: role service, environment acme/prod" \
	'"SERVICE" in str(f(d, "role")).upper() and "acme/prod" in d.get("environments", [])'
expect_ok kb_as service-acme-prod datakey get acme prod --json
check_json "datakey get --json: a 32-byte base64 DEK, version 1" \
	'len(base64.b64decode(d["dek"], validate=True)) == 32 and int(f(d, "dek_version")) == 1'
dek_prod=$(json 'd["dek"]' 2>/dev/null)
expect_ok kb_as service-acme-prod datakey get acme prod --json
check_eq "the DEK is the same on a second call" "$(json 'd["dek"]' 2>&1)" "$dek_prod"
expect_ok kb_as service-acme-prod datakey get acme prod
expect_ok kb_as service-acme-dev datakey get acme dev --json
dek_dev=$(json 'd["dek"]' 2>/dev/null)
check_ne "acme/dev has its own DEK" "$dek_dev" "$dek_prod"

# The same DEK through another gRPC implementation (Python grpcio).
interop_out=$KBT_DIR/interop.out
if "$KBT_PY" "$here/test-interop.py" --addr "$KB_ADDR" --ca "$KB_CA" \
	--cert "$KBT_PKI/service-acme-prod.crt" --key "$KBT_PKI/service-acme-prod.key" \
	--tenant acme --env prod --other-env dev --expect-dek "$dek_prod" \
	--proto-dir "$KB_SRC/proto" >"$interop_out" 2>&1; then
	kbt_pass "Python grpcio client (test-interop.py) agrees: $(tail -n 1 "$interop_out")"
else
	kbt_fail "Python grpcio client (test-interop.py)" "$(cat "$interop_out")"
fi

kbt_section "a tenant-limited admin"
pki admin ops acme initech
expect_ok kb_as admin-ops whoami --json
check_json "whoami as ops: limited to acme and initech" \
	'sorted(d.get("tenants", [])) == ["acme", "initech"]'
expect_ok kb_as admin-ops tenants show acme
expect_ok kb_as admin-ops envs list acme
expect_ok kb_as admin-ops envs create acme staging
expect_ok kb_as admin-ops tenants create initech --name Initech
expect_fail PERMISSION_DENIED kb_as admin-ops tenants show globex
expect_fail PERMISSION_DENIED kb_as admin-ops tenants show nosuch
expect_fail PERMISSION_DENIED kb_as admin-ops tenants create hooli
expect_fail PERMISSION_DENIED kb_as admin-ops envs list globex
expect_fail PERMISSION_DENIED kb_as admin-ops envs show globex prod
expect_fail PERMISSION_DENIED kb_as admin-ops envs create globex staging
expect_fail PERMISSION_DENIED kb_as admin-ops datakey get acme prod
kb_as admin-ops tenants list --json
if [[ $KBT_RC == 0 ]]; then
	check_json "tenants list as ops shows only its tenants" \
		'sorted(t["id"] for t in items(d, "tenants")) == ["acme", "initech"]'
else
	expect_fail PERMISSION_DENIED kb_as admin-ops tenants list
fi

# Everything from here on is refused: nothing may change.
tenants_expr='sorted((t["id"], f(t, "display_name")) for t in items(d, "tenants"))'
envs_expr='sorted(e["name"] for e in items(d, "environments"))'
expect_ok kb_admin tenants list --json
tenants_before=$(json "$tenants_expr" 2>&1)
expect_ok kb_admin envs list acme --json
envs_before=$(json "$envs_expr" 2>&1)

kbt_section "roles and scopes"
expect_fail PERMISSION_DENIED kb_admin datakey get acme prod
expect_fail PERMISSION_DENIED kb_as service-acme-prod datakey get acme dev
expect_fail PERMISSION_DENIED kb_as service-acme-prod datakey get acme nosuch
expect_fail PERMISSION_DENIED kb_as service-acme-prod datakey get globex prod
expect_fail PERMISSION_DENIED kb_as service-acme-prod tenants create evil
expect_fail PERMISSION_DENIED kb_as service-acme-prod tenants list
expect_fail PERMISSION_DENIED kb_as service-acme-prod envs create acme evil
expect_fail PERMISSION_DENIED kb_as auditor tenants create evil
expect_fail PERMISSION_DENIED kb_as auditor envs create acme evil
expect_fail PERMISSION_DENIED kb_as auditor datakey get acme prod

kbt_section "not found"
expect_fail NOT_FOUND kb_admin tenants show nosuch
check 'kbctl prints the refusal as "kbctl: NOT_FOUND: message"' \
	grep -Eqx 'kbctl: NOT_FOUND: .*nosuch.*' "$KBT_ERR"
expect_fail NOT_FOUND kb_admin envs list nosuch
expect_fail NOT_FOUND kb_admin envs show acme nosuch
expect_fail NOT_FOUND kb_admin envs show nosuch prod
expect_fail NOT_FOUND kb_admin envs create nosuch prod
pki service acme ghost
expect_fail NOT_FOUND kb_as service-acme-ghost datakey get acme ghost
pki service nosuch prod
expect_fail NOT_FOUND kb_as service-nosuch-prod datakey get nosuch prod

kbt_section "already exists"
expect_fail ALREADY_EXISTS kb_admin tenants create acme
expect_fail ALREADY_EXISTS kb_admin tenants create acme --name "Another Acme"
expect_fail ALREADY_EXISTS kb_admin envs create acme prod

kbt_section "invalid names"
id64=$(printf 'a%.0s' {1..64})
expect_fail INVALID_ARGUMENT -m '63' kb_admin tenants create ''
expect_fail INVALID_ARGUMENT -m '63' kb_admin tenants create "$id64"
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin tenants create Acme
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin tenants create a_b
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin tenants create 'a b'
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin tenants create a/b
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin tenants create acme-
expect_fail INVALID_ARGUMENT -m '200' kb_admin tenants create toolong --name "${name200}x"
expect_fail INVALID_ARGUMENT -m 'UTF-8' kb_admin tenants create badutf --name $'bad \xff name'
expect_fail INVALID_ARGUMENT -m 'control' kb_admin tenants create ctrl --name $'two\nlines'
expect_fail INVALID_ARGUMENT -m '63' kb_admin envs create acme ''
expect_fail INVALID_ARGUMENT -m '63' kb_admin envs create acme "$id64"
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin envs create acme Prod
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin envs create acme p_d
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin envs create acme 'p d'
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin envs create acme p/d
expect_fail INVALID_ARGUMENT -m 'a-z' kb_admin tenants show 'a/b'

kbt_section "kbctl usage errors"
expect_usage kb_admin
expect_usage kb_admin frobnicate
expect_usage kb_admin tenants frobnicate
expect_usage kb_admin tenants create
expect_usage kb_admin datakey get acme
expect_usage kb_admin tenants list --no-such-flag

kbt_section "certificates the broker must not accept"
KB_VAR=$KBT_DIR/other "$KB_SRC/deploy/pki.sh" init >/dev/null || kbt_fail "pki.sh init (other CA)"
KB_VAR=$KBT_DIR/other pki service acme prod
pki --ca-dir "$KBT_DIR/other/pki" admin rogue
pki --days -1 admin expired
pki --not-before '+1 day' --not-after '+30 days' admin future
refused='UNAVAILABLE|UNAUTHENTICATED'
expect_fail "$refused" kb_as "$KBT_DIR/other/pki/admin" tenants list
expect_fail "$refused" kb_as admin-rogue tenants list
expect_fail "$refused" kb_as "$KBT_DIR/other/pki/service-acme-prod" datakey get acme prod
# kbctl itself may refuse to present an expired or not yet valid certificate
# (exit 1, saying so); the broker's own refusal is checked with grpcio below.
expect_fail "$refused|expired" kb_as admin-expired tenants list
expect_fail "$refused|not valid yet|not yet valid" kb_as admin-future tenants list
for c in admin-expired admin-future admin-rogue; do
	if "$KBT_PY" "$here/test-interop.py" --expect-refused --addr "$KB_ADDR" --ca "$KB_CA" \
		--cert "$KBT_PKI/$c.crt" --key "$KBT_PKI/$c.key" --proto-dir "$KB_SRC/proto" \
		>"$interop_out" 2>&1; then
		kbt_pass "grpcio: $(head -n 1 "$interop_out" | sed 's/^ok *//')"
	else
		kbt_fail "grpcio: the broker refuses $c" "$(cat "$interop_out")"
	fi
done
# kbctl must not trust a server its CA did not sign.
KB_CA=$KBT_DIR/other/pki/ca.crt expect_fail "$refused" kb_admin health
# Nothing listening.
KB_ADDR=127.0.0.1:$(kbt_free_port) expect_fail UNAVAILABLE kb_admin health

kbt_section "after the refusals"
expect_ok kb_admin health
expect_ok kb_admin tenants list --json
check_eq "tenants list is unchanged" "$(json "$tenants_expr" 2>&1)" "$tenants_before"
expect_ok kb_admin envs list acme --json
check_eq "envs list acme is unchanged" "$(json "$envs_expr" 2>&1)" "$envs_before"

kbt_section "restart"
kbt_stop
kbt_start || kbt_done
expect_ok kb_as service-acme-prod datakey get acme prod --json
check_eq "the DEK is the same after a restart" "$(json 'd["dek"]' 2>&1)" "$dek_prod"
expect_ok kb_as service-acme-dev datakey get acme dev --json
check_eq "acme/dev's DEK is the same after a restart" "$(json 'd["dek"]' 2>&1)" "$dek_dev"
expect_ok kb_admin tenants list --json
check_eq "tenants list is the same after a restart" "$(json "$tenants_expr" 2>&1)" "$tenants_before"

if kbt_db_is_pg; then
	# health_is WANT: kbctl health prints WANT (exit 0 for SERVING, else 1).
	health_is() {
		local rc=1
		[[ $1 == SERVING ]] && rc=0
		kb_admin --timeout 5 health
		[[ $KBT_RC == "$rc" ]] && grep -qx "$1" "$KBT_OUT"
	}
	# wait_health WANT SECONDS: poll until health is WANT.
	wait_health() {
		local i
		for ((i = 0; i < $2 * 5; i++)); do
			health_is "$1" && return 0
			sleep 0.2
		done
		return 1
	}

	kbt_section "PostgreSQL: the engine in the log"
	check "the log names the store's engine and target" \
		grep -q "store: PostgreSQL database $KBT_PG_URI" "$KBT_LOG"
	check "... and the server's version (the audit log's line, same database)" \
		grep -Eq "audit log: PostgreSQL [0-9]+\.[0-9]+ database .*the store's database" "$KBT_LOG"

	kbt_section "PostgreSQL: the server stopped under the broker, then back"
	check "health is SERVING" health_is SERVING
	check "the database server stops" kbt_pg_server_stop
	if wait_health NOT_SERVING 5; then
		kbt_pass "health says NOT_SERVING within 5 s of the server stopping"
	else
		kbt_fail "health says NOT_SERVING within 5 s of the server stopping" "$(kbt_last)"
	fi
	check "the log says why: the database" grep -Eq 'health: NOT_SERVING: .*database' "$KBT_LOG"
	expect_fail UNAVAILABLE kb_as service-acme-prod datakey get acme prod
	expect_fail UNAVAILABLE kb_admin tenants create during-outage
	check "the broker is still running" kill -0 "$KBT_PID"
	check "the database server starts again" kbt_pg_server_start
	if wait_health SERVING 15; then
		kbt_pass "health says SERVING again by itself, no broker restart"
	else
		kbt_fail "health says SERVING again within 15 s of the server's return" "$(kbt_last)" \
			"$(kbt_print_log)"
	fi
	check "the log says so" grep -q 'health: SERVING again' "$KBT_LOG"
	expect_ok kb_as service-acme-prod datakey get acme prod --json
	check_eq "the DEK is the same after the outage" "$(json 'd["dek"]' 2>&1)" "$dek_prod"
	expect_ok kb_admin tenants create after-outage
	expect_fail NOT_FOUND kb_admin tenants show during-outage
	kb_rpc ListEvents '{"filter": {"method": "audit.recovered"}, "page_size": 10}'
	check_json "the audit log recorded audit.recovered after the outage, under this broker's instance" \
		'len(d.get("events", [])) >= 1 and all(__import__("re").fullmatch(r"sys-[0-9a-f]{8}-[0-9a-f]+", e.get("request_id", e.get("requestId", ""))) for e in d["events"])'

	kbt_section "PostgreSQL: backup and restore are PostgreSQL's"
	expect_fail FAILED_PRECONDITION -m "pg_basebackup.*pg_dump.*Backup and recovery" \
		kb_admin backup create --out "$KBT_DIR/pg.kbb"
	check "no backup file was written" test ! -e "$KBT_DIR/pg.kbb"
	kbt_stop
	printf 'keybroker-backup 1\n' >"$KBT_DIR/any.kbb"
	"$KB_BUILD/keybrokerd" --config "$KBT_CONF" --restore "$KBT_DIR/any.kbb" \
		</dev/null >"$KBT_OUT" 2>"$KBT_ERR"
	KBT_RC=$?
	if [[ $KBT_RC == 1 ]] && grep -q "pg_dump" "$KBT_ERR" && grep -q "nothing was read or written" "$KBT_ERR"; then
		kbt_pass "keybrokerd --restore is refused, pointing at pg_dump: $(cut -c1-120 "$KBT_ERR")"
	else
		kbt_fail "keybrokerd --restore is refused on PostgreSQL" "$(kbt_last)"
	fi

	kbt_section "PostgreSQL: start-up refusals"
	check "an empty second database is made" \
		psql -X -q -d "$KBT_PG_URI" -c "CREATE DATABASE kbt_empty"
	empty=${KBT_PG_URI/\/keybroker\?/\/kbt_empty?}
	kbt_write_conf "database=$empty"
	kbt_expect_no_start "an empty database beside a token holding this broker's keys: refused" \
		"$KBT_CONF" "holds no keybroker data" "--allow-new-database"
	kbt_expect_no_start "... and refused again at the next start (nothing was bound)" \
		"$KBT_CONF" "holds no keybroker data"
	pw=kbt-db-pw-$RANDOM$RANDOM
	kbt_write_conf "database=${KBT_PG_URI/postgresql:\/\//postgresql://postgres:$pw@}"
	kbt_expect_no_start "a password in the connection string: refused at load" \
		"$KBT_CONF" "holds a password" "database_password_file"
	check "... and the password is in no message" bash -c "! grep -q '$pw' '$KBT_DIR/no-start.err'"
	printf '%s\n' "$pw" >"$KBT_DIR/db-pw"
	chmod 0644 "$KBT_DIR/db-pw"
	kbt_write_conf "database=$KBT_PG_URI" "database_password_file=$KBT_DIR/db-pw"
	kbt_expect_no_start "a database_password_file others can read: refused like the PIN file" \
		"$KBT_CONF" "db-pw" "0644"
	chmod 0600 "$KBT_DIR/db-pw"
	kbt_start || kbt_done
	expect_ok kb_as service-acme-prod datakey get acme prod --json
	check_eq "with a password file of mode 0600, the same data" "$(json 'd["dek"]' 2>&1)" "$dek_prod"
	check "the password is not in the broker's log" bash -c "! grep -q '$pw' '$KBT_LOG'"

	kbt_section "PostgreSQL: the store's pool is database_connections"
	# The broker's connections right after start-up (idle: the pool, the
	# audit log's, any lease held); only the pool's size differs between
	# the two starts.
	# (The fewest of 3 counts: a lease taken for a moment is not the pool.)
	conns() {
		local i n min=
		for i in 1 2 3; do
			n=$(psql -X -q -A -t -d "$KBT_PG_URI" -c \
				"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'keybrokerd'")
			[[ -z $min || $n -lt $min ]] && min=$n
			sleep 0.3
		done
		echo "$min"
	}
	sleep 1.5
	n_default=$(conns)
	kbt_stop
	kbt_write_conf "database_connections=12"
	kbt_start || kbt_done
	sleep 1.5
	n_twelve=$(conns)
	check "database_connections = 12 holds 8 more connections than the default workers + 2 = 4 ($n_default, then $n_twelve)" \
		test "$((n_twelve - n_default))" = 8
	expect_ok kb_as service-acme-prod datakey get acme prod --json
fi

kbt_done
