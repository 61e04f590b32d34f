# SPDX-License-Identifier: Apache-2.0
# lib.sh: helpers for end-to-end tests against a real keybrokerd and SoftHSMv2.
#
# Source it from a test script (bash), then:
#   kbt_setup [KEY=VALUE...]   temp dir, token, PKI, config (extra config settings)
#   kbt_start / kbt_stop       start the broker (wait for health) / SIGTERM it,
#                              which is itself a check: it must exit 0
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
# Environment: KB_BUILD (default build/ at the repo root) holds keybrokerd and
# kbctl; KB_SRC is the repository; KBT_KEEP=1 keeps the temp dir.
# shellcheck shell=bash

set -u -o pipefail

KB_SRC=${KB_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
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
	for b in keybrokerd kbctl; do
		if [[ ! -x $KB_BUILD/$b ]]; then
			kbt_fail "binary $KB_BUILD/$b exists" "build it first: deploy/build.sh"
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
	KB_LISTEN=127.0.0.1:$KBT_PORT "$KB_SRC/deploy/conf.sh" "$KBT_DIR" \
		workers=2 hsm_sessions=4 log_level=debug "$@" >"$KBT_CONF"
	export KB_ADDR=127.0.0.1:$KBT_PORT
	export KB_CA=$KBT_PKI/ca.crt
	export KB_CERT=$KBT_PKI/admin.crt
	export KB_KEY=$KBT_PKI/admin.key
}

kbt_print_log() {
	echo "---- keybrokerd log ($KBT_LOG, last 60 lines) ----"
	tail -n 60 "$KBT_LOG" 2>/dev/null
	echo "----"
}

# kbt_start [CONF]: start keybrokerd in the background and wait until
# `kbctl health` answers (at most $KBT_START_TIMEOUT s). Returns 1 (after a
# recorded failure and the log) if it does not come up.
kbt_start() {
	local conf=${1:-$KBT_CONF} i
	echo "=== start keybrokerd --config $conf" >>"$KBT_LOG"
	"$KB_BUILD/keybrokerd" --config "$conf" </dev/null >>"$KBT_LOG" 2>&1 &
	KBT_PID=$!
	for ((i = 0; i < KBT_START_TIMEOUT * 5; i++)); do
		if ! kill -0 "$KBT_PID" 2>/dev/null; then
			wait "$KBT_PID"
			i=$?
			kbt_fail "keybrokerd starts" "it exited with status $i before answering health" \
				"$(kbt_print_log)"
			KBT_PID=
			return 1
		fi
		if kb_admin health; then
			kbt_pass "keybrokerd starts and answers health (port $KBT_PORT)"
			return 0
		fi
		sleep 0.2
	done
	kbt_fail "keybrokerd starts" "no healthy answer within ${KBT_START_TIMEOUT}s" \
		"last kbctl health: $(kbt_last)" "$(kbt_print_log)"
	kill -KILL "$KBT_PID" 2>/dev/null
	wait "$KBT_PID" 2>/dev/null
	KBT_PID=
	return 1
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
