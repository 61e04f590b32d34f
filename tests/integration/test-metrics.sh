#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-metrics.sh: the metrics endpoint and the logs (issue 14, "Seeing it")
# against a real keybrokerd, a real SoftHSMv2 token and a real HTTP client.
#
# - Scraped with urllib before and after exactly 1,000 GetDataKey calls: the
#   counter for GetDataKey/OK and the latency histogram's count differ by
#   exactly 1,000; 5 refused calls move PERMISSION_DENIED by 5 and OK by 0
#   (test-metrics.py calls).
# - The certificate expiry gauges equal the certificates' notAfter (read by
#   openssl); health, token, audit and store up; environments by state;
#   build info; every job kind (test-metrics.py gauges).
# - deploy/prometheus-alerts.yml and deploy/grafana-dashboard.json parse,
#   and every keybroker_ metric they use is on the page (names).
# - metrics_listen: a non-loopback address is refused unless
#   metrics_allow_remote = true; a host name, and a port already taken,
#   are refused naming the key; empty means nothing listens.
# - log_format = json: every line the broker writes parses as one JSON
#   object with ts, level, event and msg; the default (logfmt) lines have
#   ts=, level= and event=. The token's PIN and the .pfx password used in
#   the test appear in no log line.
# Run: bash tests/integration/test-metrics.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

kbt_setup log_format=json
MPORT=$(kbt_free_port)
MURL=http://127.0.0.1:$MPORT/metrics
kbt_write_conf "metrics_listen=127.0.0.1:$MPORT"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto

# py CMD [ARGS...]: test-metrics.py CMD, its checks counted here.
py() {
	local cmd=$1 out=$KBT_DIR/py-$1.out rc
	shift
	timeout -k 5 120 "$KBT_PY" "$here/test-metrics.py" --addr "$KB_ADDR" --ca "$KB_CA" \
		--metrics "$MURL" "$cmd" "$@" >"$out" 2>&1
	rc=$?
	kbt_py_report "$out"
	check "test-metrics.py $cmd exits 0" test "$rc" = 0
}

# notafter FILE: the notAfter of the (first) certificate in FILE, in Unix
# seconds, as openssl reads it.
notafter() {
	local d
	d=$(openssl x509 -noout -enddate -in "$1") || return 1
	date -u -d "${d#notAfter=}" +%s
}

kbt_section "metrics_listen: refusals"
bad=$KBT_DIR/bad.conf
sed "s/^metrics_listen = .*/metrics_listen = 0.0.0.0:$MPORT/" "$KBT_CONF" >"$bad"
kbt_expect_no_start "a non-loopback metrics_listen is refused, naming metrics_allow_remote" \
	"$bad" "metrics_listen = 0.0.0.0:$MPORT is not a loopback address" "metrics_allow_remote = true"
sed "s/^metrics_listen = .*/metrics_listen = localhost:$MPORT/" "$KBT_CONF" >"$bad"
kbt_expect_no_start "a host name is refused (it may resolve anywhere)" \
	"$bad" "metrics_listen = .localhost:$MPORT. is not a numeric address"
# A port someone else holds: the broker refuses to start, naming the key.
"$KBT_PY" -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); print("up", flush=True); time.sleep(60)' \
	"$MPORT" >"$KBT_DIR/holder.out" &
holder=$!
for _ in $(seq 50); do [[ -s $KBT_DIR/holder.out ]] && break; sleep 0.1; done
kbt_expect_no_start "a metrics port already in use is refused, naming metrics_listen" \
	"$KBT_CONF" "metrics_listen = 127.0.0.1:$MPORT: cannot listen there"
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
check "--check-config shows metrics_listen and log_format" bash -c \
	"'$KBT_BROKER' --config '$KBT_CONF' --check-config | grep -q '^metrics_listen = 127.0.0.1:$MPORT\$' &&
	 '$KBT_BROKER' --config '$KBT_CONF' --check-config | grep -q '^log_format = json\$'"

