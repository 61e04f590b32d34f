#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-caps.sh: fair shares: the keys a tenant may hold and the data key
# versions an environment may hold are capped; past the cap the call is
# RESOURCE_EXHAUSTED naming the cap and its configuration key, and nothing
# changes.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kbt_setup max_keys_per_tenant=2 max_dek_versions=3
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -p "$w"
kbt_secret_file "$w/pw" "caps password"
expect_ok kb_admin tenants create capped
expect_ok kb_admin keys generate capped --out "$w/k1.pfx" --password-file "$w/pw"
expect_ok kb_admin keys generate capped --out "$w/k2.pfx" --password-file "$w/pw"
expect_fail RESOURCE_EXHAUSTED -m "max_keys_per_tenant = 2" \
	kb_admin keys generate capped --out "$w/k3.pfx" --password-file "$w/pw"
check "the refused key left no file" test ! -e "$w/k3.pfx"
expect_ok kb_admin keys list capped --json
check_json "still two keys" "len(d['keys']) == 2"

expect_ok kb_admin envs create capped e1
expect_ok kb_admin envs backup capped e1 --json
b=$(json 'd["id"]')
expect_ok kb_admin envs restore capped e1 "$b" --yes
expect_ok kb_admin envs restore capped e1 "$b" --yes
expect_fail RESOURCE_EXHAUSTED -m "max_dek_versions = 3" \
	kb_admin envs restore capped e1 "$b" --yes
expect_ok kb_admin envs show capped e1 --json
check_json "e1 is at version 3" "d['dek_version'] == 3"
expect_ok kb_svc capped e1 datakey get capped e1 --json
expect_ok kb_admin health
kbt_stop
kbt_done
