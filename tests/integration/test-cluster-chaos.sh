#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-cluster-chaos.sh: three brokers on one PostgreSQL database and one
# SoftHSMv2 token under a mixed load, a random one SIGKILLed and restarted
# 20 times, then the PostgreSQL server stopped and started under the load
# (issue 13). Always PostgreSQL (KBT_DB=postgres: lib.sh's server of the
# test's own).
#
# test-cluster-chaos.py starts the three brokers (one configuration each,
# the same database, token and PKI; their own loopback ports) and drives
# them from threads: services calling GetDataKey, admins creating
# environments and tenants, RotateDataKey. Every call is a client's with
# the address list (a random broker first, the next on UNAVAILABLE); every
# acknowledged write goes into a journal file. Each round: load on all
# three, SIGKILL of a random one, load on the two others, restart, wait for
# SERVING. Then the server stopped under the load: calls fail UNAVAILABLE,
# every health check says NOT_SERVING; started again: every broker serves
# again by itself (the same processes), no acknowledged write lost.
# Checked afterwards: from the journal, every acknowledged tenant,
# environment and DEK version exists, and GetDataKey of each version
# returns the DEK first read for it (through another broker than the one
# that rotated it); never another DEK for a version, never an older version
# after an acknowledged rotation; the audit chain verifies (kbt_audit.py on
# the database, kbctl audit export + verify, the key pinned); every broker
# exits 0 on SIGTERM; then PostgreSQL's own consistency check: pg_amcheck
# (heap and every B-tree index, --heapallindexed) as the server's owner,
# and bt_index_check over every index of the database's tables.
# Prints info: lines: calls, errors by code, the time from each kill to the
# next successful call.
# KBT_CHAOS_ROUNDS (default 20), KBT_CHAOS_SEED (the same kill schedule).
# Run: bash tests/integration/test-cluster-chaos.sh (KB_BUILD=build dir,
# KBT_KEEP=1 keeps the temp dir with the logs and the journal).
# shellcheck disable=SC2119 # kbt_setup takes optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export KBT_DB=postgres
# Under ctest's TIMEOUT of 300 s; the driver's budget is inside it.
KBT_DEADLINE=${KBT_DEADLINE:-280}
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

kbt_setup workers=4 log_level=info
w=$KBT_DIR/work
mkdir -m 700 "$w"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto

# The three brokers' configurations: lib.sh's settings (the database
# among them), each its own port and log.
confs=() addrs=() logs=()
for i in 1 2 3; do
	addr=127.0.0.1:$(kbt_free_port)
	conf=$KBT_DIR/broker$i.conf
	KB_LISTEN=$addr "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "${KBT_CONF_SETTINGS[@]}" \
		>"$conf" || { kbt_fail "deploy/conf.sh for broker $i"; kbt_done; }
	confs+=("$conf")
	addrs+=("$addr")
	logs+=("$KBT_DIR/keybrokerd-$i.log")
done
join() {
	local IFS=,
	printf '%s' "$*"
}

# The driver starts and kills the brokers itself; if this script is stopped
# (watchdog, ^C), stop the driver and any broker it left (only a pid that is
# still one of ours).
# shellcheck disable=SC2317 # called by the EXIT trap
chaos_cleanup() {
	local i pid
	[[ -n ${pypid:-} ]] && kill -TERM "$pypid" 2>/dev/null && wait "$pypid" 2>/dev/null
	for i in 1 2 3; do
		[[ -s $w/broker-$i.pid ]] || continue
		pid=$(<"$w/broker-$i.pid")
		if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null |
			grep -qF -- "--config ${confs[i - 1]}"; then
			kill -KILL "$pid" 2>/dev/null
		fi
	done
}
trap 'rc=$?; chaos_cleanup; (exit $rc); kbt_cleanup' EXIT

