#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-failover.sh: kbctl and the client library with several broker
# addresses (issue 13), on two real brokers, a real token and real mTLS.
#
# Two brokers serving the same data: broker A gets two tenants (acme: a
# generated, active key, a customer-managed and a platform environment;
# globex: a platform environment) and every DEK is read; `kbctl backup
# create` takes a backup of A, `keybrokerd --restore` puts it into a second
# database for broker B, on the same token directory (the HSM both share),
# and B starts on another loopback port. They do not share a store yet
# (PostgreSQL comes with the rest of issue 13): B holds what A held at the
# backup, so this test only reads through B, except for one write that must
# go to B because A is down, checked on B alone. B's audit log is the
# backup's, behind the anchor A keeps in the shared token: B starts once
# with --accept-audit-loss, as the restore says.
#
# Checks:
# - kbctl refuses a bad address list (empty entry, no port, listed twice)
#   as a usage error naming --addr or KB_ADDR;
# - with both up, --addr A,B and --addr B,A give the same DEKs;
# - a service loop through the client library (kb-dek-loop, one client,
#   --addr A,B) and a loop of kbctl runs keep getting the same DEK while A
#   is SIGKILLed: no call fails, and the time from the SIGKILL to the next
#   successful call is printed and must be under 1 s (issue 13's target);
# - kbctl audit tail -f on A,B goes on on B after the kill, after the last
#   event it printed (no event twice; with two separate logs, B's events up
#   to that seq are not A's and are skipped, as a shared log would need);
#   approvals watch (the same follow) goes on on B too;
# - a write with A down goes to B (the broker never received it on A);
# - a first address that accepts TCP and never answers TLS is left after
#   --connect-timeout and the call is answered by B;
# - with A and B down, kbctl and the client library fail UNAVAILABLE with a
#   message naming both addresses.
# Run: bash tests/integration/test-failover.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
# shellcheck disable=SC2016 # awk programs in single quotes
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

LOOP=$KB_BUILD/tests/kb-dek-loop
kbt_setup workers=4 log_level=info
[[ -x $LOOP ]] || { kbt_fail "$LOOP exists" "build it first"; kbt_done; }
kbt_start || kbt_done
A=127.0.0.1:$KBT_PORT
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "failover test password"

# dek TENANT ENV [KBCTL FLAGS...]: the environment's DEK (base64), as its
# service, or "" when refused.
dek() {
	local t=$1 e=$2
	shift 2
	kb_svc "$t" "$e" "$@" datakey get "$t" "$e" --json && json 'd["dek"]'
}
# sha256 of a base64 DEK, as kb-dek-loop prints it.
dek_hash() { printf '%s' "$1" | base64 -d | sha256sum | cut -d' ' -f1; }
now_us() { date +%s%6N; }

kbt_section "broker A: two tenants, customer-managed and platform environments"
kbt_tenant_keyed acme "$w/acme.pfx" "$pw" prod dev
expect_ok kb_admin tenants create globex
expect_ok kb_admin envs create globex web
declare -A DEK
for te in acme/prod acme/dev globex/web; do
	DEK[$te]=$(dek "${te%/*}" "${te#*/}")
	check "$te serves a DEK on A" test -n "${DEK[$te]}"
done

kbt_section "broker B: A's backup restored into a second database, the same token"
expect_ok kb_admin backup create --out "$w/a.kbb"
B=127.0.0.1:$(kbt_free_port)
mkdir -m 700 "$KBT_DIR/b"
CONF_B=$KBT_DIR/b/keybroker.conf
KB_LISTEN=$B "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "${KBT_CONF_SETTINGS[@]}" \
	"database=$KBT_DIR/b/keybroker.db" "audit_database=$KBT_DIR/b/keybroker-audit.db" \
	>"$CONF_B" || kbt_fail "deploy/conf.sh for B"
timeout -k 5 60 "$KBT_BROKER" --config "$CONF_B" --restore "$w/a.kbb" \
	</dev/null >"$w/restore.out" 2>&1
check_eq "keybrokerd --restore into B's database: exit 0" "$?" 0
loss=()
grep -q -- --accept-audit-loss "$w/restore.out" && loss=(--accept-audit-loss)
kbt_start_extra B "$CONF_B" "$B" "${loss[@]}" || kbt_done
for te in acme/prod acme/dev globex/web; do
	check_eq "$te: B serves A's DEK" "$(dek "${te%/*}" "${te#*/}" --addr "$B")" "${DEK[$te]}"
done

