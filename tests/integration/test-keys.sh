#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-keys.sh: tenant keys in: generate, .pfx upload, BYOK (.byok) upload.
#
# - keys generate: the .pfx (mode 0600) opens with plain openssl (no -legacy):
#   AES-256-CBC, PBKDF2, SHA-256 MAC; its key's SPKI SHA-256 is the broker's
#   fingerprint; the private key in the token is sensitive, not extractable.
# - .pfx files made here by openssl (modern and -legacy 3DES), Java keytool
#   (modern and legacy), GnuTLS certtool, and one with a certificate chain
#   (plus every accepted fixture of tests/data/expected.txt): accepted, each
#   with the fingerprint openssl computes from the key itself.
# - Refused with INVALID_ARGUMENT and a reason: wrong password, no password
#   (through grpcio: kbctl never sends an empty one), an empty-password file,
#   EC, RSA-1024, RSA-4096, two private keys, a certificate that does not
#   match the key, no key, an unencrypted key, damaged and truncated files;
#   a key already uploaded is ALREADY_EXISTS. None of them changed the key
#   list or the token.
# - BYOK: byok kek (kid, RSA-2048 public key, RSA-OAEP-SHA1, stable); a
#   .byok from 'kbctl byok wrap' and one from the openssl command line alone
#   are accepted with the PEM key's fingerprint; a wrong kid, another
#   tenant's KEK, damaged RSA or AES-KWP parts, truncated ciphertext, bad
#   JSON, RSA-1024 and EC keys are refused.
# - keys list/show --json fields; NOT_FOUND; roles; no password in the log.
# Run: bash tests/integration/test-keys.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

data=$KB_SRC/tests/data
T=acme

kbt_setup
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"

# ---- helpers ----

# spki_pem FILE: hex SHA-256 of the DER SubjectPublicKeyInfo of a PEM key.
spki_pem() {
	openssl pkey -in "$1" -pubout -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
}

# spki_pfx FILE PWFILE: the same for the key inside a .pfx (openssl reads
# it, with -legacy if it must).
spki_pfx() {
	{ openssl pkcs12 -in "$1" -nocerts -nodes -passin "file:$2" 2>/dev/null ||
		openssl pkcs12 -legacy -in "$1" -nocerts -nodes -passin "file:$2" 2>/dev/null; } |
		openssl pkey -pubout -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
}

rsa_key() { # rsa_key OUT BITS
	openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:$2" -out "$1" 2>/dev/null
}

self_cert() { # self_cert KEY CN OUT
	openssl req -x509 -new -key "$1" -subj "/CN=$2" -days 30 -sha256 -out "$3" 2>/dev/null
}

# upload_ok DESC FILE PWFILE WANT_FP [ORIGIN]: kbctl keys upload accepts it
# and answers origin, state available, RSA-2048 and the fingerprint WANT_FP.
upload_ok() {
	local desc=$1 file=$2 pw=$3 fp=$4 origin=${5:-pfx} tenant=${6:-$T} args=()
	[[ -n $pw ]] && args=(--password-file "$pw")
	kb_admin keys upload "$tenant" "$file" "${args[@]}" --json
	if [[ $KBT_RC != 0 ]]; then
		kbt_fail "$desc: upload accepted" "$(kbt_last)"
		return
	fi
	check_json "$desc: accepted; origin $origin, available, 2048 bits, fingerprint = openssl's (${fp:0:16}...)" \
		"d['origin'] == '$origin' and d['state'] == 'available' and d['bits'] == 2048 and d['fingerprint'] == '$fp' and d['tenant_id'] == '$tenant'"
}

# Token objects as "LABEL|TYPE|FLAGS" lines (p11tool from gnutls-bin).
have_p11tool=0
command -v p11tool >/dev/null 2>&1 && have_p11tool=1
token_objects() {
	SOFTHSM2_CONF=$KBT_DIR/token/softhsm2.conf GNUTLS_PIN=$(<"$KBT_DIR/token/pin") \
		p11tool --provider /usr/lib/softhsm/libsofthsm2.so --login --list-all \
		"pkcs11:token=keybroker" 2>/dev/null | awk '
		/^Object/ { if (l != "") print l "|" t "|" f; l = t = f = "" }
		/^\tType:/ { sub(/^\tType: /, ""); t = $0 }
		/^\tLabel:/ { sub(/^\tLabel: /, ""); l = $0 }
		/^\tFlags:/ { sub(/^\tFlags: /, ""); f = $0 }
		END { if (l != "") print l "|" t "|" f }' | sort
}

