#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-edge.sh: trust at the edges (issue 11): the handshake, revocation and
# strict identities, against a real broker and token.
#
# - Flood: TLS handshakes with a self-signed admin certificate for
#   $KBT_EDGE_FLOOD_S seconds (default 60) or $KBT_EDGE_FLOOD_MAX attempts
#   (default 100000), whichever comes first, with test-edge-flood.py; every
#   one must be refused in the handshake, the audit database may grow by at
#   most a few events (apart from the service's own GetDataKey events), the
#   broker logs a bounded number of summary lines whose counts add up to
#   the attempts, and a service's GetDataKey keeps working all along (its
#   p50/p99 are printed).
# - Revocation: a service certificate revoked with deploy/pki.sh revoke is
#   refused at its next call (UNAUTHENTICATED naming its serial), with no
#   restart; another service is unaffected; a revocation followed by SIGHUP
#   too; a CRL past its nextUpdate is logged loudly, and with
#   client_crl_strict every call is refused until a fresh CRL is written.
# - Strict identities: admin certificates with KB://tenant/x, kb:/tenant/x,
#   kb://tenant/x%00y, kb://Tenant/x, and with no URI at all: each refused
#   (PERMISSION_DENIED saying what is wrong), none lists any tenant;
#   kb://platform lists them all.
# - A server key (tls_key) readable by group or others: the broker refuses
#   to start, naming the mode.
# Run: bash tests/integration/test-edge.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

FLOOD_S=${KBT_EDGE_FLOOD_S:-60}
FLOOD_MAX=${KBT_EDGE_FLOOD_MAX:-100000}
KBT_DEADLINE=$((FLOOD_S + 200))
kbt_setup
kbt_start || kbt_done
pki() { "$KB_SRC/deploy/pki.sh" "$@" >/dev/null || kbt_fail "deploy/pki.sh $*"; }

# audit_count [SQL-CONDITION]: events in the audit database.
audit_count() {
	"$KBT_PY" - "$KBT_DIR/keybroker-audit.db" "${1:-1}" <<'PY'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(db.execute("SELECT count(*) FROM events WHERE %s" % sys.argv[2]).fetchone()[0])
PY
}

# mint NAME OU SAN: NAME.crt/.key in the PKI directory, from the test CA,
# with the subjectAltName SAN ("" for none): what pki.sh will not make.
mint() {
	local name=$1 ou=$2 san=$3 d=$KBT_PKI
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-out "$d/$name.key" 2>/dev/null && chmod 600 "$d/$name.key" &&
		{
			printf 'basicConstraints = critical, CA:FALSE\n'
			printf 'keyUsage = critical, digitalSignature\n'
			printf 'extendedKeyUsage = clientAuth\n'
			[[ -z $san ]] || printf 'subjectAltName = %s\n' "$san"
		} >"$d/$name.ext" &&
		openssl req -new -key "$d/$name.key" -subj "/OU=$ou/CN=$name" 2>/dev/null |
		openssl x509 -req -CA "$d/ca.crt" -CAkey "$d/ca.key" -set_serial "0x$(openssl rand -hex 12)" \
			-days 30 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null ||
		kbt_fail "minting $name ($san)"
}

kbt_section "set-up"
expect_ok kb_admin tenants create acme --name Acme
expect_ok kb_admin tenants create beta --name Beta
for e in prod dev stage; do
	expect_ok kb_admin envs create acme "$e"
done
pki service acme prod
pki service acme dev
expect_ok kb_svc acme prod datakey get acme prod --json
dek_prod=$(<"$KBT_OUT")
expect_ok kb_svc acme dev datakey get acme dev --json

kbt_section "a flood of handshakes with a self-signed admin certificate"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$KBT_PKI/self.key" -out "$KBT_PKI/self.crt" -days 2 \
	-subj "/OU=admin/CN=admin" -addext "subjectAltName = URI:kb://platform" 2>/dev/null ||
	kbt_fail "self-signed certificate"
