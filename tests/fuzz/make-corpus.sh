#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# make-corpus.sh: (re)write the fuzzers' seed inputs under tests/fuzz/corpus/.
#
#   tests/fuzz/make-corpus.sh [BUILD_DIR]     (default: build-fuzz)
#
# pfx/     every .pfx of tests/data, byte 0 choosing its password (see
#          pfx_fuzzer.c), and re-MAC variants of two of them
# byok/    tests/data/openssl-cli.byok and variants of it (accepted ones:
#          BOM, blanks, padding, standard base64; refused ones: a field
#          missing or wrong), and a .pfx's first bytes for keyfile_detect
# config/  deploy/keybroker.conf.example, what deploy/conf.sh writes, the
#          smallest accepted file, and a few refused ones
# request/ one valid request per method, written by BUILD_DIR's
#          tests/fuzz/request_corpus (build it with deploy/test.sh --fuzz 0)
#
# Files are overwritten by name, none is deleted: regression inputs
# (regress-*) stay. Commit the result; keep the corpus under 1 MB.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build-fuzz}
corpus=$root/tests/fuzz/corpus
data=$root/tests/data
mkdir -p "$corpus"/{pfx,byok,config,request}

# ---- pfx: one byte (password index | 0x80 for re-MAC), then the file ----
pfx_seed() { # FILE PASSWORD_INDEX [NAME]
	local name=${3:-$1}
	# shellcheck disable=SC2059 # the format is the one byte
	{ printf "\\x$(printf %02x "$2")"; cat "$data/$1"; } >"$corpus/pfx/$name"
}
pfx_seed openssl-modern.pfx 0
pfx_seed openssl-legacy.pfx 1
pfx_seed windows-style.pfx 2
pfx_seed keytool.pfx 3
pfx_seed keytool-legacy.pfx 4
pfx_seed certtool.pfx 5
pfx_seed with-chain.pfx 6
for f in ec rsa1024 rsa4096 unprotected cleartext-key nokey twokeys mismatch; do
	pfx_seed "$f.pfx" 7
done
pfx_seed nopass.pfx 8
pfx_seed openssl-modern.pfx 9 openssl-modern-nullpass.pfx
pfx_seed windows-style.pfx 10 windows-style-latin1.pfx
pfx_seed openssl-modern.pfx $((0x80)) openssl-modern-remac.pfx
pfx_seed openssl-legacy.pfx $((0x81)) openssl-legacy-remac.pfx
pfx_seed twokeys.pfx $((0x87)) twokeys-remac.pfx

# ---- byok ----
python3 - "$data/openssl-cli.byok" "$corpus/byok" "$data/openssl-modern.pfx" <<'PY'
import base64, json, os, sys
src, out, pfx = sys.argv[1:4]
doc = json.load(open(src))
ct = doc["ciphertext"]
raw = base64.urlsafe_b64decode(ct + "=" * (-len(ct) % 4))
def put(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
def variant(name, **changes):
    d = json.loads(json.dumps(doc))
    for k, v in changes.items():
        path = k.split("__")
        o = d
        for p in path[:-1]:
            o = o[p]
        if v is None:
            o.pop(path[-1], None)
        else:
            o[path[-1]] = v
    put(name, json.dumps(d))
put("openssl-cli.byok", open(src, "rb").read())
put("bom.byok", b"\xef\xbb\xbf" + open(src, "rb").read())
put("pretty.byok", "\r\n\t " + json.dumps(doc, indent=2))
variant("padded.byok", ciphertext=base64.urlsafe_b64encode(raw).decode())
variant("std-base64.byok", ciphertext=base64.b64encode(raw).decode())
variant("extra-fields.byok", extra={"a": [1, 2.5, None, True]}, header__x5t="x")
variant("no-generator.byok", generator=None)
variant("long-generator.byok", generator="g" * 300)
variant("no-kid.byok", header__kid=None)
variant("long-kid.byok", header__kid="k" * 128)
variant("bad-alg.byok", header__alg="RSA-OAEP")
variant("bad-enc.byok", header__enc="CKM_AES_KEY_WRAP")
variant("bad-schema.byok", schema_version="2.0.0")
variant("short-ct.byok", ciphertext=base64.urlsafe_b64encode(raw[:256 + 8]).decode())
variant("unaligned-ct.byok", ciphertext=base64.urlsafe_b64encode(raw[:-3]).decode())
variant("bad-b64.byok", ciphertext=ct[:100] + "!" + ct[101:])
put("array.byok", "[" + json.dumps(doc) + "]")
put("duplicate-key.byok", '{"schema_version":"1.0.0","schema_version":"1.0.0"}')
put("pfx-head.bin", open(pfx, "rb").read()[:64])
PY

# ---- config ----
cp "$root/deploy/keybroker.conf.example" "$corpus/config/example.conf"
KB_LISTEN=127.0.0.1:7443 "$root/deploy/conf.sh" /tmp/kb-fuzz-var workers=2 \
	log_level=debug audit_database=audit.db test_clock_file=clock \
	>"$corpus/config/conf-sh.conf" 2>/dev/null
rmdir /tmp/kb-fuzz-var 2>/dev/null || true
printf 'tls_cert=a\ntls_key=b\nclient_ca=c\npin_file=d\ndatabase=e\n' \
	>"$corpus/config/minimal.conf"
printf '!tls_cert = a\ntls_key = /b\nclient_ca = c\npin_file = d\ndatabase = x.db\n' \
	>"$corpus/config/minimal-nodir.conf"
printf 'tls_cert = a\r\n\ttls_key=b # key\r\nclient_ca=c\npin_file=d\ndatabase=noext\nmax_message_bytes = 1024\nworkers = 256\n' \
	>"$corpus/config/crlf-tabs.conf"
printf 'workers = 0\n' >"$corpus/config/bad-number.conf"
printf 'workers = 99999999999999999999999\n' >"$corpus/config/overflow.conf"
printf 'colour = blue\n' >"$corpus/config/unknown-key.conf"
printf 'no equals sign\n' >"$corpus/config/no-equals.conf"
printf 'log_level = verbose\n' >"$corpus/config/bad-level.conf"
printf 'tls_cert =\n' >"$corpus/config/empty-value.conf"

# ---- request ----
if [[ -x $build/tests/fuzz/request_corpus ]]; then
	"$build/tests/fuzz/request_corpus" "$corpus/request"
else
	echo "make-corpus: $build/tests/fuzz/request_corpus not built;" \
		"request/ left as it is (deploy/test.sh --fuzz 0 builds it)" >&2
fi
du -sh "$corpus"