# check_token_private DESC KEY_ID: the key's private half is in the token,
# CKA_SENSITIVE and not CKA_EXTRACTABLE.
check_token_private() {
	local line
	if ((!have_p11tool)); then
		kbt_skip "$1" "p11tool (gnutls-bin) is not installed"
		return
	fi
	line=$(token_objects | grep -F "$2|Private key" | head -n 1)
	if [[ $line == *CKA_SENSITIVE* && $line != *CKA_EXTRACTABLE* && $line == *RSA-2048* ]]; then
		kbt_pass "$1: $line"
	else
		kbt_fail "$1" "token object: ${line:-none with label $2}" "$(token_objects)"
	fi
}

pw=$w/pw
kbt_secret_file "$pw" "correct horse battery staple"
wrongpw=$w/wrongpw
kbt_secret_file "$wrongpw" "not the password"

kbt_section "tenants"
expect_ok kb_admin tenants create "$T" --name "Acme Corp"
expect_ok kb_admin tenants create globex --name Globex

kbt_section "keys generate"
expect_ok kb_admin keys generate "$T" --out "$w/gen.pfx" --password-file "$pw" --json
check_json "generate --json: key available, origin generated, RSA-2048, and the file written" \
	"d['key']['state'] == 'available' and d['key']['origin'] == 'generated' and d['key']['bits'] == 2048 and d['pfx_file'].endswith('gen.pfx')"
gen_id=$(json 'd["key"]["id"]' 2>/dev/null)
gen_fp=$(json 'd["key"]["fingerprint"]' 2>/dev/null)
check "the .pfx is mode 0600" test "$(stat -c %a "$w/gen.pfx" 2>/dev/null)" = 600
check "the .pfx opens with openssl pkcs12 without -legacy" \
	openssl pkcs12 -in "$w/gen.pfx" -noout -passin "file:$pw"
info=$(openssl pkcs12 -in "$w/gen.pfx" -info -noout -passin "file:$pw" 2>&1)
if [[ $info == *"MAC: sha256"* && $info == *"Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC"* &&
	$info != *"3DES"* && $info != *"RC2"* ]]; then
	kbt_pass "the .pfx is modern PKCS#12: AES-256-CBC with PBKDF2, SHA-256 MAC"
else
	kbt_fail "the .pfx is modern PKCS#12: AES-256-CBC with PBKDF2, SHA-256 MAC" "$info"
fi
if openssl pkcs12 -in "$w/gen.pfx" -noout -passin "file:$wrongpw" 2>/dev/null; then
	kbt_fail "the .pfx does not open with another password" "it opened"
else
	kbt_pass "the .pfx does not open with another password"
fi
check_eq "the .pfx key's SPKI SHA-256 is the broker's fingerprint" \
	"$(spki_pfx "$w/gen.pfx" "$pw")" "$gen_fp"
check 'the fingerprint is 64 lowercase hex digits' grep -Eqx '[0-9a-f]{64}' <<<"$gen_fp"
check_token_private "the generated key's private half is in the token, sensitive, not extractable" "$gen_id"
expect_ok kb_admin keys show "$T" "$gen_id" --json
check_json "keys show --json: id, tenant, origin, state, fingerprint, bits, times" \
	"d['id'] == '$gen_id' and d['tenant_id'] == '$T' and d['origin'] == 'generated' and d['state'] == 'available' and d['fingerprint'] == '$gen_fp' and d['bits'] == 2048 and d['create_time_us'] > 1.7e15 and d['create_time'].endswith('Z') and d['activate_time'] is None and d['activate_time_us'] == 0 and d['lock_time'] is None and d['delete_time'] is None"
expect_ok kb_admin keys show "$T" "$gen_id"
check_out "keys show (text) prints the whole fingerprint" "$gen_fp"
# Refusals of kbctl itself: nothing is sent.
cp "$w/gen.pfx" "$w/gen.pfx.orig"
expect_usage kb_admin keys generate "$T" --out "$w/gen.pfx" --password-file "$pw"
check "an existing --out file is left alone" cmp -s "$w/gen.pfx" "$w/gen.pfx.orig"
expect_usage kb_admin keys generate "$T" --out "$w/nopw.pfx"
check "without a password (no terminal) nothing is written" test ! -e "$w/nopw.pfx"
cp "$pw" "$w/openpw" && chmod 0644 "$w/openpw"
expect_fail '' -m 'mode|0600|group|others' kb_admin keys generate "$T" --out "$w/open.pfx" --password-file "$w/openpw"
# Through the broker: an empty password.
expect_fail INVALID_ARGUMENT -m 'password' kb_rpc GenerateKey "{\"tenant_id\": \"$T\", \"password\": \"\"}"
expect_fail ALREADY_EXISTS -m "$gen_id" kb_admin keys upload "$T" "$w/gen.pfx" --password-file "$pw"

