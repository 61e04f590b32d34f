# SPDX-License-Identifier: Apache-2.0
# lib.sh: helpers for end-to-end tests against a real keybrokerd and SoftHSMv2.
#
# Source it from a test script (bash), then:
#   kbt_setup [KEY=VALUE...]   temp dir, token, PKI, config (extra config settings)
#   kbt_setup_testclock [KEY=VALUE...]
#                              the same for keybrokerd-testclock: a clock offset
#                              file $KBT_CLOCK (test_clock_file) and
#                              sweep_interval_s=1; move time with kbt_clock_set
#   kbt_write_conf [KEY=VALUE...]  rewrite $KBT_CONF with more settings
#   kbt_start / kbt_stop       start the broker (wait for health) / SIGTERM it,
#                              which is itself a check: it must exit 0
#   kbt_kill                   SIGKILL the broker (a crash), reaped
#   kbt_wait_serving PID ADDR [S]  wait until a broker serves (kbt_start's
#                              wait; kbt_grpc.Broker's in Python)
#   kbt_start_extra NAME CONF ADDR [ARGS...] / kbt_kill_extra NAME
#                              a second broker of the test (SIGKILLed at the end)
#   kbt_conf_copy NAME PORT    $KBT_CONF's settings listening on 127.0.0.1:PORT
#                              (metrics off) in $KBT_CONF_COPY, for
#                              kbt_start_extra: another broker on the same
#                              database, token and test clock
#   kbt_tenant_keyed TENANT PFX PWFILE "CUSTOMER_ENVS" ["PLATFORM_ENVS"]
#                              a tenant with a generated, activated key and
#                              its environments ($KBT_KEY_ID: the key)
#   kbt_clock_set SECONDS      the test clock's offset (atomic write)
#   kbt_now_us                 the broker's now: real time + offset, in us
#   kbt_clock_to US            move the test clock so that the broker's now is
#                              US (us since the epoch; to the second, and real
#                              time goes on from there)
#   kb_svc TENANT ENV ARGS...  kbctl as service-TENANT-ENV (made on first use)
#   kb_rpc METHOD JSON [--file F=PATH]...  one call through Python grpcio
#                              (kbt_grpc.py), as the admin; output like kbctl
#   kbt_secret_file PATH TEXT  write TEXT to PATH, mode 0600 (passwords)
#   kbt_token_ids              the CKA_ID of every object in the test token,
#                              as text, one a line (p11tool; status 2 without)
#   kbt_token_delete LABEL [TOKEN_DIR [TYPES]]  destroy the objects labelled
#                              LABEL (TYPES, default "private public": a key pair
#                              labelled by its id; "secret-key" for a KEK,
#                              kb:kek:TENANT) in the test token (or the token copy
#                              in TOKEN_DIR), as an HSM that lost a key; p11tool's
#                              output in TOKEN_DIR/p11tool.log
#   expect_refused_until RULE WANT_US TOL_S CMD...
#                              CMD is FAILED_PRECONDITION naming RULE (ERE) and
#                              "allowed from <RFC 3339 time>" within TOL_S
#                              seconds of WANT_US (microseconds)
#   kbt_expect_no_start DESC CONF ERE...  the broker refuses CONF, saying ERE
#   kb_admin ARGS...           kbctl as the admin certificate
#   kb_as CERT ARGS...         kbctl as $KBT_PKI/CERT.crt/.key (e.g. service-acme-prod)
#   expect_ok CMD...           CMD exits 0
#   expect_fail STATUS [-m ERE] CMD...  (STATUS is an ERE too: "A|B")
#                              CMD exits 1 and stderr has STATUS (and matches ERE,
#                              case-insensitive, if given)
#   expect_usage CMD...        CMD exits 2
#   check DESC CMD...          CMD succeeds (any shell command)
#   check_eq DESC GOT WANT, check_ne DESC A B, check_out DESC ERE (last stdout),
#   check_json DESC PYEXPR     (last stdout as JSON, bound to d; see json below)
#   kbt_done                   print "N passed, N failed" and exit (1 on failure)
# After each kb_* run, $KBT_RC, $KBT_OUT (stdout file) and $KBT_ERR (stderr file).
#
# The database, whichever engine (KBT_DB):
#   kbt_db_is_pg               status 0 in PostgreSQL mode
#   kbt_db_sql store|audit SQL...  run SQL (one argument each statement, or
#                              on stdin with none) on the store's or the audit
#                              log's database: sqlite3 on its file, or psql on
#                              $KBT_PG_URI; rows '|'-separated either way
#                              (SQL both engines take: booleans as CASE ... 1/0)
#   kbt_db_save store|audit TABLE WHERE FILE  the rows of TABLE matching WHERE
#                              into FILE, to be put back with kbt_db_restore
#   kbt_db_restore FILE        put them back: the rows matching WHERE now are
#                              replaced by the saved ones
#   kbt_db_files               every file the databases live in (SQLite files
#                              and their -wal, or the PostgreSQL server's data
#                              directory), one a line, for searches
#   kbt_pg_server_stop / kbt_pg_server_start
#                              PostgreSQL mode: the server stopped under the
#                              broker, and started again on the same data
#
# Environment: KB_BUILD (default build/ at the repo root) holds keybrokerd and
# kbctl (and tests/keybrokerd-testclock); KB_SRC is the repository;
# KBT_BROKER the broker binary kbt_start runs (default $KB_BUILD/keybrokerd);
# KBT_KEEP=1 keeps the temp dir (a PostgreSQL server in it is stopped anyway).
# KBT_DB=postgres: kbt_setup starts a PostgreSQL server of the test's own in
# $KBT_DIR/pg (tests/pg/kbt-pg.sh) and the broker's database is there
# (database = $KBT_PG_URI; the audit log in the same database); the server is
# stopped at the end after the broker, also when the script fails or is
# stopped, and by a guard process if the script itself is killed.
# shellcheck shell=bash