kbt_section "the calls move the counters"
kbt_start || kbt_done
expect_ok kb_admin tenants create acme
expect_ok kb_admin envs create acme prod
expect_ok kb_admin envs create acme dev
"$KB_SRC/deploy/pki.sh" service acme prod >/dev/null || kbt_fail "deploy/pki.sh service acme prod"
# A .pfx password that goes through the broker: a generated and an
# uploaded tenant key.
pw=$KBT_DIR/pfx-password
kbt_secret_file "$pw" "metrics-test-pfx-$(openssl rand -hex 8)"
expect_ok kb_admin keys generate acme --out "$KBT_DIR/k1.pfx" --password-file "$pw"
(umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=k2 -days 30 \
	-keyout "$KBT_DIR/k2.key" -out "$KBT_DIR/k2.crt" 2>/dev/null &&
	openssl pkcs12 -export -inkey "$KBT_DIR/k2.key" -in "$KBT_DIR/k2.crt" \
		-passout "file:$pw" -out "$KBT_DIR/k2.pfx") || kbt_fail "openssl makes k2.pfx"
expect_ok kb_admin keys upload acme "$KBT_DIR/k2.pfx" --password-file "$pw"
py calls --pki "$KBT_PKI" --tenant acme --env prod --other dev

kbt_section "gauges"
py gauges --workers 2 --envs enabled=2 \
	--cert-end "server=$(notafter "$KBT_PKI/server.crt")" \
	"client_ca=$(notafter "$KBT_PKI/ca.crt")"

kbt_section "the alert rules and the dashboard"
py names --alerts "$KB_SRC/deploy/prometheus-alerts.yml" \
	--dashboard "$KB_SRC/deploy/grafana-dashboard.json"
kbt_stop

kbt_section "log_format = json: one JSON object per line"
# The harness writes "=== start ..." lines into the same file: skip those.
check "every line the broker wrote is a JSON object with ts, level, event and msg" \
	"$KBT_PY" -c 'import json, sys
n = 0
for i, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
    if line.startswith("=== "):
        continue
    d = json.loads(line)
    assert isinstance(d, dict), "line %d: not an object" % i
    for k in ("ts", "level", "event", "msg"):
        assert isinstance(d.get(k), str) and d[k], "line %d: no %s: %s" % (i, k, line)
    assert d["level"] in ("error", "warn", "info", "debug"), "line %d: level %s" % (i, d["level"])
    n += 1
assert n >= 10, "only %d lines" % n
print(n, "lines")' "$KBT_LOG"
check "the refused calls are events with their fields (call.refused: method, code)" \
	"$KBT_PY" -c 'import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if not l.startswith("=== ")]
r = [e for e in ev if e["event"] == "call.refused" and e.get("method") == "GetDataKey"]
assert len(r) == 5 and all(e.get("code") == "PERMISSION_DENIED" and e.get("peer") for e in r), r[:2]' "$KBT_LOG"
check "start, listening (with the metrics address) and stop are events" \
	"$KBT_PY" -c 'import json, sys
ev = {json.loads(l)["event"]: json.loads(l) for l in open(sys.argv[1]) if not l.startswith("=== ")}
assert "broker.starting" in ev and "broker.stopped" in ev
assert ev["broker.listening"].get("metrics") == sys.argv[2], ev["broker.listening"]' \
	"$KBT_LOG" "127.0.0.1:$MPORT"

kbt_section "nothing secret in the logs"
pin=$(head -n 1 "$KBT_DIR/token/pin")
check "the token's PIN is in no log line" test -n "$pin"
check "the token's PIN is in no log line (grep)" bash -c "! grep -qF -- '$pin' '$KBT_LOG'"
check "the .pfx password is in no log line" bash -c "! grep -qF -- \"\$(head -n 1 '$pw')\" '$KBT_LOG'"
check "no private key is in the log" bash -c "! grep -q 'PRIVATE KEY' '$KBT_LOG'"

kbt_section "metrics_listen empty: nothing listens; logfmt lines"
kbt_write_conf "metrics_listen=" "log_format=text"
: >"$KBT_LOG"
kbt_start || kbt_done
check "nothing answers on the metrics port" bash -c "! curl -s -o /dev/null --max-time 3 '$MURL'"
check "nothing listens on it (ss)" bash -c "! ss -Hltn 'sport = :$MPORT' | grep -q ."
check "the log says metrics are off" grep -q 'event=broker.listening .*metrics=off' "$KBT_LOG"
kbt_stop
check "every broker line is logfmt: ts=, level=, event=, msg=" \
	bash -c "! grep -v '^=== ' '$KBT_LOG' | grep -Ev '^ts=[0-9T:.-]+Z level=(error|warn|info|debug) event=[a-z_.]+ msg=' | grep -q ."

kbt_done