kbt_section ".pfx files from openssl, keytool and certtool"
# openssl 3, modern defaults (AES-256-CBC, PBKDF2, SHA-256 MAC).
rsa_key "$w/m.pem" 2048
self_cert "$w/m.pem" "kbt modern" "$w/m.crt"
openssl pkcs12 -export -inkey "$w/m.pem" -in "$w/m.crt" -name modern \
	-passout "file:$pw" -out "$w/modern.pfx"
upload_ok "openssl pkcs12 -export (modern)" "$w/modern.pfx" "$pw" "$(spki_pem "$w/m.pem")"
# openssl -legacy: 3DES key bag, RC2-40 certificates, SHA-1 MAC.
rsa_key "$w/l.pem" 2048
self_cert "$w/l.pem" "kbt legacy" "$w/l.crt"
openssl pkcs12 -export -legacy -inkey "$w/l.pem" -in "$w/l.crt" -name legacy \
	-passout "file:$pw" -out "$w/legacy.pfx"
check "the -legacy file really is 3DES" \
	bash -c "openssl pkcs12 -legacy -in '$w/legacy.pfx' -info -noout -passin 'file:$pw' 2>&1 | grep -Eq '3DES|TripleDES'"
upload_ok "openssl pkcs12 -export -legacy (3DES)" "$w/legacy.pfx" "$pw" "$(spki_pem "$w/l.pem")"
# A leaf certificate with its CA certificate (a chain in the file).
rsa_key "$w/ca.pem" 2048
self_cert "$w/ca.pem" "kbt test CA" "$w/ca.crt"
rsa_key "$w/c.pem" 2048
openssl req -new -key "$w/c.pem" -subj "/CN=kbt chain leaf" -out "$w/c.csr" 2>/dev/null
openssl x509 -req -in "$w/c.csr" -CA "$w/ca.crt" -CAkey "$w/ca.pem" -set_serial 7 \
	-days 30 -sha256 -out "$w/c.crt" 2>/dev/null
openssl pkcs12 -export -inkey "$w/c.pem" -in "$w/c.crt" -certfile "$w/ca.crt" \
	-name chain -passout "file:$pw" -out "$w/chain.pfx"
upload_ok "openssl .pfx with a certificate chain" "$w/chain.pfx" "$pw" "$(spki_pem "$w/c.pem")"

# Java keytool's own PKCS12 keystores (the key made by keytool itself).
if command -v keytool >/dev/null 2>&1; then
	export KBT_KEYTOOL_PW
	KBT_KEYTOOL_PW=$(head -n 1 "$pw")
	for variant in modern legacy; do
		jopt=()
		[[ $variant == legacy ]] && jopt=(-J-Dkeystore.pkcs12.legacy)
		rm -f "$w/keytool-$variant.pfx"
		if keytool "${jopt[@]}" -genkeypair -noprompt -alias tenant -keyalg RSA -keysize 2048 \
			-sigalg SHA256withRSA -dname "CN=kbt keytool $variant" -validity 30 \
			-storetype PKCS12 -keystore "$w/keytool-$variant.pfx" \
			-storepass:env KBT_KEYTOOL_PW -keypass:env KBT_KEYTOOL_PW >"$w/keytool.log" 2>&1; then
			fp=$(spki_pfx "$w/keytool-$variant.pfx" "$pw")
			upload_ok "keytool -genkeypair -storetype PKCS12 ($variant)" "$w/keytool-$variant.pfx" "$pw" "$fp"
		else
			kbt_fail "keytool makes a PKCS12 keystore ($variant)" "$(cat "$w/keytool.log")"
		fi
	done
	unset KBT_KEYTOOL_PW
elif [[ -f $data/keytool.pfx ]]; then
	kbt_skip "keytool .pfx made in the test" "keytool (a JRE) is not installed: the tests/data fixtures instead"
else
	kbt_skip "keytool .pfx" "keytool is not installed and tests/data has no keytool.pfx"
fi

# GnuTLS certtool --to-p12.
if command -v certtool >/dev/null 2>&1; then
	cat >"$w/certtool.tmpl" <<'EOF'
