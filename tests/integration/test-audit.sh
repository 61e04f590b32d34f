#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-audit.sh: the tamper-evident audit log (issue 4), end to end, with a
# broker that signs a checkpoint every 10 events or 2 seconds.
#
# A scripted session (tenants, environments, a service's data key, a key
# generated with a known password and activated, apply-key, refusals, an
# auditor's listing). Then:
#  1. 'audit list --json' has the session's events in order (seq strictly
#     increasing from broker.start), each with actor and role, peer, method,
#     tenant, environment, key id, result, reason and request id; every
#     filter works; pages follow.
#  2. No DEK (raw, base64, hex), no password, no private key bytes in the
#     databases (and their -wal), the export, or the broker's log.
#  3. An untouched export verifies (also pinned with 'audit key's
#     fingerprint; a wrong one is refused); a hand-edited export fails.
#     (a) an event UPDATEd in the database, (b) one DELETEd from the middle, and
#     (c) the newest ones DELETEd while the broker is stopped, alone, with
#     their checkpoints, and every checkpoint deleted: the broker refuses
#     to start (the anchor in the token names the first lost event); with
#     --accept-audit-loss it starts, records the loss and numbers on after
#     the anchor; (a)-(c) each fail 'verify' (a fresh export offline, and
#     --online) naming the first bad seq.
#     (d) A state change's "started" event with no outcome after it is
#     noted by 'verify' (the log still verifies): none after ordinary
#     calls; an export cut right after one, and the same with a broker.start
#     chained after it (a broker killed mid-call, then restarted).
#  4. 'audit tail -f --state-file' sees another client's calls within 2 s,
#     is SIGKILLed and started again, follows a broker restart: every seq
#     exactly once, no gap.
#  5. A service may not read the log (and that refusal is logged itself);
#     an admin limited to acme sees only acme's events; the auditor all.
# KBT_DB=postgres (integration/test-audit-pg): the same on PostgreSQL (lib.sh
# runs the edits through psql; the secrets are searched for in every file of
# the server's data directory).
# Run: bash tests/integration/test-audit.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

T0=$(date +%s)
kbt_setup audit_checkpoint_events=10 audit_checkpoint_interval_s=2
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
ADB=$(kbt_db_target audit)
PW="kbt-audit-pw-$RANDOM$RANDOM-Zq"
pw=$w/pw
kbt_secret_file "$pw" "$PW"

kb_aud() { kb_as auditor "$@"; }
# kbctl with no certificate and no broker address (offline commands).
# shellcheck disable=SC2317 # called through verify_ok and friends
kb_nocert() { KB_CERT='' KB_KEY='' KB_CA='' KB_ADDR=127.0.0.1:1 kbt_kbctl "$@"; }
# SQL on the audit database (sqlite3, waiting for the broker's writer if
# busy; or psql): lib.sh's kbt_db_sql.
sq() { kbt_db_sql audit "$@"; }
# SQL on the store's database.
sqs() { kbt_db_sql store "$@"; }
# The newest seq in the audit database (the broker may be stopped).
db_max() { sq "SELECT COALESCE(MAX(seq), 0) FROM $1"; }
# A background tail -f is killed with the test, whatever happens.
TAIL_PID=
trap 'rc=$?; [[ -n $TAIL_PID ]] && kill -KILL "$TAIL_PID" 2>/dev/null; (exit $rc); kbt_cleanup' EXIT
# jq-like: a Python expression over the last stdout (d), printed.
jv() { json "$1" 2>/dev/null; }

# verify_fails DESC SEQ ERE CMD...: CMD (an audit verify) exits 1 saying
# "FAILED at seq SEQ: ..." matching ERE.
verify_fails() {
	local desc=$1 seq=$2 re=$3
	shift 3
	"$@"
	if [[ $KBT_RC == 1 ]] && grep -Eq "^FAILED at seq $seq: .*($re)" "$KBT_OUT"; then
		kbt_pass "$desc: $(head -n 1 "$KBT_OUT" | cut -c1-200)"
	else
		kbt_fail "$desc" "want exit 1 and 'FAILED at seq $seq: /$re/'" "$(kbt_last)"
	fi
}
# verify_fails_line DESC LINE ERE CMD...: "FAILED at line LINE: ..." (exit 1).
verify_fails_line() {
	local desc=$1 line=$2 re=$3
	shift 3
	"$@"
	if [[ $KBT_RC == 1 ]] && grep -Eq "^FAILED at line ${line}[: ].*($re)" "$KBT_OUT"; then
		kbt_pass "$desc: $(head -n 1 "$KBT_OUT" | cut -c1-160)"
	else
		kbt_fail "$desc" "want exit 1 and 'FAILED at line $line: /$re/'" "$(kbt_last)"
	fi
}
verify_ok() { # verify_ok DESC CMD...
	local desc=$1
	shift
	"$@"
	if [[ $KBT_RC == 0 ]] && grep -q '^verified: events 1\.\.' "$KBT_OUT"; then
		kbt_pass "$desc: $(cut -c1-100 "$KBT_OUT")"
	else
		kbt_fail "$desc" "want exit 0 and 'verified: events 1..N'" "$(kbt_last)"
	fi
}
# export_fresh NAME: an export by the auditor to $w/NAME.jsonl.
export_fresh() {
	rm -f "$w/$1.jsonl"
	kb_aud audit export --out "$w/$1.jsonl"
	[[ $KBT_RC == 0 ]] || kbt_fail "audit export --out $1.jsonl" "$(kbt_last)"
}

kbt_section "a scripted session"
expect_ok kb_admin tenants create acme --name "Acme Corp"
expect_ok kb_admin envs create acme prod
expect_ok kb_admin envs create acme dev
expect_ok kb_admin tenants create globex
expect_ok kb_admin envs create globex prod
expect_ok kb_svc acme prod datakey get acme prod --json
cp "$KBT_OUT" "$w/dek.json"
DEK=$(jv 'd["dek"]')
check "the service got a 32-byte DEK" test "$(printf '%s' "$DEK" | base64 -d | wc -c)" = 32
expect_ok kb_admin keys generate acme --out "$w/a.pfx" --password-file "$pw" --json
A=$(jv 'd["key"]["id"]')
expect_ok kb_admin keys activate acme "$A" --wait
expect_ok kb_admin envs apply-key acme prod
expect_ok kb_svc acme prod datakey get acme prod --json
check_json "the DEK is the same under key $A" "d['dek'] == '$DEK' and d['key_id'] == '$A'"
expect_fail PERMISSION_DENIED kb_admin datakey get acme prod
expect_fail INVALID_ARGUMENT kb_admin tenants create Acme
expect_fail PERMISSION_DENIED kb_svc acme prod datakey get acme dev
expect_ok kb_aud audit list
check_out "the auditor's listing is a table" '^SEQ +TIME +ACTOR +ROLE +METHOD +TENANT +ENV +KEY +RESULT +REASON'

