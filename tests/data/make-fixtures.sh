#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# make-fixtures.sh: regenerate every key-file fixture in tests/data/.
#
# Usage: tests/data/make-fixtures.sh [--new-keys]
#
# The test keys in keys/ are made once and then reused, so every fixture's
# fingerprint stays the same from one run to the next (--new-keys makes new
# ones). The .pfx and .byok files themselves differ on every run (random
# salts, IVs, OAEP seeds and certificate dates); that is expected.
#
# Needs: openssl (3.0 or later), a C compiler with libcrypto's headers
# (for mkpfx.c), Java keytool (Debian: default-jre-headless) and GnuTLS
# certtool (Debian: gnutls-bin). The tests need none of them.
#
# Everything here is TEST DATA: the keys are test keys, published in the
# repository; never use them for anything else.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

for tool in openssl keytool certtool cc; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "make-fixtures.sh: $tool is missing (see the header of this script)" >&2
		exit 1
	}
done

new_keys=0
[ "${1:-}" = "--new-keys" ] && new_keys=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

# ---- keys (kept between runs) ----
mkdir -p keys
rsa_key() { # FILE BITS
	if [ "$new_keys" = 1 ] || [ ! -f "keys/$1" ]; then
		openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:$2" \
		    -out "keys/$1" 2>/dev/null
	fi
}
rsa_key tenant-a.pem 2048   # openssl-modern, openssl-legacy, windows-style, twokeys, mismatch
rsa_key tenant-b.pem 2048   # keytool, keytool-legacy, twokeys, mismatch's certificate
rsa_key tenant-c.pem 2048   # certtool, with-chain
rsa_key tenant-d.pem 2048   # the key inside openssl-cli.byok
rsa_key kek.pem 2048        # the BYOK key-exchange key (KEK) pair
rsa_key rsa1024.pem 1024
rsa_key rsa4096.pem 4096
rsa_key test-ca.pem 2048    # signs with-chain.pfx's leaf certificate
if [ "$new_keys" = 1 ] || [ ! -f keys/ec-p256.pem ]; then
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 \
	    -out keys/ec-p256.pem 2>/dev/null
fi
openssl pkey -in keys/kek.pem -pubout -out kek-pub.pem

# ---- self-signed certificates (100 years: fixtures never expire) ----
cert() { # KEY CN OUT
	openssl req -x509 -new -key "keys/$1" -subj "/CN=$2" -days 36500 \
	    -sha256 -set_serial 1 -out "$work/$3"
}
cert tenant-a.pem "keybroker test tenant a" a.crt
cert tenant-b.pem "keybroker test tenant b" b.crt
cert tenant-c.pem "keybroker test tenant c" c.crt
cert ec-p256.pem "keybroker test ec" ec.crt
cert rsa1024.pem "keybroker test rsa1024" rsa1024.crt
cert rsa4096.pem "keybroker test rsa4096" rsa4096.crt
cert test-ca.pem "keybroker test CA" ca.crt
openssl req -new -key keys/tenant-c.pem -subj "/CN=keybroker test tenant c leaf" \
    -out "$work/c-leaf.csr"
openssl x509 -req -in "$work/c-leaf.csr" -CA "$work/ca.crt" \
    -CAkey keys/test-ca.pem -set_serial 2 -days 36500 -sha256 \
    -out "$work/c-leaf.crt" 2>/dev/null

# Passwords go through the environment, not argv (a good habit even for
# test data): P is read by -passout env:P / -passin env:P.
export P

# ---- accepted files ----

# openssl 3 defaults: AES-256-CBC (PBES2, PBKDF2-HMAC-SHA256, 2048
# iterations) for key and certificates, HMAC-SHA256 MAC.
P=modern-pass
openssl pkcs12 -export -inkey keys/tenant-a.pem -in "$work/a.crt" \
    -name "tenant a" -passout env:P -out openssl-modern.pfx

# openssl -legacy: key pbeWithSHA1And3-KeyTripleDES-CBC, certificates
# pbeWithSHA1And40BitRC2-CBC (needs the legacy provider), HMAC-SHA1 MAC.
P=legacy-pass
openssl pkcs12 -export -legacy -inkey keys/tenant-a.pem -in "$work/a.crt" \
    -name "tenant a" -passout env:P -out openssl-legacy.pfx

