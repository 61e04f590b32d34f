#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# make-fixture-v1.sh: the database fixture of envelope v1, made by the
# release before envelope v2 (commit 8128163: every DEK RSA-OAEP-wrapped),
# for tests/integration/test-upgrade.sh.
#
#   git worktree add /tmp/v1 8128163 && cmake -S /tmp/v1 -B /tmp/v1/build &&
#   cmake --build /tmp/v1/build -j2
#   KB_SRC=/tmp/v1 KB_BUILD=/tmp/v1/build tests/data/make-fixture-v1.sh tests/data/fixture-v1
#
# It must run against those old binaries (KB_BUILD) and deploy/ scripts
# (KB_SRC: their conf.sh writes a configuration the old broker reads); lib.sh
# is this tree's. What it makes, with the test clock:
#   ta: platform environments p1, p2 (p2 with a second DEK version, from a
#       backup restored into it);
#   tb: a generated key, activated; c1, c2 customer-managed, p3 platform; a
#       second generated key, available;
#   tc: a generated key, activated, l1 customer-managed, then the tenant
#       locked (the clock moved 73 h ahead first).
# OUTDIR gets the token directory, its PIN, both databases (WAL merged),
# the keys' .pfx files and their password, expected.json (every DEK version,
# read through GetDataKey) and clock-offset (the test clock's offset at the
# end: a test runs at that offset or later).
set -u -o pipefail
out=${1:?usage: KB_BUILD=OLD_BUILD make-fixture-v1.sh OUTDIR}
out=$(mkdir -p "$out" && cd "$out" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../integration" && pwd)
# shellcheck source=../integration/lib.sh
. "$here/lib.sh"

kbt_setup_testclock
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -p "$w"
pw=$w/pw
kbt_secret_file "$pw" "fixture v1 password"
dek() { # dek TENANT ENV VERSION: the DEK, base64
	kb_svc "$1" "$2" datakey get "$1" "$2" --version "$3" --json >/dev/null &&
		"$KBT_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["dek"])' "$KBT_OUT"
}
expected=()
record() { # record TENANT ENV VERSION
	local d
	d=$(dek "$@") || { kbt_fail "GetDataKey $*" "$(kbt_last)"; return; }
	expected+=("{\"tenant\": \"$1\", \"env\": \"$2\", \"version\": $3, \"dek\": \"$d\"}")
}
key_id() { "$KBT_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"]["id"])' "$KBT_OUT"; }

expect_ok kb_admin tenants create ta
expect_ok kb_admin envs create ta p1
expect_ok kb_admin envs create ta p2
expect_ok kb_admin envs backup ta p2 --json
b=$("$KBT_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$KBT_OUT")
expect_ok kb_admin envs restore ta p2 "$b" --yes

expect_ok kb_admin tenants create tb
expect_ok kb_admin keys generate tb --out "$w/tb-k1.pfx" --password-file "$pw" --json
tb_k1=$(key_id)
expect_ok kb_admin keys activate tb "$tb_k1" --wait
expect_ok kb_admin envs create tb c1
expect_ok kb_admin envs create tb c2
expect_ok kb_admin envs create tb p3
expect_ok kb_admin envs apply-key tb c1
expect_ok kb_admin envs apply-key tb c2
expect_ok kb_admin keys generate tb --out "$w/tb-k2.pfx" --password-file "$pw" --json

expect_ok kb_admin tenants create tc
expect_ok kb_admin keys generate tc --out "$w/tc-k1.pfx" --password-file "$pw" --json
tc_k1=$(key_id)
expect_ok kb_admin keys activate tc "$tc_k1" --wait
expect_ok kb_admin envs create tc l1
expect_ok kb_admin envs apply-key tc l1

for r in "ta p1 1" "ta p2 1" "ta p2 2" "tb c1 1" "tb c2 1" "tb p3 1" "tc l1 1"; do
	# shellcheck disable=SC2086
	record $r
done
kbt_clock_set $((73 * 3600))
expect_ok kb_admin tenants lock tc --key "$w/tc-k1.pfx" --password-file "$pw" --yes
kbt_stop

for db in keybroker.db keybroker-audit.db; do
	sqlite3 "$KBT_DIR/$db" 'PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;' >/dev/null
done
rm -rf "$out/tokens"
cp -r "$KBT_DIR/token/tokens" "$out/tokens"
cp "$KBT_DIR/token/pin" "$KBT_DIR/keybroker.db" "$KBT_DIR/keybroker-audit.db" \
	"$w"/*.pfx "$pw" "$out/"
kbt_clock_offset >"$out/clock-offset"
{
	printf '[\n'
	for ((i = 0; i < ${#expected[@]}; i++)); do
		printf '  %s%s\n' "${expected[i]}" "$( ((i + 1 < ${#expected[@]})) && echo ,)"
	done
	printf ']\n'
} >"$out/expected.json"
printf '{"tb_k1": "%s", "tc_k1": "%s"}\n' "$tb_k1" "$tc_k1" >"$out/keys.json"
kbt_done