kbt_section "1. the session's events, in order, with their fields"
expect_ok kb_aud audit list --all --json
cp "$KBT_OUT" "$w/all.json"
N=$(jv 'len(d["events"])')
check_json "seq strictly increasing from 1, no gap ($N events)" \
	"[e['seq'] for e in d['events']] == list(range(1, len(d['events']) + 1))"
check_json "broker.start comes first, by the broker itself" \
	"(lambda e: e['method'] == 'broker.start' and e['actor'] == 'keybroker' and e['role'] == 'system' and e['result'] == 'ok')(d['events'][0])"
check_json "every event has every field; times match time_us; hashes are 32 bytes" \
	"all(set(e) == {'seq','time','time_us','actor','role','peer','method','tenant_id','environment','key_id','result','reason','request_id','hash'} and len(e['hash']) == 64 and e['time'].startswith(__import__('time').strftime('%Y-%m-%dT%H:%M:%S', __import__('time').gmtime(e['time_us'] // 1000000))) for e in d['events'])"
# (The session's calls are one after the other; the broker's own events,
# from other threads, may carry a time a few microseconds off their place.)
check_json "the session's times never go back" \
	"(lambda v: all(a <= b for a, b in zip(v, v[1:])))([e['time_us'] for e in d['events'] if e['role'] != 'system'])"
check_json "calls carry a request id r-<16 hex> and the peer's address" \
	"all(__import__('re').fullmatch(r'r-[0-9a-f]{24}', e['request_id']) and e['peer'].startswith('ipv4:127.0.0.1:') for e in d['events'] if e['role'] != 'system')"
# A state change is recorded twice under one request id: "started" before the
# handler runs, then its outcome; anything else once.
check_json "request ids are unique (a state change: 'started', then its outcome)" \
	"all(r in (['ok'], ['denied'], ['error']) or (len(r) == 2 and r[0] == 'started' and r[1] != 'started') for r in __import__('functools').reduce(lambda g, e: g.setdefault(e['request_id'], []).append(e['result']) or g, [e for e in d['events'] if e['role'] != 'system'], {}).values())"
check_json "every CreateTenant, GenerateKey, ActivateKey, ApplyKey outcome that reached its handler follows its 'started' event" \
	"(lambda ev: all(any(s['request_id'] == e['request_id'] and s['result'] == 'started' and s['seq'] < e['seq'] and s['method'] == e['method'] for s in ev) for e in ev if e['method'] in ('CreateTenant', 'GenerateKey', 'ActivateKey', 'ApplyKey') and e['result'] != 'started' and e['tenant_id'] != 'Acme'))(d['events'])"
# The method table checks names and scope before any handler runs, like the
# role: such a refusal changed nothing and has no "started" event.
check_json "CreateTenant with the bad tenant id Acme is refused before its handler: one 'error' event, no 'started'" \
	"(lambda v: [e['result'] for e in v] == ['error'] and 'tenant id \"Acme\" contains' in v[0]['reason'])([e for e in d['events'] if e['tenant_id'] == 'Acme'])"
check_json "GetDataKey has no 'started' event (it changes nothing)" \
	"not any(e['method'] == 'GetDataKey' and e['result'] == 'started' for e in d['events'])"
# The session's calls, in the order they were made (other events may come
# between: the broker's own, such as the activation job's).
check_json "the session's calls appear in order" \
	"(lambda want, got: (lambda it: all(w in it for w in want))(iter(got)))([
	  ('admin','admin','CreateTenant','acme','','ok'),
	  ('admin','admin','CreateEnvironment','acme','prod','ok'),
	  ('admin','admin','CreateEnvironment','acme','dev','ok'),
	  ('admin','admin','CreateTenant','globex','','ok'),
	  ('admin','admin','CreateEnvironment','globex','prod','ok'),
	  ('acme-prod','service','GetDataKey','acme','prod','ok'),
	  ('admin','admin','GenerateKey','acme','','ok'),
	  ('admin','admin','ActivateKey','acme','','ok'),
	  ('admin','admin','ApplyKey','acme','prod','ok'),
	  ('acme-prod','service','GetDataKey','acme','prod','ok'),
	  ('admin','admin','GetDataKey','acme','prod','denied'),
	  ('admin','admin','CreateTenant','Acme','','error'),
	  ('acme-prod','service','GetDataKey','acme','dev','denied')],
	  [(e['actor'], e['role'], e['method'], e['tenant_id'], e['environment'], e['result']) for e in d['events']])"
check_json "data keys: the platform key, then key $A after apply-key" \
	"(lambda k: len(k) == 2 and k[0].startswith('kb-pk-') and k[1] == '$A')([e['key_id'] for e in d['events'] if e['method'] == 'GetDataKey' and e['result'] == 'ok'])"
check_json "GenerateKey and ActivateKey name key $A" \
	"all(e['key_id'] == '$A' for e in d['events'] if e['method'] in ('GenerateKey', 'ActivateKey') and e['result'] != 'started')"
check_json "the activation job's start and end, by the broker, before apply-key" \
	"(lambda m: m.index('job.activate.start') < m.index('job.activate.done') < m.index('ApplyKey'))([e['method'] for e in d['events']]) and all(e['key_id'] == '$A' and e['tenant_id'] == 'acme' and e['role'] == 'system' for e in d['events'] if e['method'].startswith('job.'))"
check_json "successes and 'started' events have no reason" "all(e['reason'] == '' for e in d['events'] if e['result'] in ('ok', 'started') and e['role'] != 'system')"
check_json "refusals say why: status and message" \
	"[e['reason'] for e in d['events'] if e['result'] not in ('ok', 'started')] and all(e['reason'].split(':')[0] in ('PERMISSION_DENIED', 'INVALID_ARGUMENT') for e in d['events'] if e['result'] not in ('ok', 'started'))"
