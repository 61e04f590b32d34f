#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-bad-requests.sh: bad requests get a precise status or are shed, and
# the broker keeps serving others (issue 6).
#
# One broker, restarted with different limits; test-bad-requests.py does
# the talking (only to 127.0.0.1), one phase per configuration:
#   main       max_message_bytes 65536 (the default): oversized, invalid
#              UTF-8 and control characters, empty and huge fields, unknown
#              enum values, garbage and truncated protobuf, deadlines
#              already past, clients that go away mid-call, 2,000 idle TLS
#              connections, unknown methods, plaintext, no client certificate
#   tail-term  a cut-off TailEvents, then SIGTERM: the broker must exit 0
#   small      max_message_bytes 1024
#   large      max_message_bytes 4 MiB: 1 MB fields
#   shed       the broker limited to 512 file descriptors, 700 connections:
#              gRPC's listener dies (accept4 EMFILE); the broker says
#              NOT_SERVING and exits 75 for its service manager to restart it
#   final      restarted: health, tenants, environments, keys and a DEK as
#              recorded; and the broker log shows no crash.
# Checks tied to a broker bug already reported are shown as "xfail" and not
# counted (KNOWN_BUGS below and in the .py); KBT_STRICT=1 counts them.
# The whole test takes well under 90 s.
# Run: bash tests/integration/test-bad-requests.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

# Broker bugs found by this test, reported to the lead engineer; delete an
# entry once its fix lands to count its check again.
declare -A KNOWN_BUGS=(
	[B1]="a TailEvents cancelled by its client while waiting for events, then SIGTERM within ~0.5 s: keybrokerd aborts (exit 134) with 'assertion failed: grpc_cq_begin_op(cq_, notify_tag)' (call.cc:1732): stream_main sends its final status after the server and completion queue were shut down"
)

# kbt_known BUG DESC OK [DETAIL...]: a check tied to a known broker bug.
kbt_known() {
	local bug=$1 desc=$2 ok=$3
	shift 3
	if [[ $ok == 1 ]]; then
		kbt_pass "$desc"
	elif [[ ${KBT_STRICT:-0} != 1 && -n ${KNOWN_BUGS[$bug]:-} ]]; then
		printf 'xfail %s [broker bug %s, not counted: %s]\n' "$desc" "$bug" "${KNOWN_BUGS[$bug]}"
		local d
		for d in "$@"; do printf '%s\n' "$d" | sed 's/^/     | /'; done
	else
		kbt_fail "$desc" "$@"
	fi
}

# py PHASE [ARGS...]: one phase of test-bad-requests.py, bounded in time.
py() {
	local phase=$1 out=$KBT_DIR/py.$1.out rc
	shift
	timeout -k 5 70 "$KBT_PY" "$here/test-bad-requests.py" --phase "$phase" \
		--addr "$KB_ADDR" --ca "$KB_CA" --pki "$KBT_PKI" --state "$KBT_DIR/state.json" \
		"$@" >"$out" 2>&1
	rc=$?
	kbt_py_report "$out"
	check "test-bad-requests.py --phase $phase exits 0" test "$rc" = 0
}

t_start=$SECONDS
# 2,000 idle connections need as many descriptors in this shell's children
# (the broker and Python): raise the soft limit (the hard one allowing).
conns=2000
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
nofile=$(ulimit -n)
if [[ $nofile != unlimited ]] && ((nofile < conns + 500)); then
	conns=$((nofile - 500))
	kbt_skip "2,000 idle connections" "the descriptor limit is $nofile: $conns instead"
fi

KBT_DEADLINE=150
# 60 TailEvents streams of one auditor at once fill the broker's 64 stream
# slots: raise that identity's cap (test-fairshare tests the cap itself).
kbt_setup workers=2 max_streams_per_identity=64
kbt_start || kbt_done
"$KB_SRC/deploy/pki.sh" service br prod >/dev/null || kbt_fail "deploy/pki.sh service br prod"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto

