#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-authz-matrix.sh: every RPC as every kind of caller (issue 6).
#
# Starts a broker, makes the callers' certificates with deploy/pki.sh (an
# admin limited to another tenant, services of two environments, an admin
# certificate that expired, one not yet valid, one from another CA), and
# runs test-authz-matrix.py: one call per method and caller, each allowed or
# refused exactly as README's API table and broker/dispatch.c say, refusals
# changing nothing and recorded in the audit log. Prints the matrix.
# Run: bash tests/integration/test-authz-matrix.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

pki() { "$KB_SRC/deploy/pki.sh" "$@" >/dev/null || kbt_fail "deploy/pki.sh $*"; }

KBT_DEADLINE=120
kbt_setup
kbt_start || kbt_done

kbt_section "certificates"
pki admin ops othertenant
pki service acme prod
pki service acme dev
pki --days -1 admin expired
pki --not-before '+1 day' --not-after '+30 days' admin future
KB_VAR=$KBT_DIR/other "$KB_SRC/deploy/pki.sh" init >/dev/null || kbt_fail "pki.sh init (another CA)"
pki --ca-dir "$KBT_DIR/other/pki" admin rogue

kbt_section "the matrix"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto
out=$KBT_DIR/matrix.out
timeout -k 5 90 "$KBT_PY" "$here/test-authz-matrix.py" --addr "$KB_ADDR" --ca "$KB_CA" \
	--pki "$KBT_PKI" --src "$KB_SRC" >"$out" 2>&1
rc=$?
kbt_py_report "$out"
check "test-authz-matrix.py exits 0" test "$rc" = 0

kbt_section "after the matrix"
expect_ok kb_admin health
check_out "the broker still answers SERVING" 'SERVING'
check "the broker log shows no crash" bash -c \
	"! grep -Eqi 'AddressSanitizer|runtime error|segmentation|SIGSEGV|SIGABRT|assert|core dumped' '$KBT_LOG'"

kbt_done