set -u -o pipefail

KB_SRC=${KB_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
KBT_LIBDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KB_BUILD=${KB_BUILD:-$KB_SRC/build}
KBT_PY=/usr/bin/python3
KBT_PASS=0
KBT_FAIL=0
KBT_PID=
KBT_PORT=
KBT_DIR=
KBT_DONE=0
# Every kbctl call is bounded: a hung broker fails the check instead of the run.
KBT_CALL_TIMEOUT=${KBT_CALL_TIMEOUT:-30}
KBT_START_TIMEOUT=${KBT_START_TIMEOUT:-20}
# The whole script is bounded too (below ctest's TIMEOUT of 300 s), so that
# its EXIT trap still stops the broker and reports.
KBT_DEADLINE=${KBT_DEADLINE:-240}
KBT_WATCHDOG=
KBT_BROKER=${KBT_BROKER:-$KB_BUILD/keybrokerd}
KBT_CLOCK=
KBT_CONF_SETTINGS=()
# sqlite (the default) or postgres.
KBT_DB=${KBT_DB:-sqlite}
KBT_PG_URI=
KBT_PG_DIR=
KBT_PG_GUARD=

# ---- reporting ----

kbt_pass() {
	KBT_PASS=$((KBT_PASS + 1))
	printf 'ok   %s\n' "$1"
}

# kbt_fail DESC [DETAIL...]: record a failure; details are printed indented.
kbt_fail() {
	KBT_FAIL=$((KBT_FAIL + 1))
	printf 'FAIL %s\n' "$1"
	shift
	local d
	for d in "$@"; do
		printf '%s\n' "$d" | sed 's/^/     | /'
	done
}

# What the last kb_* call printed, for failure messages.
kbt_last() {
	printf 'exit %s\nstdout: %s\nstderr: %s' "$KBT_RC" \
		"$(head -c 2000 "$KBT_OUT")" "$(head -c 2000 "$KBT_ERR")"
}

# check DESC CMD...: CMD (any command) must succeed; its output is shown
# only on failure.
check() {
	local desc=$1 out
	shift
	if out=$("$@" 2>&1); then
		kbt_pass "$desc"
	else
		kbt_fail "$desc" "command failed (exit $?): $(kbt_desc "$@")" "${out:0:2000}"
	fi
}

# check_eq DESC GOT WANT: GOT == WANT, and WANT is not empty.
check_eq() {
	if [[ -n $3 && $2 == "$3" ]]; then
		kbt_pass "$1"
	else
		kbt_fail "$1" "got:  ${2:0:500}" "want: ${3:0:500}"
	fi
}

# check_ne DESC A B: A and B both non-empty and different.
check_ne() {
	if [[ -n $2 && -n $3 && $2 != "$3" ]]; then
		kbt_pass "$1"
	else
		kbt_fail "$1" "A: ${2:0:500}" "B: ${3:0:500}"
	fi
}

kbt_section() { printf '\n# %s\n' "$*"; }

# kbt_skip DESC REASON: a check that could not run here (not a failure).
kbt_skip() {
	printf 'skip %s: %s\n' "$1" "$2"
}

# ---- setup ----

# A free TCP port on 127.0.0.1 (the kernel's pick; closed again at once).
kbt_free_port() {
	"$KBT_PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

kbt_cleanup() {
	local rc=$?
	if [[ -n $KBT_WATCHDOG ]]; then
		kill "$KBT_WATCHDOG" 2>/dev/null
		KBT_WATCHDOG=
	fi
	if [[ -n $KBT_PID ]]; then
		kbt_stop
	fi
	local name
	for name in "${!KBT_EXTRA_PID[@]}"; do
		kbt_kill_extra "$name"
	done
	# After every broker: none may lose its database under it.
	kbt_pg_stop
	if [[ -n $KBT_DIR && -d $KBT_DIR ]]; then
		if [[ ${KBT_KEEP:-0} == 1 ]]; then
			echo "kept $KBT_DIR"
		else
			rm -rf "$KBT_DIR"
		fi
	fi
	if [[ $KBT_DONE == 0 ]]; then
		# The script ended without kbt_done: an early exit is a failure.
		[[ $rc == 0 ]] && rc=1
		echo "test script ended early (exit $rc)"
		echo "$KBT_PASS passed, $((KBT_FAIL + 1)) failed"
	fi
	exit "$rc"
}

kbt_done() {
	if [[ -n $KBT_PID ]]; then
		kbt_stop
	fi
	KBT_DONE=1
	echo
	echo "$KBT_PASS passed, $KBT_FAIL failed"
	((KBT_FAIL == 0)) && exit 0
	exit 1
}

# kbt_need_binaries: stop here (failing) if the build lacks keybrokerd or kbctl.
kbt_need_binaries() {
	local b
	for b in "$KB_BUILD/keybrokerd" "$KB_BUILD/kbctl" "$KBT_BROKER"; do
		if [[ ! -x $b ]]; then
			kbt_fail "binary $b exists" "build it first: deploy/build.sh"
			kbt_done
		fi
	done
}

# kbt_setup [KEY=VALUE...]: temp dir with a token, a PKI and $KBT_CONF.
kbt_setup() {
	kbt_need_binaries
	KBT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kbt.XXXXXX")
	trap kbt_cleanup EXIT
	trap 'exit 130' INT TERM
	(
		sleep "$KBT_DEADLINE" >/dev/null 2>&1
		echo "test script still running after ${KBT_DEADLINE}s: stopping it" >&2
		kill -TERM $$
	) &
	KBT_WATCHDOG=$!
	export KB_VAR=$KBT_DIR
	KBT_PKI=$KBT_DIR/pki
	KBT_LOG=$KBT_DIR/keybrokerd.log
	KBT_OUT=$KBT_DIR/out
	KBT_ERR=$KBT_DIR/err
	KBT_RC=0
	: >"$KBT_OUT"
	: >"$KBT_ERR"
	"$KB_SRC/deploy/token.sh" "$KBT_DIR" >/dev/null || { kbt_fail "token.sh"; kbt_done; }
	"$KB_SRC/deploy/pki.sh" init >/dev/null || { kbt_fail "pki.sh init"; kbt_done; }
	KBT_PORT=$(kbt_free_port)
	KBT_CONF=$KBT_DIR/keybroker.conf
	# Metrics off: brokers of tests running at once would all want the
	# default port (test-metrics.sh gives its broker a free one).
	KBT_CONF_SETTINGS=(workers=2 hsm_sessions=4 log_level=debug metrics_listen=)
	case $KBT_DB in
	sqlite) ;;
	postgres)
		kbt_pg_start
		KBT_CONF_SETTINGS+=("database=$KBT_PG_URI")
		;;
	*)
		kbt_fail "KBT_DB=$KBT_DB" "KBT_DB is sqlite (the default) or postgres"
		kbt_done
		;;
	esac
	kbt_write_conf "$@"
	export KB_ADDR=127.0.0.1:$KBT_PORT
	export KB_CA=$KBT_PKI/ca.crt
	export KB_CERT=$KBT_PKI/admin.crt
	export KB_KEY=$KBT_PKI/admin.key
}

