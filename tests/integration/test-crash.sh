#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-crash.sh: crash consistency. SIGKILL the broker at random moments of
# a scripted workload, at least 20 times in a row, and check after each
# restart that nothing acknowledged was lost and nothing is left half-done.
#
# keybrokerd-testclock with three tenants: "bulk" (KBT_CRASH_ENVS, default
# 2,000, customer-managed environments; each cycle activates its other key,
# a re-wrap job over all of them, rewrap_threads = 1), "lk" (50 customer-
# managed environments; locked with its key's .pfx, unlocked an hour later
# on the test clock, its environments unlocked one by one) and "mix"
# (environments created during the workload, half put under the tenant key,
# ApplyKey/RevertKey). test-crash.py runs the workload on five threads, kills
# the broker with SIGKILL after a random delay (KBT_CRASH_MIN/MAX_DELAY,
# default 0.3 to 2.5 s; one cycle in five 2.5 to 5 s, near or after the
# activation's end), restarts it and checks:
#   - on a copy of the databases as the kill left them: PRAGMA
#     integrity_check = ok on keybroker.db and keybroker-audit.db, store
#     invariants, the audit hash chain and signed checkpoints (kbt_audit.py,
#     a Python reimplementation of common/kb_audit.h's encoding);
#   - after the restart: an interrupted activation job finishes within 60 s
#     with done == total; a tenant the kill left locked unlocks with its key;
#     every environment whose creation was acknowledged exists and returns
#     the DEK first read for it; a creation in flight at the kill either does
#     not exist or serves a DEK; integrity_check and the audit chain on the
#     live databases; kbctl audit export + verify every 4th restart and after
#     the last kill (with verify --online);
#   - during the workload: never a wrong DEK, no error before the kill that
#     is not a refusal or load shedding, no crash of the broker's own.
# The cycles must fit the script's deadline: if they would not (a slow or
# busy machine), each later restart reads a rotating 1/4 (then 1/8) of bulk's
# DEKs (all of them again at the end) and says so; a sanitizer build gets 500
# environments in bulk.
# Prints the cycles run, kills during activation and during lock/unlock.
# KBT_DB=postgres (integration/test-crash-pg, 8 cycles): the store and the
# audit log in a PostgreSQL server of the test's own, which the kills leave
# running: the invariants and the audit chain are checked on the database
# itself (no integrity_check: that is SQLite's).
# KBT_CRASH_CYCLES (default 20; e.g. 200 by hand), KBT_CRASH_SEED (the same
# random delays again; thread timing still varies), KBT_CRASH_ENVS. Run: bash tests/integration/test-crash.sh
# (KB_BUILD=build dir, KBT_KEEP=1 keeps the temp dir with the broker log).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CYCLES=${KBT_CRASH_CYCLES:-20}
# About 8 s a cycle on 2 cores plus the set-up; stay under ctest's 300 s.
KBT_DEADLINE=${KBT_DEADLINE:-$((CYCLES <= 20 ? 285 : CYCLES * 15 + 120))}
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

kbt_setup_testclock workers=4 hsm_sessions=8 rewrap_threads=1 log_level=info \
	audit_checkpoint_events=500
# An ASan+UBSan build (deploy/test.sh --asan) is about 3 times slower: a
# quarter of the environments keeps 20 cycles within the time bound.
ENVS=${KBT_CRASH_ENVS:-2000}
if [[ -z ${KBT_CRASH_ENVS:-} ]] && grep -qa __asan_init "$KBT_BROKER"; then
	ENVS=500
	echo "     (a sanitizer build: $ENVS environments in bulk instead of 2000)"
fi
w=$KBT_DIR/work
mkdir -m 700 "$w"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto

# test-crash.py starts and kills the broker itself; if this script is
# stopped (watchdog, ^C), stop the driver and the broker it left.
# shellcheck disable=SC2317 # called by the EXIT trap
crash_cleanup() {
	local pid
	[[ -n ${pypid:-} ]] && kill -TERM "$pypid" 2>/dev/null && wait "$pypid" 2>/dev/null
	if [[ -s $w/broker.pid ]]; then
		pid=$(<"$w/broker.pid")
		# Only if that pid is still our broker (not a reused pid).
		if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "--config $KBT_CONF"; then
			kill -KILL "$pid" 2>/dev/null
		fi
	fi
}
trap 'rc=$?; crash_cleanup; (exit $rc); kbt_cleanup' EXIT

kbt_section "$CYCLES cycles: workload, SIGKILL at a random moment, restart, checks"
t0=$SECONDS
args=(--broker "$KBT_BROKER" --conf "$KBT_CONF" --clock "$KBT_CLOCK" --log "$KBT_LOG"
	--pki "$KBT_PKI" --out "$w" --kbctl "$KB_BUILD/kbctl" --cycles "$CYCLES"
	--bulk "$ENVS")
[[ -n ${KBT_CRASH_SEED:-} ]] && args+=(--seed "$KBT_CRASH_SEED")
# Start no cycle that would end after the watchdog (it leaves 25 s to report).
args+=(--budget "${KBT_CRASH_BUDGET:-$((KBT_DEADLINE - 25))}")
[[ -n ${KBT_CRASH_MIN_DELAY:-} ]] && args+=(--min-delay "$KBT_CRASH_MIN_DELAY")
[[ -n ${KBT_CRASH_MAX_DELAY:-} ]] && args+=(--max-delay "$KBT_CRASH_MAX_DELAY")
# In the background: wait is interrupted by the watchdog's TERM, a
# foreground child would not be.
"$KBT_PY" "$here/test-crash.py" "${args[@]}" >"$w/py.out" 2>&1 &
pypid=$!
wait "$pypid"
rc=$?
pypid=
kbt_py_report "$w/py.out"
check "test-crash.py exits 0" test "$rc" = 0
echo "     (the cycles took $((SECONDS - t0)) s)"
cycles=$("$KBT_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["cycles"])' \
	"$w/summary.json" 2>/dev/null)
if [[ ${cycles:-0} -ge $CYCLES ]]; then
	kbt_pass "$cycles kill/restart cycles in a row (at least $CYCLES)"
else
	kbt_fail "$CYCLES kill/restart cycles in a row" "only ${cycles:-0} ran (see above)"
fi
if [[ $KBT_FAIL != 0 ]]; then
	kbt_print_log
fi

kbt_done
