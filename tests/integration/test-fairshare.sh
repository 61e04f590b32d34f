#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-fairshare.sh: fair shares of the broker's time, against a real broker
# with low limits (rate_per_identity 100/s, burst 20; rate_per_tenant 150/s,
# burst 30; max_streams_per_identity 3):
# - A service of tenant acme floods GetDataKey as fast as the broker
#   answers, then two of them do, while a quiet service of tenant globex
#   calls one at a time: every quiet call succeeds (its p50/p99 alone and
#   during each flood are printed, not asserted); the flooders get only OK
#   and RESOURCE_EXHAUSTED naming rate_per_identity (one) or rate_per_tenant
#   (two), the time to retry and the retry-after-ms trailer, and are served
#   no more than the rates allow.
# - The refusals are not audited or logged one by one: the audit database
#   grows by at most a few summary events (apart from the GetDataKey calls
#   that were served), and the broker logs one summary line per 10 s.
# - Streams: three TailEvents of the auditor are open, the fourth is
#   refused naming max_streams_per_identity; a stream ended by its client,
#   by its deadline or by its connection closing frees its slot; streams
#   open at SIGTERM end UNAVAILABLE and the broker exits 0.
# Run: bash tests/integration/test-fairshare.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

RATE=100 BURST=20 TRATE=150 TBURST=30 STREAMS=3
FLOOD_S=${KBT_FAIRSHARE_SECONDS:-4}
kbt_setup workers=4 log_level=info rate_per_identity=$RATE \
	rate_per_identity_burst=$BURST rate_per_tenant=$TRATE \
	rate_per_tenant_burst=$TBURST max_streams_per_identity=$STREAMS
kbt_start || kbt_done
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto

# audit_count [SQL-CONDITION]: events in the audit database.
audit_count() {
	"$KBT_PY" - "$KBT_DIR/keybroker-audit.db" "${1:-1}" <<'PY'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(db.execute("SELECT count(*) FROM events WHERE %s" % sys.argv[2]).fetchone()[0])
PY
}

# py CMD [ARGS...]: test-fairshare.py CMD, its checks counted here.
py() {
	local cmd=$1 out=$KBT_DIR/py.$1.out rc
	shift
	timeout -k 5 120 "$KBT_PY" "$here/test-fairshare.py" --addr "$KB_ADDR" --ca "$KB_CA" \
		--pki "$KBT_PKI" "$cmd" "$@" >"$out" 2>&1
	rc=$?
	kbt_py_report "$out"
	check "test-fairshare.py $cmd exits 0" test "$rc" = 0
}

kbt_section "set-up"
expect_ok kb_admin tenants create acme
expect_ok kb_admin tenants create globex
expect_ok kb_admin envs create acme prod
expect_ok kb_admin envs create acme dev
expect_ok kb_admin envs create globex prod
for te in "acme prod" "acme dev" "globex prod"; do
	# shellcheck disable=SC2086 # two words: tenant and environment
	expect_ok kb_svc $te datakey get $te --json
done

kbt_section "one, then two flooding services of acme next to a quiet one of globex"
served="method = 'GetDataKey' AND result = 'ok'"
before=$(audit_count "NOT ($served)")
summaries_before=$(grep -c 'rate limits refused' "$KBT_LOG")
py rate --quiet globex/prod --flood acme/prod --flood acme/dev --seconds "$FLOOD_S" \
	--identity-rate $RATE --identity-burst $BURST --tenant-rate $TRATE --tenant-burst $TBURST
after=$(audit_count "NOT ($served)")
check "the audit database grew by at most 3 events apart from the served GetDataKey calls ($before -> $after)" \
	test $((after - before)) -le 3
check_eq "no refusal over a rate limit was audited by itself" \
	"$(audit_count "reason LIKE 'RESOURCE_EXHAUSTED%'")" 0
check_eq "no refusal over a rate limit was logged by itself" \
	"$(grep -c 'GetDataKey by .*RESOURCE_EXHAUSTED' "$KBT_LOG")" 0
expect_ok kb_svc globex prod datakey get globex prod --json
sleep 11 # one summary interval: the flood's last count is reported
lines=$(($(grep -c 'rate limits refused' "$KBT_LOG") - summaries_before))
check "the broker summarized the refusals in $lines log lines (at most one per 10 s)" \
	test "$lines" -ge 1 -a "$lines" -le $((3 * FLOOD_S / 10 + 3))
grep 'rate limits refused' "$KBT_LOG" | tail -n 2 | sed 's/^/     log: /'
check "a summary counts refusals by rate_per_identity" grep -Eq \
	'rate limits refused [0-9]+ calls .*rate_per_identity [1-9]' "$KBT_LOG"
check "a summary counts refusals by rate_per_tenant" grep -Eq \
	'rate limits refused [0-9]+ calls .*rate_per_tenant [1-9]' "$KBT_LOG"
# (The log line is logfmt: the quotes inside its msg are escaped.)
check "a summary names those refused most" grep -Eq \
	'rate limits refused .*; most refused: (service \\?"acme-(prod|dev)\\?"|tenant \\?"acme\\?") [0-9]+' "$KBT_LOG"
events=$(audit_count "method = 'ratelimit.refused'")
check "the summaries are in the audit log as $events ratelimit.refused events" \
	test "$events" -ge 1 -a "$events" -le $((3 * FLOOD_S / 10 + 3))
# Who was refused most: a flooding service, or its tenant when the tenant's
# bucket refused every call of the interval (as the log line above allows).
check_eq "every summary event names the flood (a flooding service or its tenant)" \
	"$(audit_count "method = 'ratelimit.refused' AND result = 'denied' AND (reason LIKE '%most refused: service \"acme-%' OR reason LIKE '%most refused: tenant \"acme\"%')")" \
	"$events"
kbt_section "the auditor's streams: max_streams_per_identity = $STREAMS"
py streams --cap "$STREAMS"

kbt_section "streams open when the broker stops"
ready=$KBT_DIR/hold.ready
timeout -k 5 60 "$KBT_PY" "$here/test-fairshare.py" --addr "$KB_ADDR" --ca "$KB_CA" \
	--pki "$KBT_PKI" hold --cap "$STREAMS" --ready "$ready" >"$KBT_DIR/hold.out" 2>&1 &
hold=$!
for ((i = 0; i < 100; i++)); do
	[[ -e $ready ]] && break
	sleep 0.1
done
check "$STREAMS streams are open" test -e "$ready"
kbt_stop
wait "$hold"
rc=$?
check "the held streams ended UNAVAILABLE when the broker stopped ($(tail -n 1 "$KBT_DIR/hold.out"))" \
	test "$rc" = 0
kbt_start || kbt_done
expect_ok kb_svc globex prod datakey get globex prod --json
kbt_done