# Windows' certificate export (certmgr / Export-PfxCertificate,
# "TripleDES-SHA1"): we cannot run Windows here, so this MIMICS it with
# openssl: key and certificates pbeWithSHA1And3-KeyTripleDES-CBC, SHA-1 MAC,
# 2000 iterations, a friendlyName and the Microsoft CSP name attribute.
# The password is not ASCII (Windows encodes passwords as UTF-16 like
# PKCS#12 wants: this checks that path too).
P='wïndows-3dës'
openssl pkcs12 -export -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES \
    -macalg sha1 -iter 2000 -inkey keys/tenant-a.pem -in "$work/a.crt" \
    -name "{6C3E9B1F-0B5E-4E0B-9C55-3A9D7E6A1F00}" \
    -CSP "Microsoft Enhanced RSA and AES Cryptographic Provider" \
    -passout env:P -out windows-style.pfx

# Java keytool (JDK 17): importkeystore re-writes the key and certificate
# with Java's own PKCS12KeyStore. JDK 17.0.15 defaults: AES-256-CBC (PBES2,
# PBKDF2-HMAC-SHA256, 10000 iterations), HMAC-SHA256 MAC. The legacy
# variant (-Dkeystore.pkcs12.legacy, older JDKs' defaults): key 3DES, certs
# RC2-40 (50000 iterations), HMAC-SHA1 MAC (100000 iterations).
P=keytool-pass
openssl pkcs12 -export -inkey keys/tenant-b.pem -in "$work/b.crt" \
    -name tenant-b -passout env:P -out "$work/b.pfx"
rm -f keytool.pfx keytool-legacy.pfx
keytool -importkeystore -noprompt -srckeystore "$work/b.pfx" \
    -srcstoretype PKCS12 -srcstorepass:env P -srcalias tenant-b \
    -destkeystore keytool.pfx -deststoretype PKCS12 \
    -deststorepass:env P -destalias tenant-b >/dev/null 2>&1
P=keytool-legacy-pass
keytool -J-Dkeystore.pkcs12.legacy -importkeystore -noprompt \
    -srckeystore "$work/b.pfx" -srcstoretype PKCS12 -srcstorepass keytool-pass \
    -srcalias tenant-b -destkeystore keytool-legacy.pfx -deststoretype PKCS12 \
    -deststorepass:env P -destalias tenant-b >/dev/null 2>&1

# GnuTLS certtool --to-p12 (3.7): AES-128-CBC (PBES2, PBKDF2-HMAC-SHA256,
# 600000 iterations), HMAC-SHA256 MAC (600000 iterations).
P=certtool-pass
certtool --to-p12 --load-privkey keys/tenant-c.pem \
    --load-certificate "$work/c.crt" --p12-name "tenant c" \
    --password "$P" --outder --outfile certtool.pfx >/dev/null 2>&1

# A key with its certificate chain (leaf + CA certificate), as exported with
# "include all certificates in the path".
P=chain-pass
openssl pkcs12 -export -inkey keys/tenant-c.pem -in "$work/c-leaf.crt" \
    -certfile "$work/ca.crt" -name "tenant c" -passout env:P -out with-chain.pfx

# ---- refused files ----
P=refused-pass
openssl pkcs12 -export -inkey keys/ec-p256.pem -in "$work/ec.crt" \
    -passout env:P -out ec.pfx
openssl pkcs12 -export -inkey keys/rsa1024.pem -in "$work/rsa1024.crt" \
    -passout env:P -out rsa1024.pfx
openssl pkcs12 -export -inkey keys/rsa4096.pem -in "$work/rsa4096.crt" \
    -passout env:P -out rsa4096.pfx
# Certificates only.
openssl pkcs12 -export -nokeys -in "$work/a.crt" -passout env:P -out nokey.pfx
# The key stored in clear (keyBag), though the file has a MAC password.
openssl pkcs12 -export -keypbe NONE -inkey keys/tenant-a.pem \
    -in "$work/a.crt" -passout env:P -out cleartext-key.pfx
# Empty password (openssl 3 encrypts and MACs with the empty password).
P=
openssl pkcs12 -export -inkey keys/tenant-a.pem -in "$work/a.crt" \
    -passout env:P -out nopass.pfx
# No protection at all: no MAC, nothing encrypted.
openssl pkcs12 -export -keypbe NONE -certpbe NONE -nomac \
    -inkey keys/tenant-a.pem -in "$work/a.crt" -passout env:P -out unprotected.pfx