kbt_section "address lists: bad ones are usage errors naming --addr or KB_ADDR"
expect_usage kb_admin --addr "$A,,$B" health
check "... 'entry 2 is empty', naming --addr" grep -q -- '--addr: .*entry 2 is empty' "$KBT_ERR"
KB_ADDR="$A,127.0.0.1" expect_usage kb_admin health
check "... 'no port', naming KB_ADDR" grep -q 'KB_ADDR: .*"127.0.0.1": no port' "$KBT_ERR"
expect_usage kb_admin --addr "$A, $A" health
check "... 'listed twice'" grep -q "\"$A\" is listed twice" "$KBT_ERR"
expect_usage kb_admin --addr "$A,$B" --connect-timeout 0 health
expect_ok kb_admin --addr "$A, $B" health
check_out "blanks around the commas are fine: SERVING" '^SERVING$'
for te in acme/prod globex/web; do
	check_eq "$te through --addr A,B: the same DEK" \
		"$(dek "${te%/*}" "${te#*/}" --addr "$A,$B")" "${DEK[$te]}"
	check_eq "$te through --addr B,A: the same DEK" \
		"$(dek "${te%/*}" "${te#*/}" --addr "$B,$A")" "${DEK[$te]}"
done

kbt_section "SIGKILL of A under a client-library loop, a kbctl loop and audit tail -f"
svc=$KBT_PKI/service-acme-prod
want=$(dek_hash "${DEK[acme/prod]}")
"$LOOP" --addr "$A,$B" --cert "$svc.crt" --key "$svc.key" --ca "$KB_CA" \
	--tenant acme --env prod --seconds 7 >"$w/loop.out" 2>"$w/loop.err" &
loop_pid=$!
# kbctl, one process a call (each its own client, from A on): "ok TIME
# same|DIFFERENT" or "fail TIME" (its stderr kept beside).
(
	end=$((SECONDS + 7))
	while ((SECONDS < end)); do
		if out=$(KB_CERT=$svc.crt KB_KEY=$svc.key "$KB_BUILD/kbctl" --addr "$A,$B" \
			--json datakey get acme prod 2>>"$w/kbctl-loop.err"); then
			got=$(sed -n 's/.*"dek": *"\([^"]*\)".*/\1/p' <<<"$out")
			[[ $got == "${DEK[acme/prod]}" ]] && s=same || s=DIFFERENT
			echo "ok $(now_us) $s"
		else
			echo "fail $(now_us)"
		fi
	done
) >"$w/kbctl-loop.out" &
kloop_pid=$!
KB_CERT=$KBT_PKI/auditor.crt KB_KEY=$KBT_PKI/auditor.key "$KB_BUILD/kbctl" \
	--addr "$A,$B" audit tail -f >"$w/tail.out" 2>"$w/tail.err" &
tail_pid=$!
"$KB_BUILD/kbctl" --addr "$A,$B" approvals watch >"$w/watch.out" 2>"$w/watch.err" &
watch_pid=$!
sleep 2
t_kill=$(now_us)
kbt_kill
echo "     SIGKILL of A at $t_kill"
# Events only B records from now on: GetDataKey of globex/web, until tail
# shows one (B's log must first pass the seq tail resumes after).
seen_b=0
for ((i = 0; i < 150 && !seen_b; i++)); do
	kb_svc globex web --addr "$A,$B" datakey get globex web >/dev/null
	awk '$6 == "globex" && $7 == "web" && $5 == "GetDataKey" { f = 1 } END { exit !f }' \
		"$w/tail.out" 2>/dev/null && seen_b=1
	((seen_b)) || sleep 0.1
done
wait "$loop_pid"
wait "$kloop_pid"
kill -TERM "$tail_pid" 2>/dev/null
wait "$tail_pid"
tail_rc=$?

# The client library's loop.
sed -n '$p' "$w/loop.out" | sed 's/^/     kb-dek-loop: /'
"$KBT_PY" - "$w/loop.out" "$t_kill" "$A" "$B" "$want" >"$w/loop.report" <<'PY'
import sys
path, t_kill, a, b, want = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
oks, fails = [], []
for line in open(path):
    p = line.split(" ", 3)
    if p[0] == "ok":
        oks.append((int(p[1]), p[2], p[3].strip()))
    elif p[0] == "fail":
        fails.append(line.strip())
def r(ok, desc, detail=""):
    print(("ok   " if ok else "FAIL ") + desc + (": " + detail if detail and not ok else ""))
before = [o for o in oks if o[0] < t_kill]
after = [o for o in oks if o[0] >= t_kill]
r(len(before) > 20 and all(o[1] == a for o in before),
  "before the kill the loop is answered by A (%d calls)" % len(before))
r(not fails, "no call of the loop failed", "; ".join(fails[:3]))
r(all(o[2] == want for o in oks), "every answer is acme/prod's DEK (%d)" % len(oks))
on_b = [o for o in after if o[1] == b]
r(len(on_b) > 20, "after the kill the loop goes on on B (%d calls)" % len(on_b))
first_b = next((i for i, o in enumerate(oks) if o[1] == b), len(oks))
r(on_b and all(o[1] == b for o in oks[first_b:]), "once on B it stays on B")
if on_b:
    gap = (on_b[0][0] - t_kill) / 1000.0
    print("client library: %.1f ms from the SIGKILL of A to the next successful "
          "call (on B)" % gap)
    r(gap < 1000, "client library: the next successful call within 1 s of the SIGKILL "
      "(%.1f ms)" % gap)