ROUNDS=${KBT_CHAOS_ROUNDS:-20}
kbt_section "three brokers, one database, one token: $ROUNDS rounds of SIGKILL under load, then PostgreSQL stopped and started"
args=(--broker "$KBT_BROKER" --conf "$(join "${confs[@]}")" --addr "$(join "${addrs[@]}")"
	--log "$(join "${logs[@]}")" --pki "$KBT_PKI" --out "$w" --src "$KB_SRC"
	--pg-dir "$KBT_PG_DIR" --pg-uri "$KBT_PG_URI" --kbctl "$KB_BUILD/kbctl"
	--rounds "$ROUNDS" --budget $((KBT_DEADLINE - 40)))
[[ -n ${KBT_CHAOS_SEED:-} ]] && args+=(--seed "$KBT_CHAOS_SEED")
t0=$SECONDS
# In the background: wait is interrupted by the watchdog's TERM.
"$KBT_PY" "$here/test-cluster-chaos.py" "${args[@]}" >"$w/py.out" 2>&1 &
pypid=$!
wait "$pypid"
rc=$?
pypid=
kbt_py_report "$w/py.out"
check "test-cluster-chaos.py exits 0" test "$rc" = 0
echo "     (the driver took $((SECONDS - t0)) s)"

kbt_section "PostgreSQL's own consistency check (amcheck), the brokers stopped"
pgbin=/usr/lib/postgresql/15/bin
[[ -x $pgbin/pg_amcheck ]] || pgbin=$(pg_config --bindir)
owner=$(stat -c %U "$KBT_PG_DIR/data")
as_owner=()
((EUID == 0)) && as_owner=(runuser -u "$owner" --)
# as_owner CMD...: CMD as the server's owner, from a directory it can enter.
as_owner() { (cd "$KBT_PG_DIR" && "${as_owner[@]}" "$@"); }
check "CREATE EXTENSION amcheck (as $owner)" as_owner "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 \
	-h "$KBT_PG_DIR" -U postgres -d keybroker -c "CREATE EXTENSION IF NOT EXISTS amcheck"
if as_owner "$pgbin/pg_amcheck" -h "$KBT_PG_DIR" -U postgres -d keybroker \
	--heapallindexed --parent-check --progress >"$w/amcheck.out" 2>&1; then
	# --progress's last figures: the relations checked (its pages are
	# the planner's estimates).
	rels=$(tr '\r' '\n' <"$w/amcheck.out" | sed -n 's/^ *\([0-9]*\)\/[0-9]* relations.*/\1/p' | tail -n 1)
	kbt_pass "pg_amcheck --heapallindexed --parent-check: no corruption in the ${rels:-?} relations (tables, indexes, TOAST) of the database"
else
	kbt_fail "pg_amcheck: every table and B-tree index of the database is consistent" \
		"$(tail -n 20 "$w/amcheck.out")"
fi
# The same for the indexes by hand: bt_index_check (heapallindexed) over
# every B-tree index of the tables in the database's own schemas.
n=$(as_owner "$pgbin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$KBT_PG_DIR" -U postgres \
	-d keybroker -c "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
		JOIN pg_namespace ns ON ns.oid = c.relnamespace
		WHERE am.amname = 'btree' AND ns.nspname NOT IN ('pg_catalog', 'information_schema')
		  AND ns.nspname NOT LIKE 'pg_toast%'" 2>"$w/bt.err")
if [[ $? == 0 && ${n:-0} -gt 0 ]]; then
	kbt_pass "bt_index_check (heapallindexed) passes on all $n B-tree indexes of the database's tables"
else
	kbt_fail "bt_index_check over every index of the database's tables" "count: ${n:-none}" \
		"$(head -c 1000 "$w/bt.err")"
fi

if [[ $KBT_FAIL != 0 ]]; then
	for l in "${logs[@]}"; do
		echo "---- $l (last 25 lines) ----"
		tail -n 25 "$l" 2>/dev/null
	done
fi
kbt_done