kbt_section "main phase (max_message_bytes 65536, workers 2)"
py main --max 65536 --conns "$conns"
check "keybrokerd is still running" kill -0 "$KBT_PID"

kbt_section "a cut-off TailEvents, then SIGTERM"
b1_from=$(wc -l <"$KBT_LOG")
pid=$KBT_PID
KBT_PID=
py tail-term --pid "$pid"
for ((i = 0; i < 100; i++)); do
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
	kill -KILL "$pid"
	kbt_fail "keybrokerd exits after SIGTERM" "still running 20 s after SIGTERM; killed"
fi
{ wait "$pid"; } 2>/dev/null
rc=$?
b1_to=$(wc -l <"$KBT_LOG")
kbt_known B1 "keybrokerd exits 0 on SIGTERM right after a client cut off its TailEvents" \
	"$([[ $rc == 0 ]] && echo 1)" "exit status $rc" \
	"$(sed -n "$((b1_from + 1)),${b1_to}p" "$KBT_LOG" | tail -n 4)"

kbt_section "a small limit: max_message_bytes 1024"
kbt_write_conf max_message_bytes=1024
kbt_start || kbt_done
py small --max 1024
kbt_stop

kbt_section "a raised limit: max_message_bytes 4194304"
kbt_write_conf max_message_bytes=4194304
kbt_start || kbt_done
py large --max 4194304
kbt_stop

kbt_section "more connections than the broker has file descriptors"
kbt_write_conf max_message_bytes=65536
shed_nofile=512
launcher=$KBT_DIR/keybrokerd-nofile
printf '#!/bin/sh\nulimit -n %d || exit 1\nexec "%s" "$@"\n' "$shed_nofile" "$KBT_BROKER" >"$launcher"
chmod +x "$launcher"
broker=$KBT_BROKER
KBT_BROKER=$launcher
kbt_start || kbt_done
py shed --nofile "$shed_nofile" --conns 700
# After accept4 EMFILE, gRPC 1.51 accepts nothing ever again: the broker
# drains and exits 75 (EX_TEMPFAIL) for systemd's Restart=on-failure.
for _ in $(seq 1 60); do
	kill -0 "$KBT_PID" 2>/dev/null || break
	sleep 0.5
done
if kill -0 "$KBT_PID" 2>/dev/null; then
	shed_rc="still running after 30 s"
else
	wait "$KBT_PID"
	shed_rc=$?
fi
check_eq "the broker, its listener dead, drains and exits 75 within 30 s (systemd restarts it)" \
	"$shed_rc" 75
check "its log says why" grep -q "the listener ran out of file descriptors" "$KBT_LOG"
[[ $shed_rc == 75 ]] || kbt_stop
KBT_PID=
KBT_BROKER=$broker

kbt_section "restarted: everything as recorded"
kbt_start || kbt_done
py final
kbt_stop

crash_re='AddressSanitizer|LeakSanitizer|runtime error|segmentation|SIGSEGV|SIGABRT|assertion failed|core dumped'
crashes=$(awk -v a="$b1_from" -v b="$b1_to" 'NR <= a || NR > b' "$KBT_LOG" | grep -Eic "$crash_re")
check_eq "the broker log shows no crash (outside the known bug B1 step)" "${crashes:-0}" 0
b1_crash=$(sed -n "$((b1_from + 1)),${b1_to}p" "$KBT_LOG" | grep -Eic "$crash_re")
kbt_known B1 "the broker log shows no crash in the B1 step" "$([[ ${b1_crash:-0} == 0 ]] && echo 1)" \
	"$(sed -n "$((b1_from + 1)),${b1_to}p" "$KBT_LOG" | grep -Ei "$crash_re" | head -n 2)"
echo "     (the whole test: $((SECONDS - t_start)) s)"
kbt_done