PY
kbt_py_report "$w/loop.report"

# The kbctl loop.
"$KBT_PY" - "$w/kbctl-loop.out" "$t_kill" >"$w/kloop.report" <<'PY'
import sys
path, t_kill = sys.argv[1], int(sys.argv[2])
rows = [l.split() for l in open(path) if l.strip()]
def r(ok, desc, detail=""):
    print(("ok   " if ok else "FAIL ") + desc + (": " + detail if detail and not ok else ""))
fails = [x for x in rows if x[0] != "ok"]
r(not fails, "no kbctl run failed (%d runs)" % len(rows), "%d failed" % len(fails))
r(all(x[2] == "same" for x in rows if x[0] == "ok"), "every kbctl run printed acme/prod's DEK")
after = [int(x[1]) for x in rows if x[0] == "ok" and int(x[1]) >= t_kill]
r(len(after) > 3, "kbctl runs after the kill succeed (%d)" % len(after))
if after:
    gap = (after[0] - t_kill) / 1000.0
    print("kbctl: %.1f ms from the SIGKILL of A to the next successful run "
          "(a new process each)" % gap)
    r(gap < 1000, "kbctl: the next successful run within 1 s of the SIGKILL (%.1f ms)" % gap)
PY
kbt_py_report "$w/kloop.report"
if [[ -s $w/kbctl-loop.err ]]; then
	sed 's/^/     kbctl loop stderr: /' "$w/kbctl-loop.err" | head -n 5
fi

# audit tail -f.
check_eq "audit tail -f ends 0 on SIGTERM" "$tail_rc" 0
check "tail said the stream from A ended" grep -q "the stream from $A ended" "$w/tail.err"
check "... and went on on B after the last event it printed" \
	grep -Eq "following on $B, after event [0-9]+" "$w/tail.err"
resumed=$(sed -n "s/.*following on $B, after event \([0-9]*\).*/\1/p" "$w/tail.err" | head -n 1)
check_eq "tail printed an event only B recorded (globex/web's GetDataKey)" "$seen_b" 1
check "tail printed every seq once, in order (no duplicate across the failover)" \
	awk '$1 <= last { exit 1 } { last = $1 }' "$w/tail.out"
check "... the events after the failover are after the seq it resumed from (${resumed:-?})" \
	awk -v r="${resumed:-0}" '$6 == "globex" && $7 == "web" && $1 <= r { exit 1 }' "$w/tail.out"
sed 's/^/     tail stderr: /' "$w/tail.err" | head -n 4
# approvals watch: the same follow; B has no request to show, so its
# stderr is the check.
for ((i = 0; i < 50; i++)); do
	grep -q "following on $B" "$w/watch.err" && break
	sleep 0.1
done
check "approvals watch went on on B after the kill, after the event it had reached" \
	grep -Eq "following on $B, after event [0-9]+" "$w/watch.err"
kill -TERM "$watch_pid" 2>/dev/null
wait "$watch_pid" 2>/dev/null

kbt_section "with A down: a write goes to B (A never received it)"
expect_ok kb_admin --addr "$A,$B" tenants create only-on-b
expect_ok kb_admin --addr "$B" tenants show only-on-b

kbt_section "a first address that never answers TLS: left after --connect-timeout"
"$KBT_PY" -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True); time.sleep(120)' >"$w/hang.port" &
hang_pid=$!
for ((i = 0; i < 50; i++)); do
	[[ -s $w/hang.port ]] && break
	sleep 0.1
done
H=127.0.0.1:$(<"$w/hang.port")
timed expect_ok kb_svc acme prod --addr "$H,$B" --connect-timeout 0.5 datakey get acme prod --json
check_eq "... the DEK, from B" "$(json 'd["dek"]')" "${DEK[acme/prod]}"
check "... in under 2 s (${KBT_MS} ms; the connect timeout 0.5 s)" test "$KBT_MS" -lt 2000
kill "$hang_pid" 2>/dev/null
wait "$hang_pid" 2>/dev/null

kbt_section "A and B down: the error names both"
kbt_kill_extra B
timed expect_fail UNAVAILABLE -m "cannot connect to any of the 2 brokers: $A: .*; $B: " \
	kb_svc acme prod --addr "$A,$B" datakey get acme prod
echo "     ($KBT_MS ms) $(head -c 300 "$KBT_ERR")"
"$LOOP" --addr "$A,$B" --cert "$svc.crt" --key "$svc.key" --ca "$KB_CA" \
	--tenant acme --env prod --seconds 1 >"$w/down.out" 2>&1
check "the client library: UNAVAILABLE naming both" \
	grep -Eq "^fail [0-9]+ UNAVAILABLE cannot connect to any of the 2 brokers: $A: .*; $B: " "$w/down.out"
check "... and no call succeeded" bash -c "! grep -q '^ok ' '$w/down.out'"
sed -n '1p' "$w/down.out" | cut -c1-300 | sed 's/^/     /'

kbt_done