expect_fail UNAVAILABLE -m 'client certificate|not signed' kb_as self tenants list
svc_events="method = 'GetDataKey' AND actor = 'acme-prod'"
before=$(audit_count "NOT ($svc_events)")
lines_before=$(grep -c 'TLS handshakes refused' "$KBT_LOG")
out=$KBT_DIR/flood.json
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto
timeout -k 5 $((FLOOD_S + 60)) "$KBT_PY" "$here/test-edge-flood.py" --addr "$KB_ADDR" \
	--ca "$KB_CA" --cert "$KBT_PKI/self.crt" --key "$KBT_PKI/self.key" \
	--svc-cert "$KBT_PKI/service-acme-prod.crt" --svc-key "$KBT_PKI/service-acme-prod.key" \
	--tenant acme --env prod --seconds "$FLOOD_S" --max "$FLOOD_MAX" >"$out" 2>"$KBT_DIR/flood.err"
check "test-edge-flood.py exits 0" test $? = 0
j() { "$KBT_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$out" "$1" 2>/dev/null; }
attempts=$(j attempts)
echo "info: $attempts handshakes in $(j seconds) s ($(j refused) refused, $(j accepted) accepted);" \
	"GetDataKey during the flood: $(j dek_ok) ok, $(j dek_fail) failed, p50 $(j dek_p50_ms) ms, p99 $(j dek_p99_ms) ms"
check "the flood made handshakes ($attempts)" test "${attempts:-0}" -gt 0
check_eq "every handshake was refused" "$(j refused)" "$attempts"
check_eq "no handshake with the self-signed certificate was accepted" "$(j accepted)" 0
check "GetDataKey kept working during the flood ($(j dek_ok) calls)" test "$(j dek_ok)" -gt 0
check_eq "no GetDataKey failed during the flood ($(j dek_errors))" "$(j dek_fail)" 0
expect_ok kb_svc acme prod datakey get acme prod --json
check_eq "the DEK is the same after the flood" "$(<"$KBT_OUT")" "$dek_prod"
sleep 11      # one summary interval: the last count is logged
after=$(audit_count "NOT ($svc_events)")
check "the audit database grew by at most 3 events apart from the service's ($before -> $after)" \
	test $((after - before)) -le 3
lines=$(($(grep -c 'TLS handshakes refused' "$KBT_LOG") - lines_before))
check "the broker logged the refusals in $lines summary lines (at most one per 10 s)" \
	test "$lines" -ge 1 -a "$lines" -le $((FLOOD_S / 10 + 3))
logged=$(grep 'TLS handshakes refused' "$KBT_LOG" | tail -n "$lines" |
	awk '{ for (i = 1; i < NF; i++) if ($i == "refused:") s += $(i + 1) } END { print s + 0 }')
check "the summary lines count the refused handshakes (${logged:-0} logged, $attempts made)" \
	test "${logged:-0}" -ge "$attempts"
check "a summary line names the reason" grep -q 'TLS handshakes refused: .*certificate verify failed' "$KBT_LOG"
check "no refused handshake was logged line by line" bash -c \
	"test \$(grep -c 'Handshake failed with fatal error' '$KBT_LOG') -le 1"

kbt_section "revocation without a restart"
serial=$(openssl x509 -in "$KBT_PKI/service-acme-prod.crt" -noout -serial | sed 's/serial=//')
pki revoke service-acme-prod
sleep 1.2     # the broker looks at the CRL file at most once a second
expect_fail UNAUTHENTICATED -m "serial $serial.*revoked" kb_svc acme prod datakey get acme prod
expect_ok kb_svc acme dev datakey get acme dev
check "the revoked service's refusal is audited with its serial" \
	test "$(audit_count "method = 'GetDataKey' AND reason LIKE '%$serial%revoked%'")" -ge 1