cn = "kbt certtool"
expiration_days = 30
signing_key
encryption_key
EOF
	if certtool --generate-privkey --key-type rsa --bits 2048 --outfile "$w/g.pem" >"$w/certtool.log" 2>&1 &&
		certtool --generate-self-signed --load-privkey "$w/g.pem" --template "$w/certtool.tmpl" \
			--outfile "$w/g.crt" >>"$w/certtool.log" 2>&1 &&
		certtool --to-p12 --load-privkey "$w/g.pem" --load-certificate "$w/g.crt" \
			--p12-name tenant --password "$(head -n 1 "$pw")" --outder \
			--outfile "$w/certtool.pfx" >>"$w/certtool.log" 2>&1; then
		upload_ok "certtool --to-p12" "$w/certtool.pfx" "$pw" "$(spki_pem "$w/g.pem")"
	else
		kbt_fail "certtool makes a .pfx" "$(cat "$w/certtool.log")"
	fi
else
	kbt_skip "certtool .pfx made in the test" "certtool (gnutls-bin) is not installed: the tests/data fixtures instead"
fi

# The accepted fixtures of tests/data (Windows-style 3DES with a non-ASCII
# password, keytool, certtool...), each into its own tenant: several share
# a key, which one tenant would refuse as a duplicate.
if [[ -f $data/expected.txt ]]; then
	n=0
	while read -r file fpw fp; do
		[[ -z $file || $file == \#* ]] && continue
		n=$((n + 1))
		kbt_secret_file "$w/fixture-pw" "$fpw"
		kb_admin tenants create "fixture-$n" >/dev/null
		T=fixture-$n upload_ok "tests/data/$file" "$data/$file" "$w/fixture-pw" "$fp"
	done <"$data/expected.txt"
	check "tests/data/expected.txt lists fixtures" test "$n" -gt 0
else
	kbt_skip "tests/data fixtures" "tests/data/expected.txt is absent"
fi

kbt_section ".pfx refusals"
expect_ok kb_admin keys list "$T" --json
keys_before=$(json 'sorted(k["id"] for k in d["keys"])')
((have_p11tool)) && token_before=$(token_objects)

expect_fail INVALID_ARGUMENT -m 'wrong password' \
	kb_admin keys upload "$T" "$w/modern.pfx" --password-file "$wrongpw"
expect_fail INVALID_ARGUMENT -m 'no password' \
	kb_rpc UploadKey "{\"tenant_id\": \"$T\", \"password\": \"\"}" --file "file=$w/modern.pfx"
# A file protected by the empty password (openssl encrypts with it).
rsa_key "$w/e.pem" 2048
self_cert "$w/e.pem" "kbt empty password" "$w/e.crt"
openssl pkcs12 -export -inkey "$w/e.pem" -in "$w/e.crt" -passout pass: -out "$w/emptypw.pfx"
expect_fail INVALID_ARGUMENT -m 'password' \
	kb_rpc UploadKey "{\"tenant_id\": \"$T\", \"password\": \"\"}" --file "file=$w/emptypw.pfx"
expect_fail INVALID_ARGUMENT -m 'no password|password protected|wrong password' \
	kb_admin keys upload "$T" "$w/emptypw.pfx" --password-file "$pw"
# Not RSA-2048.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$w/ec.pem" 2>/dev/null
self_cert "$w/ec.pem" "kbt ec" "$w/ec.crt"
openssl pkcs12 -export -inkey "$w/ec.pem" -in "$w/ec.crt" -passout "file:$pw" -out "$w/ec.pfx"
expect_fail INVALID_ARGUMENT -m 'EC.*RSA-2048|RSA-2048.*EC' kb_admin keys upload "$T" "$w/ec.pfx" --password-file "$pw"
rsa_key "$w/r1024.pem" 1024
self_cert "$w/r1024.pem" "kbt rsa1024" "$w/r1024.crt"
openssl pkcs12 -export -inkey "$w/r1024.pem" -in "$w/r1024.crt" -passout "file:$pw" -out "$w/r1024.pfx"
expect_fail INVALID_ARGUMENT -m '1024' kb_admin keys upload "$T" "$w/r1024.pfx" --password-file "$pw"
rsa_key "$w/r3072.pem" 3072
self_cert "$w/r3072.pem" "kbt rsa3072" "$w/r3072.crt"
openssl pkcs12 -export -inkey "$w/r3072.pem" -in "$w/r3072.crt" -passout "file:$pw" -out "$w/r3072.pfx"
expect_fail INVALID_ARGUMENT -m '3072' kb_admin keys upload "$T" "$w/r3072.pfx" --password-file "$pw"
# No private key; an unencrypted key bag.
openssl pkcs12 -export -nokeys -in "$w/m.crt" -passout "file:$pw" -out "$w/nokey.pfx"
expect_fail INVALID_ARGUMENT -m 'no private key' kb_admin keys upload "$T" "$w/nokey.pfx" --password-file "$pw"
openssl pkcs12 -export -keypbe NONE -inkey "$w/e.pem" -in "$w/e.crt" -passout "file:$pw" -out "$w/clearkey.pfx"
expect_fail INVALID_ARGUMENT -m 'not encrypted|password' kb_admin keys upload "$T" "$w/clearkey.pfx" --password-file "$pw"
# Two private keys, and a certificate of another key: openssl pkcs12
# -export will not write these; tests/data has them (mkpfx.c).
kbt_secret_file "$w/refused-pw" refused-pass
if [[ -f $data/twokeys.pfx && -f $data/mismatch.pfx ]]; then
	expect_fail INVALID_ARGUMENT -m '2 private keys|more than one|two' \
		kb_admin keys upload "$T" "$data/twokeys.pfx" --password-file "$w/refused-pw"
	expect_fail INVALID_ARGUMENT -m 'certificate.*(not belong|not match|mismatch|does not)' \
		kb_admin keys upload "$T" "$data/mismatch.pfx" --password-file "$w/refused-pw"
else
	kbt_skip "two keys / mismatched certificate" "tests/data/twokeys.pfx or mismatch.pfx is absent"
fi
# Damaged: truncated, one byte changed, not PKCS#12 at all.
head -c 1000 "$w/modern.pfx" >"$w/truncated.pfx"
expect_fail INVALID_ARGUMENT -m 'PKCS#12|pfx|damaged|truncated' \
	kb_admin keys upload "$T" "$w/truncated.pfx" --password-file "$pw"
cp "$w/modern.pfx" "$w/flipped.pfx"
size=$(stat -c %s "$w/flipped.pfx")
printf '\x5a' | dd of="$w/flipped.pfx" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
expect_fail INVALID_ARGUMENT -m 'PKCS#12|pfx|damaged|MAC|password' \
	kb_admin keys upload "$T" "$w/flipped.pfx" --password-file "$pw"
{ printf '\x30\x82\x07\xd0'; head -c 2000 /dev/urandom; } >"$w/random.pfx"
expect_fail INVALID_ARGUMENT -m 'PKCS#12|pfx|damaged' \
	kb_admin keys upload "$T" "$w/random.pfx" --password-file "$pw" --format pfx
# The same key again (another file, another password): already there.
kbt_secret_file "$w/pw2" "another password"
openssl pkcs12 -export -inkey "$w/m.pem" -in "$w/m.crt" -passout "file:$w/pw2" -out "$w/modern-again.pfx"
expect_fail ALREADY_EXISTS -m 'already' kb_admin keys upload "$T" "$w/modern-again.pfx" --password-file "$w/pw2"

expect_ok kb_admin keys list "$T" --json
check_eq "after the refusals the key list is unchanged" \
	"$(json 'sorted(k["id"] for k in d["keys"])')" "$keys_before"
if ((have_p11tool)); then
	check_eq "after the refusals the token holds the same objects" "$(token_objects)" "$token_before"
fi

kbt_section "BYOK: the key-exchange key"
expect_ok kb_admin byok kek "$T" --json
cp "$KBT_OUT" "$w/kek.json"
check_json "byok kek --json: kid, a PEM public key, RSA-OAEP-SHA1" \
	"d['kid'] and d['public_key_pem'].startswith('-----BEGIN PUBLIC KEY-----') and d['wrap_algorithm'] == 'RSA-OAEP-SHA1'"
kid=$(json 'd["kid"]' 2>/dev/null)
json 'd["public_key_pem"]' >"$w/kek.pem" 2>/dev/null
check "the KEK is an RSA-2048 public key" \
	bash -c "openssl pkey -pubin -in '$w/kek.pem' -noout -text 2>/dev/null | grep -q 'Public-Key: (2048 bit)'"
expect_ok kb_admin byok kek "$T" --json
check_eq "byok kek gives the same kid again" "$(json 'd["kid"]' 2>&1)" "$kid"
expect_ok kb_admin byok kek "$T" --out "$w/kek-out.pem"
check_eq "byok kek --out writes the same public key" \
	"$(openssl pkey -pubin -in "$w/kek-out.pem" -outform DER 2>/dev/null | sha256sum)" \
	"$(openssl pkey -pubin -in "$w/kek.pem" -outform DER 2>/dev/null | sha256sum)"
expect_ok kb_admin byok kek globex --json
cp "$KBT_OUT" "$w/kek-globex.json"
globex_kid=$(json 'd["kid"]' 2>/dev/null)
check_token_private "the KEK's private half is in the token, sensitive, not extractable" "$kid"

kbt_section "BYOK: kbctl byok wrap"
rsa_key "$w/byok1.pem" 2048
expect_ok kb_admin byok wrap --kek "$w/kek.json" --key "$w/byok1.pem" --out "$w/kbctl.byok"
check "the .byok is mode 0600" test "$(stat -c %a "$w/kbctl.byok" 2>/dev/null)" = 600
cp "$w/kbctl.byok" "$KBT_OUT"
check_json "the .byok is the Azure Key Vault JSON: schema 1.0.0, kid, alg dir, enc CKM_RSA_AES_KEY_WRAP, base64url ciphertext" \
	"d['schema_version'] == '1.0.0' and d['header'] == {'kid': '$kid', 'alg': 'dir', 'enc': 'CKM_RSA_AES_KEY_WRAP'} and __import__('re').fullmatch('[A-Za-z0-9_-]+', d['ciphertext']) is not None and d.get('generator')"
upload_ok "kbctl byok wrap -> keys upload" "$w/kbctl.byok" "" "$(spki_pem "$w/byok1.pem")" byok
byok1_id=$(json 'd["id"]' 2>/dev/null)
check_token_private "the BYOK key's private half is in the token, sensitive, not extractable" "$byok1_id"
expect_fail ALREADY_EXISTS kb_admin keys upload "$T" "$w/kbctl.byok"
# The PEM form of 'byok kek --out' needs --kid.
rsa_key "$w/byok2.pem" 2048
expect_ok kb_admin byok wrap --kek "$w/kek.pem" --kid "$kid" --key "$w/byok2.pem" --out "$w/kbctl-pem.byok"
upload_ok "kbctl byok wrap --kek PEM --kid -> keys upload" "$w/kbctl-pem.byok" "" "$(spki_pem "$w/byok2.pem")" byok
# kbctl refuses to wrap what the broker would refuse.
expect_fail '' -m '1024|2048' kb_admin byok wrap --kek "$w/kek.json" --key "$w/r1024.pem" --out "$w/x.byok"

kbt_section "BYOK: a .byok made with the openssl command line only"
# The recipe: an ephemeral AES-256 key; RSA-OAEP (SHA-1, MGF1-SHA-1) of it
# under the KEK; the private key as PKCS#8 DER under AES key wrap with
# padding (RFC 5649, -id-aes256-wrap-pad, IV A65959A6); both concatenated,
# base64url without padding, in the JSON.
byok_openssl() { # byok_openssl KEY.pem KEK.pem KID OUT
	local d=$w/recipe aes
	rm -rf "$d" && mkdir -m 700 "$d"
	openssl rand -out "$d/aes.bin" 32
	aes=$(od -An -tx1 -v "$d/aes.bin" | tr -d ' \n')
	openssl pkeyutl -encrypt -pubin -inkey "$2" -pkeyopt rsa_padding_mode:oaep \
		-pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 \
		-in "$d/aes.bin" -out "$d/wrapped-aes.bin" || return 1
	openssl pkcs8 -topk8 -nocrypt -in "$1" -outform DER -out "$d/key.p8" || return 1
	openssl enc -id-aes256-wrap-pad -K "$aes" -iv A65959A6 \
		-in "$d/key.p8" -out "$d/wrapped-key.bin" || return 1
	printf '{"schema_version":"1.0.0","header":{"kid":"%s","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"%s","generator":"openssl command line (kbt)"}\n' \
		"$3" "$(cat "$d/wrapped-aes.bin" "$d/wrapped-key.bin" | openssl base64 -A | tr '+/' '-_' | tr -d '=')" >"$4"
	rm -rf "$d"
}
rsa_key "$w/byok3.pem" 2048
check "the openssl recipe makes a .byok" byok_openssl "$w/byok3.pem" "$w/kek.pem" "$kid" "$w/openssl.byok"
upload_ok "openssl-CLI .byok -> keys upload" "$w/openssl.byok" "" "$(spki_pem "$w/byok3.pem")" byok

kbt_section "BYOK: rotating the key-exchange key"
# A tenant of its own, so the refusals below keep the first KEK.
expect_ok kb_admin tenants create rot
expect_ok kb_admin byok kek rot --json
cp "$KBT_OUT" "$w/rot-kek1.json"
rot_kid1=$(json 'd["kid"]' 2>/dev/null)
rsa_key "$w/rot1.pem" 2048
expect_ok kb_admin byok wrap --kek "$w/rot-kek1.json" --key "$w/rot1.pem" --out "$w/rot-old.byok"
expect_ok kb_admin byok rotate-kek rot --json
cp "$KBT_OUT" "$w/rot-kek2.json"
rot_kid2=$(json 'd["kid"]' 2>/dev/null)
check_ne "rotate-kek gives a new kid" "$rot_kid2" "$rot_kid1"
expect_ok kb_admin byok kek rot --json
check_eq "byok kek now gives the new kid" "$(json 'd["kid"]' 2>&1)" "$rot_kid2"
expect_fail INVALID_ARGUMENT -m "$rot_kid2" kb_admin keys upload rot "$w/rot-old.byok"
check_token_has_not() { # the old exchange key is gone from the token
	((have_p11tool)) || { kbt_skip "$1" "p11tool is not installed"; return; }
	if token_objects | grep -qF -- "$2"; then kbt_fail "$1" "still there: $2"; else kbt_pass "$1"; fi
}
check_token_has_not "the previous key-exchange key is destroyed in the token" "$rot_kid1"
expect_ok kb_admin byok wrap --kek "$w/rot-kek2.json" --key "$w/rot1.pem" --out "$w/rot-new.byok"
upload_ok "a .byok for the new kid uploads" "$w/rot-new.byok" "" "$(spki_pem "$w/rot1.pem")" byok rot

kbt_section "BYOK refusals"
expect_ok kb_admin keys list "$T" --json
keys_before=$(json 'sorted(k["id"] for k in d["keys"])')
((have_p11tool)) && token_before=$(token_objects)
rsa_key "$w/byok4.pem" 2048
byok_openssl "$w/byok4.pem" "$w/kek.pem" "$kid" "$w/good4.byok"
# byok_edit IN OUT PYTHON: OUT is IN's JSON after PYTHON ran over d (and
# ct, the ciphertext's bytes, written back).
byok_edit() {
	"$KBT_PY" - "$1" "$2" "$3" <<'PY'
import base64, json, sys
d = json.load(open(sys.argv[1]))
b64 = d["ciphertext"] + "=" * (-len(d["ciphertext"]) % 4)
ct = bytearray(base64.urlsafe_b64decode(b64))
exec(sys.argv[3])
d["ciphertext"] = base64.urlsafe_b64encode(bytes(ct)).decode().rstrip("=")
open(sys.argv[2], "w").write(json.dumps(d))
PY
}
byok_edit "$w/good4.byok" "$w/wrongkid.byok" 'd["header"]["kid"] = "x-0000000000000000"'
expect_fail INVALID_ARGUMENT -m 'key-exchange key|kid' kb_admin keys upload "$T" "$w/wrongkid.byok"
check_ne "each tenant has its own KEK" "$globex_kid" "$kid"
json_kek_globex_pem=$w/kek-globex.pem
cp "$w/kek-globex.json" "$KBT_OUT"
json 'd["public_key_pem"]' >"$json_kek_globex_pem" 2>/dev/null
byok_openssl "$w/byok4.pem" "$json_kek_globex_pem" "$globex_kid" "$w/globex.byok"
expect_fail INVALID_ARGUMENT -m 'key-exchange key|kid' kb_admin keys upload "$T" "$w/globex.byok"
byok_edit "$w/good4.byok" "$w/badrsa.byok" 'ct[100] ^= 0x01'
expect_fail INVALID_ARGUMENT -m 'ciphertext|unwrap|damaged|decrypt|transfer' kb_admin keys upload "$T" "$w/badrsa.byok"
byok_edit "$w/good4.byok" "$w/badkwp.byok" 'ct[600] ^= 0x01'
expect_fail INVALID_ARGUMENT -m 'ciphertext|unwrap|damaged|integrity|key wrap' kb_admin keys upload "$T" "$w/badkwp.byok"
byok_edit "$w/good4.byok" "$w/short.byok" 'del ct[300:]'
expect_fail INVALID_ARGUMENT -m 'ciphertext|short|damaged|length|unwrap' kb_admin keys upload "$T" "$w/short.byok"
byok_edit "$w/good4.byok" "$w/badenc.byok" 'd["header"]["enc"] = "RSA-OAEP-256"'
expect_fail INVALID_ARGUMENT -m 'enc|CKM_RSA_AES_KEY_WRAP' kb_admin keys upload "$T" "$w/badenc.byok"
printf '{"schema_version":"1.0.0","header":' >"$w/badjson.byok"
expect_fail INVALID_ARGUMENT -m 'JSON|byok' kb_admin keys upload "$T" "$w/badjson.byok" --format byok
byok_openssl "$w/r1024.pem" "$w/kek.pem" "$kid" "$w/r1024.byok"
expect_fail INVALID_ARGUMENT -m '1024|2048' kb_admin keys upload "$T" "$w/r1024.byok"
byok_openssl "$w/ec.pem" "$w/kek.pem" "$kid" "$w/ec.byok"
expect_fail INVALID_ARGUMENT -m 'EC|RSA' kb_admin keys upload "$T" "$w/ec.byok"
if [[ -f $data/openssl-cli.byok ]]; then
	# Made for the test KEK of tests/data, not this broker's.
	expect_fail INVALID_ARGUMENT -m 'key-exchange key|kid' kb_admin keys upload "$T" "$data/openssl-cli.byok"
fi
expect_ok kb_admin keys list "$T" --json
check_eq "after the BYOK refusals the key list is unchanged" \
	"$(json 'sorted(k["id"] for k in d["keys"])')" "$keys_before"
if ((have_p11tool)); then
	check_eq "after the BYOK refusals the token holds the same objects" "$(token_objects)" "$token_before"
fi
upload_ok "the undamaged .byok is then accepted" "$w/good4.byok" "" "$(spki_pem "$w/byok4.pem")" byok

kbt_section "keys list"
expect_ok kb_admin keys list "$T" --json
check_json "keys list --json: every key has id, tenant, origin, available, 64-hex fingerprint, 2048 bits, times" \
	"all(k['tenant_id'] == '$T' and k['origin'] in ('generated', 'pfx', 'byok') and k['state'] == 'available' and len(k['fingerprint']) == 64 and k['bits'] == 2048 and k['create_time_us'] > 0 and k['create_time'] and k['activate_time'] is None for k in d['keys'])"
check_json "keys list --json: fingerprints are distinct" \
	"len(set(k['fingerprint'] for k in d['keys'])) == len(d['keys'])"
check_json "keys list --json: the generated key, .pfx and .byok keys" \
	"sorted(set(k['origin'] for k in d['keys'])) == ['byok', 'generated', 'pfx'] and '$gen_id' in [k['id'] for k in d['keys']]"
nkeys=$(json 'len(d["keys"])' 2>/dev/null)
expect_ok kb_admin keys list "$T"
check "keys list (text) has a row per key" test "$(grep -c '^k-' "$KBT_OUT")" = "$nkeys"
expect_ok kb_admin keys list globex --json
check_json "another tenant's keys are its own (none)" 'd["keys"] == []'
expect_ok kb_admin tenants show "$T" --json
check_json "uploading and generating activate nothing: no active key" 'd["active_key_id"] == ""'

kbt_section "not found and roles"
expect_fail NOT_FOUND kb_admin keys show "$T" k-0000000000000000
expect_fail NOT_FOUND kb_admin keys show globex "$gen_id"
expect_fail NOT_FOUND kb_admin keys list nosuch
expect_fail NOT_FOUND kb_admin byok kek nosuch
expect_fail NOT_FOUND kb_admin keys generate nosuch --out "$w/nosuch.pfx" --password-file "$pw"
"$KB_SRC/deploy/pki.sh" admin ops globex >/dev/null
expect_fail PERMISSION_DENIED kb_as admin-ops keys list "$T"
expect_fail PERMISSION_DENIED kb_as admin-ops keys generate "$T" --out "$w/ops.pfx" --password-file "$pw"
expect_fail PERMISSION_DENIED kb_as admin-ops byok kek "$T"
expect_ok kb_admin envs create "$T" prod
expect_fail PERMISSION_DENIED kb_svc "$T" prod keys list "$T"
expect_fail PERMISSION_DENIED kb_svc "$T" prod keys upload "$T" "$w/modern.pfx" --password-file "$pw"
expect_fail PERMISSION_DENIED kb_as auditor byok kek "$T"

kbt_section "secrets stay out of the log"
check "the broker's log never shows the .pfx password" \
	bash -c "! grep -qF -- \"\$(head -n 1 '$pw')\" '$KBT_LOG'"
check "the broker's log has no PEM private key" \
	bash -c "! grep -q 'PRIVATE KEY' '$KBT_LOG'"

kbt_done