# openssl pkcs12 -export refuses to write these two: mkpfx.c does.
# shellcheck disable=SC2046 # word splitting of the flags is wanted
cc -O1 -o "$work/mkpfx" mkpfx.c $(pkg-config --cflags --libs libcrypto)
"$work/mkpfx" twokeys twokeys.pfx refused-pass keys/tenant-a.pem "$work/a.crt" \
    keys/tenant-b.pem "$work/b.crt"
"$work/mkpfx" mismatch mismatch.pfx refused-pass keys/tenant-a.pem "$work/b.crt"

# ---- expected.txt: file, password, SHA-256 of the DER SubjectPublicKeyInfo,
# computed by openssl from each accepted file itself ----
spki_sha256() { # FILE (password in $P)
	openssl pkcs12 -legacy -in "$1" -nocerts -nodes -passin env:P 2>/dev/null |
	    openssl pkey -pubout -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1
}
{
	echo "# file password spki-sha256 (generated by make-fixtures.sh; test data)"
	for pair in openssl-modern.pfx:modern-pass openssl-legacy.pfx:legacy-pass \
	    'windows-style.pfx:wïndows-3dës' keytool.pfx:keytool-pass \
	    keytool-legacy.pfx:keytool-legacy-pass certtool.pfx:certtool-pass \
	    with-chain.pfx:chain-pass; do
		f=${pair%%:*}
		P=${pair#*:}
		echo "$f $P $(spki_sha256 "$f")"
	done
} > expected.txt

# ---- openssl-cli.byok: an Azure Key Vault .byok made with the openssl
# command line only (the recipe of README.md, step by step) ----
kid="kb-kek-test-1"
b="$work/byok"
mkdir -m 700 "$b"
# 1. An ephemeral AES-256 key.
openssl rand -out "$b/aes.bin" 32
aes_hex=$(od -An -tx1 -v "$b/aes.bin" | tr -d ' \n')
# 2. The AES key under the KEK's public key: RSA-OAEP, SHA-1, MGF1-SHA-1.
openssl pkeyutl -encrypt -pubin -inkey kek-pub.pem \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 \
    -pkeyopt rsa_mgf1_md:sha1 -in "$b/aes.bin" -out "$b/wrapped-aes.bin"
# 3. The private key as unencrypted PKCS#8 DER.
openssl pkcs8 -topk8 -nocrypt -in keys/tenant-d.pem -outform DER -out "$b/key.p8"
# 4. AES key wrap with padding (RFC 5649): the -iv is RFC 5649's
#    alternative initial value A65959A6 (the 32-bit length is appended by
#    the cipher).
openssl enc -id-aes256-wrap-pad -K "$aes_hex" -iv A65959A6 \
    -in "$b/key.p8" -out "$b/wrapped-key.bin"
# 5. ciphertext = step 2 || step 4, base64url without padding.
ct=$(cat "$b/wrapped-aes.bin" "$b/wrapped-key.bin" | openssl base64 -A |
    tr '+/' '-_' | tr -d '=')
printf '{"schema_version":"1.0.0","header":{"kid":"%s","alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":"%s","generator":"openssl command line (keybroker tests/data/make-fixtures.sh)"}\n' \
    "$kid" "$ct" > openssl-cli.byok
# Check: unwrap it again with the KEK private key.
openssl pkeyutl -decrypt -inkey keys/kek.pem -pkeyopt rsa_padding_mode:oaep \
    -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 \
    -in "$b/wrapped-aes.bin" -out "$b/aes2.bin"
cmp -s "$b/aes.bin" "$b/aes2.bin"
openssl enc -d -id-aes256-wrap-pad -K "$aes_hex" -iv A65959A6 \
    -in "$b/wrapped-key.bin" | cmp -s - "$b/key.p8"
blob_len=$(cat "$b/wrapped-aes.bin" "$b/wrapped-key.bin" | wc -c)
{
	echo "# .byok fixtures: file kid ciphertext-bytes spki-sha256-of-the-wrapped-key"
	echo "openssl-cli.byok $kid $blob_len $(openssl pkey -in keys/tenant-d.pem -pubout -outform DER |
	    openssl dgst -sha256 -r | cut -d' ' -f1)"
} > expected-byok.txt
rm -rf "$b"
unset aes_hex

# Test data, readable like the rest of the tree (openssl writes 0600).
chmod 644 ./*.pfx ./*.byok ./*.pem ./*.txt keys/*.pem

echo "make-fixtures.sh: fixtures written in $here"