check_json "the wrong-environment refusal names acme/dev and says why" \
	"any(e['method'] == 'GetDataKey' and e['environment'] == 'dev' and e['result'] == 'denied' and 'dev' in e['reason'] for e in d['events'])"
check_json "the admin's GetDataKey refusal names the role rule" \
	"any(e['method'] == 'GetDataKey' and e['actor'] == 'admin' and 'may not call GetDataKey' in e['reason'] for e in d['events'])"

# Filters: each result equals the full list filtered the same way.
filter_check() { # filter_check DESC PYCOND FLAGS...
	local desc=$1 cond=$2
	shift 2
	kb_aud audit list --all --json "$@"
	if [[ $KBT_RC != 0 ]]; then
		kbt_fail "audit list $*" "$(kbt_last)"
		return
	fi
	cp "$KBT_OUT" "$w/filtered.json"
	local r
	r=$("$KBT_PY" - "$w/all.json" "$w/filtered.json" "$cond" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["events"]
b = json.load(open(sys.argv[2]))["events"]
want = [e["seq"] for e in a if eval(sys.argv[3], {"e": e})]
got = [e["seq"] for e in b if e["seq"] <= a[-1]["seq"]]
print("ok %d" % len(want) if want and got == want else "want %s got %s" % (want, got))
PY
	)
	if [[ $r == ok* ]]; then
		kbt_pass "audit list $*: ${r#ok } events, exactly those matching"
	else
		kbt_fail "audit list $* ($desc)" "$r"
	fi
}
filter_check tenant "e['tenant_id'] == 'acme'" --tenant acme
filter_check env "e['tenant_id'] == 'acme' and e['environment'] == 'prod'" --tenant acme --env prod
filter_check method "e['method'] == 'GetDataKey'" --method GetDataKey
filter_check result "e['result'] == 'denied'" --result denied
filter_check actor "e['actor'] == 'acme-prod'" --actor acme-prod
filter_check "actor and result" "e['actor'] == 'acme-prod' and e['result'] == 'ok'" --actor acme-prod --result ok
MID=$("$KBT_PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["events"]; print(e[len(e)//2]["time"], e[len(e)//2]["time_us"])' "$w/all.json")
MID_T=${MID% *}
MID_US=${MID#* }
filter_check since "e['time_us'] >= $MID_US" --since "$MID_T"
filter_check until "e['time_us'] < $MID_US" --until "$MID_T"
filter_check "relative since" "True" --since -1h
kb_aud audit list --json --since -1s
check_json "--since -1s: nothing from the session" "all(e['time_us'] > $MID_US for e in d['events'])"
expect_usage kb_aud audit list --result maybe
expect_usage kb_aud audit list --since yesterday
expect_fail INVALID_ARGUMENT kb_aud audit list --tenant ACME
expect_ok kb_aud audit list --json --page-size 3
check_json "a page of 3: seq 1..3, more, next_after_seq 3" \
	"[e['seq'] for e in d['events']] == [1, 2, 3] and d['more'] is True and d['next_after_seq'] == 3"
expect_ok kb_aud audit list --json --page-size 3 --after 3
check_json "the next page: seq 4..6" "[e['seq'] for e in d['events']] == [4, 5, 6]"
expect_ok kb_aud audit list --json --page-size 4 --all
check_json "--all follows the pages to the end" \
	"len(d['events']) >= $N and d['more'] is False and d['next_after_seq'] == d['events'][-1]['seq']"
kb_aud audit list --page-size 2
check "a partial listing says on stderr how to go on" grep -q -- '--after 2' "$KBT_ERR"
expect_ok kb_aud audit tail -n 3 --json
check "tail -n 3 --json: three JSON lines, the newest events, in order" \
	"$KBT_PY" -c 'import json, sys
s = [json.loads(l)["seq"] for l in open(sys.argv[1])]
assert len(s) == 3 and s == sorted(s) and s[0] >= int(sys.argv[2]) - 1, s' "$KBT_OUT" "$N"
expect_ok kb_aud audit tail -n 2 --result denied
check "tail -n 2 --result denied: two denied events, as text lines" \
	bash -c "test \$(grep -c ' denied ' '$KBT_OUT') = 2 && test \$(wc -l <'$KBT_OUT') = 2"

kbt_section "2. no DEK, password or private key bytes anywhere (broker running: WAL files)"
openssl pkcs12 -in "$w/a.pfx" -nocerts -nodes -passin "file:$pw" 2>/dev/null |
	openssl pkey -outform DER -out "$w/a.der" 2>/dev/null
check "the generated key's .pfx opens with the password" test -s "$w/a.der"
# no_secrets DESC FILE...: none of the secrets' forms occurs in any FILE.
no_secrets() {
	local desc=$1 r
	shift
	if r=$(DEK=$DEK PW=$PW KEYDER=$w/a.der "$KBT_PY" - "$@" <<'PY'
import base64, os, sys
dek = base64.b64decode(os.environ["DEK"])
key = open(os.environ["KEYDER"], "rb").read()
chunk = key[400:448]  # inside the private exponent
needles = {
    "DEK (raw)": dek, "DEK (base64)": base64.b64encode(dek),
    "DEK (base64, no padding)": base64.b64encode(dek).rstrip(b"="),
    "DEK (base64url)": base64.urlsafe_b64encode(dek).rstrip(b"="),
    "DEK (hex)": dek.hex().encode(), "DEK (HEX)": dek.hex().upper().encode(),
    "password": os.environ["PW"].encode(),
    "private key bytes": chunk, "private key bytes (hex)": chunk.hex().encode(),
}
assert len(dek) == 32 and len(chunk) == 48
found, n = [], 0
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    data = open(path, "rb").read()
    n += 1
    found += ["%s in %s" % (k, os.path.basename(path)) for k, v in needles.items() if v in data]
if found or n == 0:
    print("; ".join(found) or "no file to search"); sys.exit(1)
print(n)
PY
	); then
		kbt_pass "$desc: $r files, no DEK (raw, base64, hex), password or key bytes"
	else
		kbt_fail "$desc" "$r"
	fi
}
# The search finds what is there (a positive control).
if DEK=$DEK "$KBT_PY" -c 'import base64,os,sys; sys.exit(base64.b64encode(base64.b64decode(os.environ["DEK"])) not in open(sys.argv[1],"rb").read())' "$w/dek.json"; then
	kbt_pass "the search finds the DEK where it is (the service's own output)"
else
	kbt_fail "the search finds the DEK in the service's own output"
fi
mapfile -t DBFILES < <(kbt_db_files)
if kbt_db_is_pg; then
	check "the PostgreSQL server's write-ahead log is there to search" \
		bash -c "printf '%s\n' \"\$@\" | grep -q /pg_wal/" _ "${DBFILES[@]}"
	no_secrets "every file of the PostgreSQL server's data directory (${#DBFILES[@]}), broker running" \
		"${DBFILES[@]}"
else
	check "the audit database's WAL file is there to search" test -s "$ADB-wal"
	no_secrets "keybroker.db, keybroker-audit.db and their -wal files, broker running" \
		"${DBFILES[@]}"
fi
no_secrets "the broker's log so far" "$KBT_LOG"

kbt_section "3. an untouched export verifies, offline"
expect_ok kb_aud audit key --json
FP=$(jv 'd["fingerprint"]')
PEM_FP=$(jv 'd["public_key_pem"]' | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)
check_json "audit key: RSASSA-PKCS1-v1_5-SHA256, the fingerprint is the SHA-256 of its key" \
	"d['algorithm'] == 'RSASSA-PKCS1-v1_5-SHA256' and d['fingerprint'] == '$PEM_FP' and d['key_id']"
export_fresh good
check "the export is mode 0600" test "$(stat -c %a "$w/good.jsonl")" = 600
check "no temporary file is left next to it" test "$(find "$w" -name 'good.jsonl.tmp*' | wc -l)" = 0
check "the export: a header with the audit key, then events and checkpoints" \
	"$KBT_PY" -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
h = lines[0]
assert h["type"] == "header" and h["format"] == "keybroker-audit-export" and h["version"] == 1, h
assert h["audit_key"]["fingerprint"] == sys.argv[2] and "BEGIN PUBLIC KEY" in h["audit_key"]["public_key_pem"]
ev = [l for l in lines[1:] if l["type"] == "event"]
cp = [l for l in lines[1:] if l["type"] == "checkpoint"]
assert [e["seq"] for e in ev] == list(range(1, len(ev) + 1)) and len(ev) >= int(sys.argv[3])
assert len(cp) >= 1 and len(cp) + len(ev) == len(lines) - 1, len(cp)
# log order: a checkpoint right after the event with its seq
for i, l in enumerate(lines[1:], 1):
    if l["type"] == "checkpoint":
        assert lines[i - 1]["type"] == "event" and lines[i - 1]["seq"] == l["seq"], l
        assert l["head_hash"] == lines[i - 1]["hash"]
' "$w/good.jsonl" "$FP" "$N"
# Offline: no broker address, no certificate.
verify_ok "verify FILE, with no certificates and no broker address" \
	kb_nocert audit verify "$w/good.jsonl"
verify_ok "verify --key-fingerprint (from 'audit key')" \
	kb_aud audit verify "$w/good.jsonl" --key-fingerprint "$FP"
verify_fails_line "verify with another --key-fingerprint is refused" 1 "not the pinned" \
	kb_nocert audit verify "$w/good.jsonl" \
	--key-fingerprint "$(printf '%s' "$FP" | tr '0-9a-f' '1-9a-f0')"
verify_ok "verify --online" kb_aud audit verify --online
kb_aud audit verify "$w/good.jsonl" --json
check_json "verify --json" "d['verified'] is True and d['first_seq'] == 1 and d['fingerprint'] == '$FP' and d['checkpoints'] >= 1"
# Edited by hand: an actor changed.
GDK=$("$KBT_PY" -c 'import json,sys; print([e["seq"] for e in json.load(open(sys.argv[1]))["events"] if e["method"] == "GetDataKey" and e["result"] == "ok"][0])' "$w/all.json")
sed "/\"seq\":$GDK,/s/\"actor\":\"acme-prod\"/\"actor\":\"someone-else\"/" "$w/good.jsonl" >"$w/edited.jsonl"
check "the edit changed one line" test "$(diff "$w/good.jsonl" "$w/edited.jsonl" | grep -c '^>')" = 1
verify_fails "an export with an actor edited by hand" "$GDK" "does not match its hash" \
	kb_aud audit verify "$w/edited.jsonl"
sed '5s/.*/{"type":"event","seq":/' "$w/good.jsonl" >"$w/broken.jsonl"
verify_fails_line "a malformed line is named" 5 "not JSON" kb_nocert audit verify "$w/broken.jsonl"

kbt_section "3e. what verify refuses to vouch for"
kb_nocert audit verify "$w/good.jsonl"
check_out "unpinned, verify says the key was not pinned" "^unpinned: the audit key was not pinned"
kb_aud audit verify "$w/good.jsonl" --key-fingerprint "$FP"
check "pinned, it says nothing of the kind" test "$(grep -c '^unpinned:' "$KBT_OUT")" = 0
grep -v '"type":"checkpoint"' "$w/good.jsonl" >"$w/nocp.jsonl"
kb_nocert audit verify "$w/nocp.jsonl"
check "every checkpoint line removed: verify fails (exit 1), nothing in it is signed" \
	test "$KBT_RC" = 1 -a "$(grep -c '^FAILED: the log has no checkpoint' "$KBT_OUT")" = 1
verify_ok "... and passes with --allow-unsigned (the hash chain alone)" \
	kb_nocert audit verify "$w/nocp.jsonl" --allow-unsigned
# The first checkpoint moved up to right after the header, ahead of the
# events it covers (its signature and chaining are still good).
"$KBT_PY" - "$w/good.jsonl" "$w/moved.jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
i = next(i for i, l in enumerate(lines) if json.loads(l)["type"] == "checkpoint")
cp = lines.pop(i)
lines.insert(1, cp)
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
verify_fails "a checkpoint moved ahead of its events" 1 "moved ahead of its events" \
	kb_nocert audit verify "$w/moved.jsonl"

kbt_section "3d. a state change started without a recorded outcome"
kb_aud audit verify --online --json
check_json "after ordinary calls, verify --online notes no unfinished call" \
	"d['verified'] is True and d['unfinished'] == [] and d['unfinished_count'] == 0 and d['unfinished_interrupted'] == 0"
kb_aud audit verify --online
check_eq "... and prints no note" "$(grep -c '^note:' "$KBT_OUT")" 0
# The export cut right after ApplyKey's "started" event (the broker died
# there), and the same with the next broker's broker.start after it, chained
# by hand (common/kb_audit.h's encoding): both verify, the call is noted.
read -r AS ARID < <("$KBT_PY" - "$w/good.jsonl" "$w/cut-started.jsonl" "$w/cut-restart.jsonl" <<'PY'
import hashlib, json, struct, sys
lines = open(sys.argv[1]).read().splitlines()
items = [json.loads(l) for l in lines]
i = next(i for i, e in enumerate(items) if e["type"] == "event"
         and e["method"] == "ApplyKey" and e["result"] == "started")
s = items[i]
open(sys.argv[2], "w").write("\n".join(lines[:i + 1]) + "\n")
ev = {"type": "event", "seq": s["seq"] + 1, "time": s["time"], "time_us": s["time_us"],
      "actor": "keybroker", "role": "system", "peer": "", "method": "broker.start",
      "tenant_id": "", "environment": "", "key_id": "", "result": "ok",
      "reason": "made by test-audit.sh", "request_id": "sys-1"}
f = [str(ev["seq"]), str(ev["time_us"])] + [ev[k] for k in ("actor", "role", "peer",
     "method", "tenant_id", "environment", "key_id", "result", "reason", "request_id")]
enc = b"kbev1" + b"".join(struct.pack(">I", len(x.encode())) + x.encode() for x in f)
ev["hash"] = hashlib.sha256(bytes.fromhex(s["hash"]) + enc).hexdigest()
open(sys.argv[3], "w").write("\n".join(lines[:i + 1] + [json.dumps(ev)]) + "\n")
print(s["seq"], s["request_id"])
PY
)
check "ApplyKey's 'started' event is in the export: seq ${AS:-?} (${ARID:-?})" test -n "$ARID"
verify_ok "an export ending in a 'started' event verifies" \
	kb_nocert audit verify "$w/cut-started.jsonl"
check_out "... and notes the call, which may still be running" \
	"^note: 1 state change started without a recorded outcome \(it may still be running, or the broker stopped mid-call; check the state\): seq $AS ApplyKey acme/prod by admin \($ARID\)\$"
verify_ok "the same with a broker.start after it verifies" \
	kb_nocert audit verify "$w/cut-restart.jsonl"
check_out "... and notes the call as stopped mid-call" \
	"^note: 1 state change started without a recorded outcome \(the broker stopped mid-call; check the state\): seq $AS ApplyKey acme/prod by admin \($ARID\)\$"
kb_nocert audit verify "$w/cut-restart.jsonl" --json
check_json "verify --json: the call in \"unfinished\", exit 0" \
	"$KBT_RC == 0 and d['verified'] is True and d['unfinished_count'] == 1 and d['unfinished_interrupted'] == 1 and d['unfinished'] == [{'seq': $AS, 'method': 'ApplyKey', 'tenant_id': 'acme', 'environment': 'prod', 'actor': 'admin', 'request_id': '$ARID', 'interrupted': True, 'cut_short_by': 'broker.start'}]"

kbt_section "3a. an event UPDATEd in the database"
check_eq "event $GDK is the service's GetDataKey" "$(sq "SELECT actor FROM events WHERE seq = $GDK")" acme-prod
# Saved to put back: INSERT OR REPLACE statements of every row from it on.
kbt_db_save audit events "seq >= $GDK" "$w/rows-a.sql"
sq "UPDATE events SET actor = 'mallory' WHERE seq = $GDK"
kb_aud audit list --after $((GDK - 1)) --page-size 1 --json
check_json "the API now shows the edited actor" "d['events'][0]['actor'] == 'mallory'"
export_fresh tampered-a
verify_fails "(a) offline, a fresh export" "$GDK" "does not match its hash" \
	kb_aud audit verify "$w/tampered-a.jsonl"
verify_fails "(a) --online" "$GDK" "does not match its hash" kb_aud audit verify --online
# The hash column rewritten too, from the edited event on (as an attacker
# who knows the encoding would): the chain holds, the signed checkpoint
# does not.
rechain() {
	local hexf="hex(hash)"
	kbt_db_is_pg && hexf="encode(hash, 'hex')"
	# The rows from the edited one on (fields split by 0x1f, rows ended by
	# 0x1e: no field holds those), the new hashes as UPDATEs.
	rechain_rows "SELECT seq, time_us, actor, role, peer, method, tenant_id, environment,
	       key_id, result, reason, request_id, (SELECT $hexf FROM events p WHERE p.seq = $(($1 - 1)))
	       FROM events WHERE seq >= $1 ORDER BY seq" |
		"$KBT_PY" -c '
import hashlib, struct, sys
pg = sys.argv[1] == "postgres"
rows = [r.split("\x1f") for r in sys.stdin.read().strip("\n\x1e").split("\x1e") if r.strip("\n")]
prev = bytes.fromhex(rows[0][12])
print("BEGIN;")
for r in rows:
    r = [x.lstrip("\n") if i == 0 else x for i, x in enumerate(r)]
    enc = b"kbev1" + b"".join(struct.pack(">I", len(f.encode())) + f.encode() for f in r[:12])
    prev = hashlib.sha256(prev + enc).digest()
    lit = ("decode(\x27%s\x27, \x27hex\x27)" if pg else "X\x27%s\x27") % prev.hex()
    print("UPDATE events SET hash = %s WHERE seq = %s;" % (lit, r[0]))
print("COMMIT;")' "$KBT_DB" | sq
}
# rechain_rows SQL: its rows, fields split by 0x1f and rows ended by 0x1e.
rechain_rows() {
	if kbt_db_is_pg; then
		psql -X -q -A -t -F $'\x1f' -R $'\x1e' -v ON_ERROR_STOP=1 -d "$ADB" -c "$1"
	else
		sqlite3 -cmd ".timeout 5000" -separator $'\x1f' -newline $'\x1e' "$ADB" "$1"
	fi
}
rechain "$GDK"
CP_A=$(sq "SELECT MIN(seq) FROM checkpoints WHERE seq >= $GDK")
verify_fails "(a') the hashes recomputed too: the signed checkpoint at $CP_A catches it" "$CP_A" \
	"do not match the signed checkpoint" kb_aud audit verify --online
# Put the rows back as they were.
kbt_db_restore "$w/rows-a.sql"
verify_ok "(a) undone: the log verifies again" kb_aud audit verify --online

kbt_section "3b. an event DELETEd from the middle"
MIDSEQ=$((N / 2))
kbt_db_save audit events "seq = $MIDSEQ" "$w/row-b.sql"
sq "DELETE FROM events WHERE seq = $MIDSEQ"
export_fresh tampered-b
check "export warns that seq $MIDSEQ is not in the log" grep -q "events $MIDSEQ\\.\\.$MIDSEQ are not in the log" "$KBT_ERR"
verify_fails "(b) offline, a fresh export" "$MIDSEQ" "event $MIDSEQ is missing" \
	kb_aud audit verify "$w/tampered-b.jsonl"
verify_fails "(b) --online" "$MIDSEQ" "event $MIDSEQ is missing" kb_aud audit verify --online
kbt_db_restore "$w/row-b.sql"
verify_ok "(b) undone: the log verifies again" kb_aud audit verify --online

kbt_section "5. who may read the log"
expect_fail PERMISSION_DENIED -m 'may not call ListEvents' kb_svc acme prod audit list
expect_fail PERMISSION_DENIED kb_svc acme prod audit export --out "$w/svc.jsonl"
check "the refused export left no file" test ! -e "$w/svc.jsonl"
expect_fail PERMISSION_DENIED -m 'may not call ListEvents' kb_svc acme prod audit tail -f --from-start
# The stream itself, refused (kbctl checks with ListEvents first): grpcio.
check "TailEvents as a service: PERMISSION_DENIED" "$KBT_PY" - "$KBT_PKI" <<'PY'
import grpc, os, sys
pki = sys.argv[1]
rd = lambda n: open(os.path.join(pki, n), "rb").read()
creds = grpc.ssl_channel_credentials(rd("ca.crt"), rd("service-acme-prod.key"), rd("service-acme-prod.crt"))
ch = grpc.secure_channel(os.environ["KB_ADDR"], creds)
call = ch.unary_stream("/keybroker.v1.KeyBroker/TailEvents")(b"\x18\x01", timeout=10)
try:
    for _ in call:
        sys.exit("an event came")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
    assert "may not call TailEvents" in e.details(), e.details()
PY
expect_ok kb_aud audit list --all --json --actor acme-prod --result denied
check_json "the service's refused ListEvents and TailEvents are in the log" \
	"{e['method'] for e in d['events'] if e['role'] == 'service' and e['reason'].startswith('PERMISSION_DENIED')} >= {'ListEvents', 'TailEvents'}"
"$KB_SRC/deploy/pki.sh" admin ops acme >/dev/null
expect_ok kb_as admin-ops audit list --all --json
check_json "an admin limited to acme sees only acme's events" \
	"d['events'] and all(e['tenant_id'] == 'acme' for e in d['events'])"
OPS_N=$(jv 'len(d["events"])')
kb_aud audit list --all --json --tenant acme
check_json "... all of acme's events ($OPS_N)" "len(d['events']) == $OPS_N"
expect_fail PERMISSION_DENIED kb_as admin-ops audit list --tenant globex
kb_aud audit list --all --json
check_json "the auditor sees all: the broker's own, acme's and globex's" \
	"{'', 'acme', 'globex'} <= {e['tenant_id'] for e in d['events']}"

kbt_section "4. audit tail -f: live, killed and resumed, across a broker restart"
# tail_start N: a background tail -f as the auditor into $w/tail$N.out.
tail_start() {
	(KB_CERT=$KBT_PKI/auditor.crt KB_KEY=$KBT_PKI/auditor.key exec \
		"$KB_BUILD/kbctl" audit tail -f --state-file "$w/tail.state" \
		>"$w/tail$1.out" 2>"$w/tail$1.err" </dev/null) &
	TAIL_PID=$!
}
# wait_line FILE ERE SECONDS: until FILE has a line matching ERE; prints
# the time it took (ms), returns 1 after SECONDS.
wait_line() {
	local t0 i
	t0=$(date +%s%3N)
	for ((i = 0; i < $3 * 50; i++)); do
		if grep -Eq -- "$2" "$1" 2>/dev/null; then
			echo $(($(date +%s%3N) - t0))
			return 0
		fi
		sleep 0.02
	done
	return 1
}
rm -f "$w/tail.state"
tail_start 1
for ((i = 0; i < 250; i++)); do [[ -s $w/tail.state ]] && break; sleep 0.02; done
START=$(cat "$w/tail.state" 2>/dev/null)
check "tail -f records where it starts in the state file: after seq ${START:-?}" test -n "$START"
expect_ok kb_admin tenants create live-one
if ms=$(wait_line "$w/tail1.out" ' CreateTenant live-one ' 2); then
	kbt_pass "tail -f printed another client's CreateTenant ${ms} ms after the call returned"
else
	kbt_fail "tail -f prints another client's call within 2 s" "$(cat "$w/tail1.out" "$w/tail1.err")"
fi
expect_ok kb_svc acme prod datakey get acme prod
if ms=$(wait_line "$w/tail1.out" ' acme-prod service GetDataKey acme prod ' 2); then
	kbt_pass "... and a service's GetDataKey, ${ms} ms after"
else
	kbt_fail "tail -f prints a service's GetDataKey within 2 s" "$(cat "$w/tail1.out")"
fi
{
	kill -KILL "$TAIL_PID"
	wait "$TAIL_PID"
} 2>/dev/null # (no "Killed" notice from bash)
TAIL_PID=
KILLED_AT=$(cat "$w/tail.state")
check_eq "the state file holds the last seq printed" "$KILLED_AT" "$(tail -n 1 "$w/tail1.out" | cut -d' ' -f1)"
for t in dead-one dead-two dead-three; do
	expect_ok kb_admin tenants create "$t"
done
tail_start 2
if wait_line "$w/tail2.out" ' CreateTenant dead-three ' 5 >/dev/null; then
	kbt_pass "restarted with the same state file, tail -f prints what happened while it was dead"
else
	kbt_fail "tail -f resumes from its state file" "$(cat "$w/tail2.out" "$w/tail2.err")"
fi
check_eq "... starting right after the last seq printed" \
	"$(head -n 1 "$w/tail2.out" | cut -d' ' -f1)" $((KILLED_AT + 1))
kbt_stop
kbt_start || kbt_done
expect_ok kb_admin tenants create after-restart
if wait_line "$w/tail2.out" ' CreateTenant after-restart ' 10 >/dev/null; then
	kbt_pass "tail -f reconnected after a broker restart and goes on"
else
	kbt_fail "tail -f follows a broker restart" "$(cat "$w/tail2.out" "$w/tail2.err")"
fi
check "... saying so on stderr" grep -q 'reconnecting' "$w/tail2.err"
check "... and it saw broker.stop and broker.start" \
	bash -c "grep -q ' broker.stop ' '$w/tail2.out' && grep -q ' broker.start ' '$w/tail2.out'"
kill -TERM "$TAIL_PID"
wait "$TAIL_PID"
check_eq "tail -f exits 0 on SIGTERM" "$?" 0
TAIL_PID=
# A follower that goes away is not a refusal: its stream's end is not
# recorded (only refusals before a stream opens are).
LAST2=$(tail -n 1 "$w/tail2.out" | cut -d' ' -f1)
sleep 0.7
kb_aud audit list --json --method TailEvents --actor auditor --after "$LAST2"
check_json "the end of the follower's stream is not recorded as a refusal" "len(d['events']) == 0"
expect_ok kb_aud audit list --all --json --after "$START"
check "the outputs of both runs hold every seq after $START exactly once, in order" \
	"$KBT_PY" - "$w/tail1.out" "$w/tail2.out" "$KBT_OUT" <<'PY'
import json, sys
got = [int(l.split(" ")[0]) for f in sys.argv[1:3] for l in open(f)]
want = [e["seq"] for e in json.load(open(sys.argv[3]))["events"]]
want = want[:len(got)]
assert got == want, "got %s\nwant %s" % (got, want)
assert got == list(range(got[0], got[0] + len(got))), got
print(len(got), "events, seq", got[0], "to", got[-1])
PY

kbt_section "6. the audit signing key rotated in place"
expect_fail PERMISSION_DENIED kb_as admin-ops audit rotate-key
expect_ok kb_admin audit rotate-key --json
NEWKEY=$(jv "d['key_id']")
NEWFP=$(jv "d['fingerprint']")
check "rotate-key names a new key with another fingerprint ($NEWKEY)" \
	test -n "$NEWKEY" -a "$NEWFP" != "$FP"
expect_ok kb_aud audit keys --json
check_json "audit keys: the old one retired, the new one active" \
	"[(k['fingerprint'], k['state']) for k in d['keys']] == [('$FP', 'retired'), ('$NEWFP', 'active')]"
expect_ok kb_aud audit key --json
check_json "audit key: the new one" "d['key_id'] == '$NEWKEY'"
for i in 1 2 3; do expect_ok kb_admin tenants list; done
sleep 2.5
verify_ok "after the rotation verify --online passes" kb_aud audit verify --online
check_out "... and says the key was rotated once, vouched for by the one before" "rotated 1 time"
verify_ok "pinned to the old key" kb_aud audit verify --online --key-fingerprint "$FP"
verify_ok "pinned to the new key" kb_aud audit verify --online --key-fingerprint "$NEWFP"
ROT=$(sq "SELECT seq FROM events WHERE method = 'audit.key_rotated'")
check_eq "the rotation event names both fingerprints" \
	"$(sq "SELECT reason FROM events WHERE seq = $ROT")" \
	"audit signing key $NEWKEY (fingerprint $NEWFP) replaces $(sq "SELECT key_id FROM checkpoints WHERE seq < $ROT ORDER BY seq DESC LIMIT 1") (fingerprint $FP)"
check "a checkpoint signed by the old key covers it, and the new key signs only after" \
	test "$(sq "SELECT CASE WHEN key_id != '$NEWKEY' THEN 1 ELSE 0 END FROM checkpoints WHERE seq >= $ROT ORDER BY seq LIMIT 1")" = 1 -a \
	"$(sq "SELECT COUNT(*) FROM checkpoints WHERE key_id = '$NEWKEY' AND seq < $ROT")" = 0 -a \
	"$(sq "SELECT COUNT(*) FROM checkpoints WHERE key_id = '$NEWKEY'")" -ge 1
export_fresh rotated
verify_ok "an export across the rotation verifies offline, pinned to the old key" \
	kb_nocert audit verify "$w/rotated.jsonl" --key-fingerprint "$FP"
"$KBT_PY" - "$w/rotated.jsonl" "$w/rot-nokeys.jsonl" "$w/rot-swapped.jsonl" "$w/pki/../pki" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
h = json.loads(lines[0])
assert len(h["audit_keys"]) == 2, h
# Without the list of keys: the old checkpoints name a key not published.
h2 = dict(h); del h2["audit_keys"]
open(sys.argv[2], "w").write("\n".join([json.dumps(h2)] + lines[1:]) + "\n")
# The new key swapped for the old one's public half under the new id: the
# rotation event's fingerprint no longer matches.
h3 = json.loads(lines[0])
h3["audit_keys"][1]["public_key_pem"] = h3["audit_keys"][0]["public_key_pem"]
h3["audit_keys"][1]["fingerprint"] = h3["audit_keys"][0]["fingerprint"]
h3["audit_key"] = h3["audit_keys"][1]
open(sys.argv[3], "w").write("\n".join([json.dumps(h3)] + lines[1:]) + "\n")
PY
kb_nocert audit verify "$w/rot-nokeys.jsonl"
check "the retired key left out of the header: verify fails" \
	test "$KBT_RC" = 1 -a "$(grep -c 'which the export does not publish' "$KBT_OUT")" = 1
kb_nocert audit verify "$w/rot-swapped.jsonl"
check "the new key replaced in the header: verify fails" test "$KBT_RC" = 1
check "the broker logged that the old key was retired" grep -q "signing key $NEWKEY in force; .* retired" "$KBT_LOG"
kbt_stop
kbt_start || kbt_done
expect_ok kb_admin tenants list
verify_ok "after a restart the new key goes on signing: verify --online passes" \
	kb_aud audit verify --online --key-fingerprint "$NEWFP"
# The database pointed back at the retired key (its private half is gone):
# the broker refuses to start rather than sign with nothing.
kbt_stop
OLDKEY=$(sqs "SELECT id FROM keys WHERE purpose = 'audit' AND state = 'retired'")
sqs "UPDATE keys SET state = 'active', create_time_us = 9000000000000000 WHERE id = '$OLDKEY'"
kbt_expect_no_start "the database edited to make the retired audit key active again: refused" \
	"$KBT_CONF" "audit key \"$OLDKEY\" recorded in the database is not in token"
sqs "UPDATE keys SET state = 'retired', create_time_us = 1 WHERE id = '$OLDKEY'"
kbt_start || kbt_done
# SIGKILL at a different moment of each of 8 rotations: every start after
# finishes or keeps the hand-over, and the whole chain still verifies
# pinned to the very first key.
for d in 0.02 0.08 0.15 0.25 0.35 0.5 0.7 1.0; do
	KB_CERT=$KBT_PKI/admin.crt KB_KEY=$KBT_PKI/admin.key "$KB_BUILD/kbctl" audit rotate-key \
		>/dev/null 2>&1 </dev/null &
	rot=$!
	sleep "$d"
	kbt_kill
	wait "$rot" 2>/dev/null
	kbt_start >/dev/null || kbt_done
	kb_admin tenants list >/dev/null
done
kbt_pass "8 rotations each cut by SIGKILL at 20 ms to 1 s: the broker started after every one"
# Exactly in the window where the database names the new key and the log
# has not recorded the rotation yet (the test build dies there on cue).
kbt_stop
KBT_BROKER=$KB_BUILD/tests/keybrokerd-testclock KB_TEST_CRASH_AT=audit-rotate-stored kbt_start ||
	kbt_done
kb_admin audit rotate-key
check "the rotation dies where the database names the new key (kbctl fails: $KBT_RC)" test "$KBT_RC" != 0
wait "$KBT_PID" 2>/dev/null
KBT_PID=
CUTKEY=$(sqs "SELECT id FROM keys WHERE purpose = 'audit' AND state = 'active'")
check_eq "... and the log has no rotation to it yet" \
	"$(sq "SELECT COUNT(*) FROM events WHERE method = 'audit.key_rotated' AND key_id = '$CUTKEY'")" 0
kbt_start || kbt_done
check "the next start records the rotation to $CUTKEY and hands over" \
	grep -q "signing key $CUTKEY in force" "$KBT_LOG"
sleep 2.5
verify_ok "after them the log verifies online, pinned to the first key" \
	kb_aud audit verify --online --key-fingerprint "$FP"
check_out "... through every rotation that took effect" "rotated [0-9]+ time"
kb_aud audit keys --json
check_json "exactly one audit key is active" "sum(k['state'] == 'active' for k in d['keys']) == 1"

kbt_section "3c. the newest events DELETEd while the broker is stopped"
export_fresh before-c
kbt_stop
H=$(db_max events)
check_eq "at shutdown a checkpoint covers the last event ($H)" "$(db_max checkpoints)" "$H"
# Saved to put back between the edits.
kbt_db_save audit events "seq > $((H - 3))" "$w/rows-c.sql"
kbt_db_save audit checkpoints "1 = 1" "$w/cps-c.sql"
sq "DELETE FROM events WHERE seq > $((H - 3))"
kbt_expect_no_start "(c) the tail deleted: the broker refuses to start, naming the first lost event" \
	"$KBT_CONF" "events $((H - 2)) to $H are missing: the token's anchor says the log reached $H" \
	"--accept-audit-loss"
sq "DELETE FROM checkpoints WHERE seq > $((H - 3))"
kbt_expect_no_start "(c) the tail deleted with its checkpoints: refused, the same event named" \
	"$KBT_CONF" "events $((H - 2)) to $H are missing: the token's anchor says the log reached $H"
sq "DELETE FROM checkpoints"
kbt_db_restore "$w/rows-c.sql"
kbt_expect_no_start "(c) every checkpoint deleted (the events intact): refused" \
	"$KBT_CONF" "the signed checkpoint at $H is missing"
kbt_db_save audit events "seq > $((H - 6))" "$w/rows-c2.sql"
sq "UPDATE events SET actor = 'mallory' WHERE seq = $((H - 5))"
rechain $((H - 5))
kbt_expect_no_start "(c) an event rewritten, the hashes after it recomputed, no checkpoint left: refused" \
	"$KBT_CONF" "event $H is not the one the token's anchor signed: the log was rewritten"
kbt_db_restore "$w/rows-c2.sql"
kbt_db_restore "$w/cps-c.sql"
kbt_start || kbt_done
kbt_pass "(c) put back as it was: the broker starts"
kbt_stop
# That start and stop moved the anchor on.
H=$(db_max events)
sq "DELETE FROM events WHERE seq > $((H - 3))"
sq "DELETE FROM checkpoints WHERE seq > $((H - 3))"
kbt_start "$KBT_CONF" --accept-audit-loss || kbt_done
check "with --accept-audit-loss the broker starts and logs the loss as ACCEPTED" \
	grep -q "events $((H - 2)) to $H are missing.*ACCEPTED with --accept-audit-loss" "$KBT_LOG"
kb_aud audit list --json --after $((H - 4))
check_json "numbering goes on after the anchor: audit.loss_accepted is $((H + 1)), then broker.start" \
	"[(e['seq'], e['method']) for e in d['events']][:3] == [($((H - 3)), d['events'][0]['method']), ($((H + 1)), 'audit.loss_accepted'), ($((H + 2)), 'broker.start')] and 'first bad event $((H - 2))' in d['events'][1]['reason']"
export_fresh tampered-c
verify_fails "(c) offline, a fresh export" $((H - 2)) "event $((H - 2)) is missing" \
	kb_aud audit verify "$w/tampered-c.jsonl"
verify_fails "(c) --online" $((H - 2)) "event $((H - 2)) is missing" \
	kb_aud audit verify --online
verify_ok "an export made before the deletion still verifies, offline" \
	kb_nocert audit verify "$w/before-c.jsonl" --key-fingerprint "$FP"
kbt_stop
kbt_start || kbt_done
kbt_pass "after the accepted loss the anchor has moved: the broker starts again without the flag"

kbt_section "2. (again) no DEK, password or private key bytes, after all of it"
kbt_stop
mapfile -t DBFILES < <(kbt_db_files)
if kbt_db_is_pg; then
	no_secrets "every file of the PostgreSQL server's data directory (${#DBFILES[@]}), broker stopped" \
		"${DBFILES[@]}"
else
	check "the databases are there to search" test -s "$KBT_DIR/keybroker.db" -a -s "$ADB"
	no_secrets "keybroker.db, keybroker-audit.db (and any -wal left), broker stopped" \
		"${DBFILES[@]}"
fi
no_secrets "every export written" "$w"/*.jsonl
no_secrets "the broker's whole log" "$KBT_LOG"

echo "test-audit.sh: $(($(date +%s) - T0)) s"
kbt_done