# ---- the database (KBT_DB) ----

kbt_db_is_pg() { [[ $KBT_DB == postgres ]]; }

# kbt_pg_start: a PostgreSQL server of this test in $KBT_DIR/pg; its libpq
# URI in $KBT_PG_URI. A guard process (in a session of its own, so that
# whatever kills this script does not kill it) stops the server if this
# shell dies without its EXIT trap (SIGKILL); kbt_pg_stop ends the guard.
kbt_pg_start() {
	local out script=$KB_SRC/tests/pg/kbt-pg.sh
	KBT_PG_DIR=$KBT_DIR/pg
	if [[ ! -f $script ]]; then
		kbt_fail "KBT_DB=postgres: $script exists" "it starts the test's PostgreSQL server"
		kbt_done
	fi
	# The guard first: a server is never without one.
	(
		# shellcheck disable=SC2016 # expanded by the guard's own shell
		setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
			[[ -d $3/data ]] && bash "$2" stop "$3"' kbt-pg-guard "$$" "$script" "$KBT_PG_DIR" \
			</dev/null >/dev/null 2>&1 &
		echo $! >"$KBT_DIR/pg-guard.pid"
	)
	KBT_PG_GUARD=$(<"$KBT_DIR/pg-guard.pid")
	# The server runs as another user (PostgreSQL refuses root), who must
	# pass through the test's directory to its own: traverse, not list.
	((EUID == 0)) && chmod 0711 "$KBT_DIR"
	if ! out=$(bash "$script" start "$KBT_PG_DIR" 2>"$KBT_DIR/pg-start.err") ||
		[[ $(printf '%s\n' "$out" | tail -n 1) != postgres*://* ]]; then
		kbt_fail "KBT_DB=postgres: a PostgreSQL server starts for the test (tests/pg/kbt-pg.sh start)" \
			"stdout: ${out:0:500}" "stderr: $(tail -n 20 "$KBT_DIR/pg-start.err")"
		kbt_done
	fi
	KBT_PG_URI=$(printf '%s\n' "$out" | tail -n 1)
	echo "info: KBT_DB=postgres: the broker's database (and audit log) is $KBT_PG_URI"
}

# kbt_pg_stop: stop the test's PostgreSQL server (if any) and its guard.
kbt_pg_stop() {
	[[ -n $KBT_PG_DIR ]] || return 0
	if [[ -n $KBT_PG_GUARD ]]; then
		kill "$KBT_PG_GUARD" 2>/dev/null
		KBT_PG_GUARD=
	fi
	if [[ -d $KBT_PG_DIR/data ]]; then
		bash "$KB_SRC/tests/pg/kbt-pg.sh" stop "$KBT_PG_DIR" >>"$KBT_DIR/pg-stop.log" 2>&1 ||
			echo "kbt-pg.sh stop $KBT_PG_DIR failed: $(tail -n 5 "$KBT_DIR/pg-stop.log")"
	fi
	KBT_PG_DIR=
}

# kbt_pg_server_stop / kbt_pg_server_start: stop the test's PostgreSQL
# server (a database gone away under a running broker) and start it again
# on the same data, as its owner (kbt-pg.sh start makes a new one only).
kbt_pg_server_stop() {
	bash "$KB_SRC/tests/pg/kbt-pg.sh" stop "$KBT_PG_DIR" >>"$KBT_DIR/pg-stop.log" 2>&1
}
kbt_pg_server_start() {
	local bin=/usr/lib/postgresql/15/bin owner
	[[ -x $bin/pg_ctl ]] || bin=$(pg_config --bindir)
	owner=$(stat -c %U "$KBT_PG_DIR/data")
	local -a as=()
	((EUID == 0)) && as=(runuser -u "$owner" --)
	(cd "$KBT_PG_DIR" && "${as[@]}" "$bin/pg_ctl" -D "$KBT_PG_DIR/data" \
		-l "$KBT_PG_DIR/server.log" -w -t 60 start) >>"$KBT_DIR/pg-stop.log" 2>&1
}

# kbt_db_target store|audit: the SQLite file, or the PostgreSQL URI.
kbt_db_target() {
	if kbt_db_is_pg; then
		printf '%s' "$KBT_PG_URI"
	elif [[ $1 == audit ]]; then
		printf '%s' "$KBT_DIR/keybroker-audit.db"
	else
		printf '%s' "$KBT_DIR/keybroker.db"
	fi
}

# kbt_db_sql store|audit [SQL...]: each SQL argument in turn (or stdin),
# rows '|'-separated, no header; waits up to 5 s for a busy SQLite writer.
# Status non-zero (and the error on stderr) if a statement fails.
kbt_db_sql() {
	local which=$1 target q
	shift
	target=$(kbt_db_target "$which")
	if kbt_db_is_pg; then
		local -a args=(-X -q -A -t -v ON_ERROR_STOP=1 -d "$target")
		for q in "$@"; do
			args+=(-c "$q")
		done
		psql "${args[@]}"
	else
		sqlite3 -cmd ".timeout 5000" "$target" "$@"
	fi
}

# kbt_db_save store|audit TABLE WHERE FILE: the rows of TABLE matching
# WHERE (an SQL condition) into FILE, with what kbt_db_restore needs.
kbt_db_save() {
	local which=$1 table=$2 where=$3 file=$4
	printf '%s\n%s\n%s\n' "$which" "$table" "$where" >"$file.meta"
	if kbt_db_is_pg; then
		kbt_db_sql "$which" "\\copy (SELECT * FROM $table WHERE $where) TO '$file'"
	else
		kbt_db_sql "$which" ".mode insert $table" "SELECT * FROM $table WHERE $where" |
			sed 's/^INSERT INTO/INSERT OR REPLACE INTO/' >"$file"
	fi
}

# kbt_db_restore FILE: the rows kbt_db_save saved in FILE back in their
# table, in one transaction; rows matching its WHERE now are replaced.
kbt_db_restore() {
	local file=$1 which table where
	{
		read -r which
		read -r table
		read -r where
	} <"$file.meta"
	if kbt_db_is_pg; then
		kbt_db_sql "$which" "BEGIN" "DELETE FROM $table WHERE $where" \
			"\\copy $table FROM '$file'" "COMMIT"
	else
		{
			echo "BEGIN;"
			echo "DELETE FROM $table WHERE $where;"
			cat "$file"
			echo "COMMIT;"
		} | kbt_db_sql "$which"
	fi
}

# kbt_db_files: the files holding the databases, one a line.
kbt_db_files() {
	if kbt_db_is_pg; then
		find "$KBT_DIR/pg" -type f -size +0 2>/dev/null
	else
		local f
		for f in "$KBT_DIR/keybroker.db" "$KBT_DIR/keybroker-audit.db"; do
			printf '%s\n%s-wal\n' "$f" "$f"
		done
	fi
}

# kbt_write_conf [KEY=VALUE...]: (re)write $KBT_CONF from the settings so
# far plus these (later ones win); a running broker reads it at its next start.
kbt_write_conf() {
	KBT_CONF_SETTINGS+=("$@")
	KB_LISTEN=127.0.0.1:$KBT_PORT "$KB_SRC/deploy/conf.sh" "$KBT_DIR" \
		"${KBT_CONF_SETTINGS[@]}" >"$KBT_CONF" || { kbt_fail "deploy/conf.sh"; kbt_done; }
}

# kbt_setup_testclock [KEY=VALUE...]: kbt_setup for the broker built with a
# movable clock, keybrokerd-testclock: test_clock_file=$KBT_CLOCK (offset 0
# to begin with) and the 28-day sweeper every second.
kbt_setup_testclock() {
	KBT_BROKER=$KB_BUILD/tests/keybrokerd-testclock
	kbt_setup sweep_interval_s=1 "$@"
	KBT_CLOCK=$KBT_DIR/clock-offset
	kbt_clock_set 0
	kbt_write_conf "test_clock_file=$KBT_CLOCK"
}

# kbt_clock_set SECONDS: the broker's clock runs SECONDS ahead of real time
# from its next clock read on (write + rename: never half a number).
kbt_clock_set() {
	printf '%s\n' "$1" >"$KBT_CLOCK.tmp" && mv -f "$KBT_CLOCK.tmp" "$KBT_CLOCK"
}

# kbt_clock_offset: the offset now in force (seconds).
kbt_clock_offset() {
	local o=0
	[[ -n $KBT_CLOCK && -s $KBT_CLOCK ]] && o=$(<"$KBT_CLOCK")
	printf '%s' "${o:-0}"
}

# kbt_now_us: the broker's clock now (real time plus the offset), in us.
kbt_now_us() {
	local real
	real=$(date +%s%6N)
	printf '%s' $((real + $(kbt_clock_offset) * 1000000))
}

# kbt_clock_to US: set the offset so that the broker's clock reads US now
# (truncated to the second; real time keeps running after this). Time only
# moves forward in these tests: a target behind the current offset is
# refused as a test bug.
kbt_clock_to() {
	local real off
	real=$(date +%s%6N)
	off=$((($1 - real) / 1000000))
	if ((off < $(kbt_clock_offset))); then
		kbt_fail "kbt_clock_to $(kbt_fmt_us "$1"): the clock would go back" \
			"offset now $(kbt_clock_offset) s, wanted $off s"
		return 1
	fi
	kbt_clock_set "$off"
}

# kbt_fmt_us US: an RFC 3339 UTC time, for messages.
kbt_fmt_us() {
	date -u -d "@$(($1 / 1000000))" +%Y-%m-%dT%H:%M:%SZ
}

kbt_print_log() {
	echo "---- keybrokerd log ($KBT_LOG, last 60 lines) ----"
	tail -n 60 "$KBT_LOG" 2>/dev/null
	echo "----"
}

# kbt_wait_serving PID ADDR [SECONDS]: wait until the broker PID listening
# on ADDR answers the health check SERVING (kbt_grpc.py wait-serving, the
# same wait as kbt_grpc.Broker in the Python drivers), at most SECONDS
# (default $KBT_START_TIMEOUT). Status 0; 3 if PID ended first; 1 if it
# did not serve in time. $KBT_ERR holds the last answer.
kbt_wait_serving() {
	KB_CERT=$KBT_PKI/admin.crt KB_KEY=$KBT_PKI/admin.key \
		"$KBT_PY" "$KBT_LIBDIR/kbt_grpc.py" wait-serving --addr "$2" --pid "$1" \
		--timeout "${3:-$KBT_START_TIMEOUT}" </dev/null >"$KBT_OUT" 2>"$KBT_ERR"
	KBT_RC=$?
	return "$KBT_RC"
}

# kbt_start [CONF [ARGS...]]: start keybrokerd (with ARGS after --config)
# in the background and wait until it answers health SERVING (at most
# $KBT_START_TIMEOUT s, kbt_wait_serving). Returns 1 (after a recorded
# failure and the log) if it does not come up.
kbt_start() {
	local conf=${1:-$KBT_CONF} rc
	shift $(($# > 0))
	echo "=== start $(basename "$KBT_BROKER") --config $conf $*" >>"$KBT_LOG"
	"$KBT_BROKER" --config "$conf" "$@" </dev/null >>"$KBT_LOG" 2>&1 &
	KBT_PID=$!
	kbt_wait_serving "$KBT_PID" "${KB_ADDR:-127.0.0.1:$KBT_PORT}"
	rc=$?
	if ((rc == 0)); then
		kbt_pass "keybrokerd starts and answers health (port $KBT_PORT)"
		return 0
	fi
	if ((rc == 3)); then
		wait "$KBT_PID"
		rc=$?
		kbt_fail "keybrokerd starts" "it exited with status $rc before answering health" \
			"$(kbt_print_log)"
		KBT_PID=
		return 1
	fi
	kbt_fail "keybrokerd starts" "no healthy answer within ${KBT_START_TIMEOUT}s" \
		"last health check: $(head -c 2000 "$KBT_ERR")" "$(kbt_print_log)"
	kill -KILL "$KBT_PID" 2>/dev/null
	wait "$KBT_PID" 2>/dev/null
	KBT_PID=
	return 1
}

# kbt_start_extra NAME CONF ADDR [ARGS...]: start one more keybrokerd (a
# second broker of the test, listening on ADDR as CONF says), its output in
# $KBT_DIR/keybrokerd-NAME.log, and wait until it serves, as kbt_start.
# ${KBT_EXTRA_PID[NAME]} is its pid; kbt_kill_extra NAME SIGKILLs it, and
# the end of the script stops any still running.
declare -A KBT_EXTRA_PID=()
kbt_start_extra() {
	local name=$1 conf=$2 addr=$3 log=$KBT_DIR/keybrokerd-$1.log rc
	shift 3
	echo "=== start $(basename "$KBT_BROKER") --config $conf $*" >>"$log"
	"$KBT_BROKER" --config "$conf" "$@" </dev/null >>"$log" 2>&1 &
	KBT_EXTRA_PID[$name]=$!
	kbt_wait_serving "${KBT_EXTRA_PID[$name]}" "$addr"
	rc=$?
	if ((rc == 0)); then
		kbt_pass "keybrokerd $name starts and answers health ($addr)"
		return 0
	fi
	kbt_fail "keybrokerd $name starts" "$(head -c 2000 "$KBT_ERR")" \
		"---- $log (last 40 lines) ----" "$(tail -n 40 "$log")"
	kbt_kill_extra "$name"
	return 1
}

# kbt_kill_extra NAME: SIGKILL broker NAME of kbt_start_extra and reap it.
kbt_kill_extra() {
	local pid=${KBT_EXTRA_PID[$1]:-}
	[[ -n $pid ]] || return 0
	unset "KBT_EXTRA_PID[$1]"
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	echo "=== SIGKILL $pid" >>"$KBT_DIR/keybrokerd-$1.log"
	return 0
}

# kbt_conf_copy NAME PORT: a config with every setting of $KBT_CONF (as
# kbt_write_conf wrote it: the same database, token, PKI and test clock)
# but listening on 127.0.0.1:PORT, with metrics off, in
# $KBT_DIR/conf-NAME/keybroker.conf; its path in $KBT_CONF_COPY. Status 1
# (a recorded failure) if deploy/conf.sh fails.
KBT_CONF_COPY=
kbt_conf_copy() {
	local dir=$KBT_DIR/conf-$1
	KBT_CONF_COPY=
	[[ -d $dir ]] || mkdir -m 700 "$dir" || { kbt_fail "kbt_conf_copy $1: mkdir $dir"; return 1; }
	KB_LISTEN=127.0.0.1:$2 "$KB_SRC/deploy/conf.sh" "$KBT_DIR" \
		"${KBT_CONF_SETTINGS[@]}" metrics_listen= >"$dir/keybroker.conf" ||
		{ kbt_fail "kbt_conf_copy $1: deploy/conf.sh"; return 1; }
	# shellcheck disable=SC2034 # for the calling script
	KBT_CONF_COPY=$dir/keybroker.conf
}

# kbt_stop: SIGTERM the broker; it must exit 0 within 20 s (else SIGKILL).
kbt_stop() {
	local pid=$KBT_PID rc i
	[[ -n $pid ]] || return 0
	KBT_PID=
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		kbt_fail "keybrokerd exits on SIGTERM" "still running 20 s after SIGTERM; killed" \
			"$(kbt_print_log)"
		return 1
	fi
	wait "$pid"
	rc=$?
	if ((rc == 0)); then
		kbt_pass "keybrokerd exits 0 on SIGTERM"
	else
		kbt_fail "keybrokerd exits 0 on SIGTERM" "exit status $rc" "$(kbt_print_log)"
		return 1
	fi
}

# kbt_kill: SIGKILL the broker (a crash: nothing is flushed or cleaned up)
# and reap it.
kbt_kill() {
	local pid=$KBT_PID
	[[ -n $pid ]] || return 0
	KBT_PID=
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	echo "=== SIGKILL $pid" >>"$KBT_LOG"
	return 0
}

# kbt_expect_no_start DESC CONF ERE...: $KBT_BROKER --config CONF must exit
# non-zero (not by a signal) within 20 s, its output matching every ERE
# (case-insensitive). If it comes up instead, it is stopped: a failure.
kbt_expect_no_start() {
	local desc=$1 conf=$2 err=$KBT_DIR/no-start.err pid rc i re
	shift 2
	"$KBT_BROKER" --config "$conf" </dev/null >"$err" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid"
		kbt_fail "$desc" "still running after 20 s; stopped it" "log: $(tail -n 20 "$err")"
		return
	fi
	wait "$pid"
	rc=$?
	if ((rc == 0 || rc > 128)); then
		kbt_fail "$desc" "exit status $rc" "log: $(tail -n 20 "$err")"
		return
	fi
	# Log lines are logfmt: match the messages with their quotes and
	# backslashes unescaped, as the broker wrote them.
	sed 's/\\"/"/g; s/\\\\/\\/g' "$err" >"$err.txt"
	for re in "$@"; do
		if ! grep -Eqi -- "$re" "$err.txt"; then
			kbt_fail "$desc" "exit $rc, but the output does not match /$re/" \
				"log: $(tail -n 20 "$err")"
			return
		fi
	done
	kbt_pass "$desc (exit $rc): $(grep -Ei -- "${1:-.}" "$err.txt" | tail -n 1 |
		sed -E 's/^ts=[^ ]+ level=[a-z]+ event=[^ ]+ msg="?//' | cut -c1-300)"
}

# ---- kbctl ----

# kbt_kbctl ARGS...: run kbctl with the current KB_* environment, capturing.
kbt_kbctl() {
	timeout -k 5 "$KBT_CALL_TIMEOUT" "$KB_BUILD/kbctl" "$@" </dev/null >"$KBT_OUT" 2>"$KBT_ERR"
	KBT_RC=$?
	return "$KBT_RC"
}

kb_admin() { KB_CERT=$KBT_PKI/admin.crt KB_KEY=$KBT_PKI/admin.key kbt_kbctl "$@"; }

# kb_as CERT ARGS...: CERT is a base name in $KBT_PKI, or a path without .crt.
kb_as() {
	local base=$1
	shift
	[[ $base == */* ]] || base=$KBT_PKI/$base
	KB_CERT=$base.crt KB_KEY=$base.key kbt_kbctl "$@"
}

# timed CMD...: run CMD; $KBT_MS is how long it took, in milliseconds.
timed() {
	local t0 rc
	t0=$(date +%s%N)
	"$@"
	rc=$?
	KBT_MS=$((($(date +%s%N) - t0) / 1000000))
	return "$rc"
}

# expect_fail_within SECONDS STATUS ERE CMD...: CMD fails with STATUS, its
# message matching ERE, and answers within SECONDS.
expect_fail_within() {
	local max=$1 status=$2 re=$3
	shift 3
	timed expect_fail "$status" -m "$re" "$@"
	if ((KBT_MS <= max * 1000)); then
		kbt_pass "  ... answered in ${KBT_MS} ms (bound ${max} s)"
	else
		kbt_fail "  ... answered in ${KBT_MS} ms: more than ${max} s" "$(kbt_last)"
	fi
}

# kbt_py_report FILE: a Python driver's output (kbt_grpc.report): "ok   ..."
# and "FAIL ..." lines counted as checks here, the rest shown indented.
kbt_py_report() {
	local line
	while IFS= read -r line; do
		case $line in
		"ok   "*) kbt_pass "${line#ok   }" ;;
		"FAIL "*) kbt_fail "${line#FAIL }" ;;
		*" passed, "*" failed") ;; # the driver's own tally: kbt_done counts
		*) printf '     %s\n' "$line" ;;
		esac
	done <"$1"
}

# kb_svc TENANT ENV ARGS...: kbctl as the service bound to TENANT/ENV (its
# certificate is made on first use).
kb_svc() {
	local t=$1 e=$2
	shift 2
	if [[ ! -f $KBT_PKI/service-$t-$e.crt ]]; then
		"$KB_SRC/deploy/pki.sh" service "$t" "$e" >/dev/null ||
			kbt_fail "deploy/pki.sh service $t $e"
	fi
	kb_as "service-$t-$e" "$@"
}

# kb_rpc METHOD JSON [--file FIELD=PATH]...: one KeyBroker call through
# Python grpcio as the admin (for what kbctl cannot send); like kbctl, the
# response is JSON on stdout, a refusal "kbt_grpc: STATUS: details" on
# stderr with exit 1.
kb_rpc() {
	KBT_PYSTUBS=${KBT_PYSTUBS:-$KBT_DIR/pystubs} KBT_PROTO_DIR=$KB_SRC/proto \
		KB_CERT=$KBT_PKI/admin.crt KB_KEY=$KBT_PKI/admin.key \
		timeout -k 5 "$KBT_CALL_TIMEOUT" "$KBT_PY" "$KBT_LIBDIR/kbt_grpc.py" \
		call "$@" </dev/null >"$KBT_OUT" 2>"$KBT_ERR"
	KBT_RC=$?
	return "$KBT_RC"
}

# kbt_tenant_keyed TENANT PFX PWFILE "CUSTOMER_ENVS" ["PLATFORM_ENVS"]: as
# the admin, create TENANT and its environments (the customer ones first,
# each list in its order), generate a key into PFX (its password in PWFILE)
# and activate it (--wait), then put CUSTOMER_ENVS under it (envs
# apply-key). Each step is an expect_ok check; $KBT_KEY_ID is the key's id.
kbt_tenant_keyed() {
	local t=$1 pfx=$2 pw=$3 customer=$4 platform=${5:-} e
	expect_ok kb_admin tenants create "$t"
	for e in $customer $platform; do
		expect_ok kb_admin envs create "$t" "$e"
	done
	expect_ok kb_admin keys generate "$t" --out "$pfx" --password-file "$pw" --json
	KBT_KEY_ID=$(json 'd["key"]["id"]' 2>/dev/null)
	expect_ok kb_admin keys activate "$t" "$KBT_KEY_ID" --wait
	for e in $customer; do
		expect_ok kb_admin envs apply-key "$t" "$e"
	done
}

# kbt_secret_file PATH TEXT: TEXT and a newline in PATH, mode 0600.
kbt_secret_file() {
	(umask 077 && printf '%s\n' "$2" >"$1")
}

# kbt_token_ids: the CKA_ID of every object in the test token (the broker's
# key ids: kb-pk-..., kb-audit-1, k-...), decoded, sorted, unique; logged in
# with the PIN through the environment (GNUTLS_PIN), never argv. Exit
# status 2 when p11tool (gnutls-bin) is missing, 1 when it fails.
kbt_token_ids() {
	local out hex
	command -v p11tool >/dev/null 2>&1 || return 2
	out=$(SOFTHSM2_CONF=$KBT_DIR/token/softhsm2.conf GNUTLS_PIN=$(<"$KBT_DIR/token/pin") \
		p11tool --provider /usr/lib/softhsm/libsofthsm2.so --login --list-all \
		"pkcs11:token=keybroker" 2>/dev/null) || return 1
	# (Objects with no CKA_ID, such as the audit anchor, are left out.)
	sed -n 's/^\tID: \([0-9a-f:]\{2,\}\)$/\1/p' <<<"$out" | while read -r hex; do
		printf '%b\n' "\\x${hex//:/\\x}"
	done | sort -u
}

# kbt_token_delete LABEL [TOKEN_DIR [TYPES]]: destroy the objects of each
# of TYPES (default both halves of a key pair) labelled LABEL in the token
# of TOKEN_DIR (default $KBT_DIR/token), logged in with its PIN through the
# environment (GNUTLS_PIN), never argv. Fails (a recorded failure) when
# p11tool cannot delete one of them.
kbt_token_delete() {
	local id=$1 dir=${2:-$KBT_DIR/token} types=${3:-private public} type
	for type in $types; do
		SOFTHSM2_CONF=$dir/softhsm2.conf GNUTLS_PIN=$(<"$dir/pin") \
			p11tool --provider /usr/lib/softhsm/libsofthsm2.so --login --batch \
			--delete "pkcs11:token=keybroker;object=$id;type=$type" >>"$dir/p11tool.log" 2>&1 ||
			{ kbt_fail "p11tool deletes key $id ($type) from $dir" "$(tail -3 "$dir/p11tool.log")"; return 1; }
	done
}

# The command as one line, for test names: shell-quoted, long arguments cut.
kbt_desc() {
	local out='' a q
	for a in "$@"; do
		if ((${#a} > 40)); then
			a="${a:0:12}...(${#a} chars)"
		fi
		if [[ -z $a ]]; then
			q="''"
		elif [[ $a =~ ^[][A-Za-z0-9_./:=@%+,{}-]+$ ]]; then
			q=$a
		elif [[ $a =~ ^[[:print:]]+$ && $a != *"'"* ]]; then
			q="'$a'"
		else
			printf -v q '%q' "$a"
		fi
		out+=" $q"
	done
	printf '%s' "${out# }"
}

expect_ok() {
	local desc
	desc=$(kbt_desc "$@")
	"$@"
	if [[ $KBT_RC == 0 ]]; then
		kbt_pass "$desc"
	else
		kbt_fail "$desc: expected success" "$(kbt_last)"
	fi
}

# expect_fail STATUS [-m ERE] CMD...
expect_fail() {
	local status=$1 re='' desc
	shift
	if [[ ${1:-} == -m ]]; then
		re=$2
		shift 2
	fi
	desc="$(kbt_desc "$@") -> $status${re:+ /$re/}"
	"$@"
	if [[ $KBT_RC != 1 ]]; then
		kbt_fail "$desc" "expected exit 1" "$(kbt_last)"
	elif ! grep -Eq -- "$status" "$KBT_ERR"; then
		kbt_fail "$desc" "stderr lacks $status" "$(kbt_last)"
	elif [[ -n $re ]] && ! grep -Eqi -- "$re" "$KBT_ERR"; then
		kbt_fail "$desc" "stderr does not match /$re/" "$(kbt_last)"
	else
		kbt_pass "$desc"
	fi
}

expect_usage() {
	local desc
	desc="$(kbt_desc "$@") -> usage error"
	"$@"
	if [[ $KBT_RC == 2 ]]; then
		kbt_pass "$desc"
	else
		kbt_fail "$desc" "expected exit 2" "$(kbt_last)"
	fi
}

# json EXPR: evaluate a Python expression over the last stdout parsed as JSON
# (bound to d); prints the result (strings as they are, the rest as JSON).
# f(o, "display_name") reads a field by its proto or its lowerCamel name;
# items(d, "tenants") is d itself if d is a list, else d["tenants"] (or []), so
# a list printed either bare or wrapped in an object passes the same check.
json() {
	"$KBT_PY" - "$KBT_OUT" "$1" <<'PY'
import base64, json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
def items(v, key):
    return v if isinstance(v, list) else (v.get(key) or [])
def f(o, key):
    # A field by its proto name, or by its lowerCamel JSON name.
    if key in o:
        return o[key]
    head, *rest = key.split("_")
    return o.get(head + "".join(w.title() for w in rest))
r = eval(sys.argv[2], {"d": d, "json": json, "items": items, "f": f, "base64": base64})
print(r if isinstance(r, str) else json.dumps(r, sort_keys=True))
PY
}

# check_json DESC EXPR: EXPR (over d, the last stdout as JSON) must be true.
check_json() {
	local desc=$1 expr=$2 r
	if r=$(json "bool($expr)" 2>&1) && [[ $r == true ]]; then
		kbt_pass "$desc"
	else
		kbt_fail "$desc" "not true: $expr" "${r:0:500}" "$(kbt_last)"
	fi
}

# check_out DESC ERE: the last stdout must match ERE.
check_out() {
	if grep -Eq -- "$2" "$KBT_OUT"; then
		kbt_pass "$1"
	else
		kbt_fail "$1" "stdout does not match /$2/" "$(kbt_last)"
	fi
}

# expect_refused_until RULE WANT_US TOL_S CMD...: CMD must be refused with
# FAILED_PRECONDITION, a message naming RULE (an ERE) and saying "allowed
# from <RFC 3339 time>", that time within TOL_S seconds of WANT_US (us since
# the epoch). $KBT_ALLOWED_US is the time it printed (for the caller).
expect_refused_until() {
	local rule=$1 want=$2 tol=$3 desc got
	shift 3
	desc="$(kbt_desc "$@") -> FAILED_PRECONDITION /$rule/, allowed from ~$(kbt_fmt_us "$want")"
	KBT_ALLOWED_US=
	"$@"
	if [[ $KBT_RC != 1 ]] || ! grep -q FAILED_PRECONDITION "$KBT_ERR"; then
		kbt_fail "$desc" "expected exit 1 and FAILED_PRECONDITION" "$(kbt_last)"
		return
	fi
	if ! grep -Eqi -- "$rule" "$KBT_ERR"; then
		kbt_fail "$desc" "the message does not name the rule /$rule/" "$(kbt_last)"
		return
	fi
	if ! got=$("$KBT_PY" - "$KBT_ERR" <<'PY'
import datetime, re, sys
m = re.search(r"allowed from (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))",
              open(sys.argv[1], errors="replace").read())
if not m:
    sys.exit(1)
s = m.group(1).replace("Z", "+00:00")
frac = re.search(r"\.(\d+)", s)
if frac:  # fromisoformat wants at most 6 digits
    s = s.replace(frac.group(0), "." + (frac.group(1) + "000000")[:6])
t = datetime.datetime.fromisoformat(s)
print(round(t.timestamp() * 1000000))
PY
	); then
		kbt_fail "$desc" 'no "allowed from <RFC 3339 time>" in the message' "$(kbt_last)"
		return
	fi
	# shellcheck disable=SC2034 # for the calling script
	KBT_ALLOWED_US=$got
	local diff=$((got - want))
	((diff < 0)) && diff=$((-diff))
	if ((diff > tol * 1000000)); then
		kbt_fail "$desc" "allowed from $(kbt_fmt_us "$got") is $((diff / 1000000)) s away from $(kbt_fmt_us "$want") (tolerance ${tol} s)" "$(kbt_last)"
		return
	fi
	kbt_pass "$desc: $(grep -Eo 'allowed from [^ ;)]+' "$KBT_ERR" | head -n 1)"
}