check "the broker logged the CRL reload" grep -q 'client CRL .* changed: reloaded' "$KBT_LOG"
pki service acme stage
expect_ok kb_svc acme stage datakey get acme stage
serial=$(openssl x509 -in "$KBT_PKI/service-acme-stage.crt" -noout -serial | sed 's/serial=//')
pki revoke service-acme-stage
kill -HUP "$KBT_PID"
sleep 0.3
expect_fail UNAUTHENTICATED -m "serial $serial.*revoked" kb_svc acme stage datakey get acme stage
check "SIGHUP read the CRL again" grep -q 'client CRL .* reloaded (SIGHUP)' "$KBT_LOG"
expect_ok kb_svc acme dev datakey get acme dev
check "the broker is the same process (no restart)" kill -0 "$KBT_PID"

kbt_section "a stale CRL"
pki --crl-next-update '1 hour ago' crl
sleep 1.2
expect_ok kb_svc acme dev datakey get acme dev
check "a stale CRL is logged loudly" grep -q 'CLIENT CRL IS STALE' "$KBT_LOG"
expect_fail UNAUTHENTICATED -m revoked kb_svc acme prod datakey get acme prod
kbt_stop
kbt_write_conf client_crl_strict=true
pki crl
kbt_start || kbt_done
pki --crl-next-update '1 minute ago' crl
sleep 1.2
expect_fail UNAVAILABLE -m 'nextUpdate.*client_crl_strict' kb_svc acme dev datakey get acme dev
expect_fail UNAVAILABLE -m 'nextUpdate' kb_admin tenants list
pki crl
sleep 1.2
expect_ok kb_svc acme dev datakey get acme dev
expect_fail UNAUTHENTICATED -m revoked kb_svc acme prod datakey get acme prod

kbt_section "strict identities: admin certificates with bad or no scope"
mint adm-upper admin 'URI:KB://tenant/acme'
mint adm-oneslash admin 'URI:kb:/tenant/acme'
mint adm-pct admin 'URI:kb://tenant/acme%00y'
mint adm-case admin 'URI:kb://Tenant/acme'
mint adm-none admin ''
mint adm-dns admin 'DNS:admin.example'
mint adm-platform admin 'URI:kb://platform'
mint adm-acme admin 'URI:kb://tenant/acme'
for c in adm-upper adm-oneslash adm-pct adm-case; do
	expect_fail PERMISSION_DENIED -m "SAN URI.*cannot be used" kb_as "$c" tenants list
	expect_fail PERMISSION_DENIED kb_as "$c" tenants show beta
	expect_fail PERMISSION_DENIED kb_as "$c" envs list acme
done
for c in adm-none adm-dns; do
	expect_fail PERMISSION_DENIED -m 'names no scope.*kb://platform.*reissue' kb_as "$c" tenants list
	expect_fail PERMISSION_DENIED kb_as "$c" tenants show acme
done
expect_ok kb_as adm-platform tenants list --json
check_json "kb://platform lists every tenant" \
	'sorted(t["id"] for t in d["tenants"]) == ["acme", "beta"]'
expect_ok kb_as adm-acme tenants list --json
check_json "kb://tenant/acme lists only acme" '[t["id"] for t in d["tenants"]] == ["acme"]'
expect_fail 'PERMISSION_DENIED|NOT_FOUND' kb_as adm-acme tenants show beta
expect_ok kb_admin whoami

kbt_section "after"
expect_ok kb_admin health
check "the broker log shows no crash" bash -c \
	"! grep -Eqi 'AddressSanitizer|runtime error|segmentation|SIGSEGV|SIGABRT|core dumped' '$KBT_LOG'"
kbt_stop

kbt_section "the TLS key's mode is checked like the PIN file's"
chmod 0640 "$KBT_PKI/server.key"
kbt_expect_no_start "a group-readable tls_key" "$KBT_CONF" 'tls_key.*server.key has mode 0640'
chmod 0600 "$KBT_PKI/server.key"
kbt_done
