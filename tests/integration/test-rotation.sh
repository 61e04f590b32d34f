#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-rotation.sh: a platform-key rotation over 10,000 platform-managed
# environments survives SIGKILL, with 16 readers throughout.
#
# The environments are seeded straight into the stopped broker's database
# by build/tests/kb-seed (kb-bench's seeder: each DEK sealed in the token
# under the platform key, as the broker would; 10,000 CreateEnvironment
# calls would take most of the time budget), then every DEK is read through
# GetDataKey and recorded (test-rotation.py prepare). Then, with 16 services
# reading random environments' DEKs without pause, RotatePlatformKey, and
# SIGKILL of the broker once the job has re-sealed between 25% and 75%;
# restarted, the broker resumes the job from where it was and finishes it
# (test-rotation.py rotate). Every answer, during the job, across the kill
# and after, is the DEK recorded; no call fails while the broker is up
# (those that failed while it was down are counted apart); at the end every
# DEK is unchanged and sealed by the new key, the job is done, the old
# platform key is deleted in the database and gone from the token, no row
# is sealed by it, and kbctl verify reports no failure. Figures (rotation
# rate, reads/s during it) are printed, not asserted.
# KBT_ROTATION_ENVS changes the number of environments (default 10000).
# Run: bash tests/integration/test-rotation.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

T=rot
N=${KBT_ROTATION_ENVS:-10000}
SEED=$KB_BUILD/tests/kb-seed

if [[ ! -x $SEED ]]; then
	kbt_fail "$SEED exists" "build it first (cmake --build build)"
	kbt_done
fi
kbt_setup workers=8 rewrap_threads=1 log_level=info
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
db=$KBT_DIR/keybroker.db
sql() { sqlite3 "$db" "$1"; }
# lacks LIST ITEM: the (non-empty) list of lines has no line ITEM.
# shellcheck disable=SC2317 # called through check
lacks() { [[ -n $1 ]] && ! grep -qxF -- "$2" <<<"$1"; }
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto KBT_PKI

# py SUBCOMMAND ARGS...: run test-rotation.py and report (its exit status).
py() {
	local out=$w/py.$1.out rc
	"$KBT_PY" "$here/test-rotation.py" "$@" --tenant "$T" --out "$w" >"$out" 2>&1
	rc=$?
	kbt_py_report "$out"
	return "$rc"
}

kbt_section "$N platform-managed environments, seeded with the broker stopped"
expect_ok kb_admin tenants create "$T"
kbt_stop
t0=$SECONDS
check "kb-seed: $N environments of $T sealed under the platform key" \
	env SOFTHSM2_CONF="$KBT_DIR/token/softhsm2.conf" "$SEED" --db "$db" \
	--pin-file "$KBT_DIR/token/pin" --tenant "$T" --count "$N" --deks-out "$w/seeded"
echo "     (seeded in $((SECONDS - t0)) s)"
check "the seeded DEKs' file is private (mode 600)" test "$(stat -c %a "$w/seeded")" = 600
kbt_start || kbt_done
expect_ok kb_admin tenants show "$T" --json
check_json "the tenant has $N environments" "d['environment_count'] == $N"
t0=$SECONDS
py prepare --seeded "$w/seeded" || kbt_fail "test-rotation.py prepare exits 0"
echo "     (certificates and every DEK read in $((SECONDS - t0)) s)"
old_pk=$(sql "SELECT id FROM keys WHERE purpose = 'platform' AND state = 'active'")
check_eq "$N rows are sealed by the platform key $old_pk" \
	"$(sql "SELECT count(*) FROM deks WHERE key_id = '$old_pk'")" "$N"
ids=$(kbt_token_ids)
have_ids=$?
if ((have_ids == 2)); then
	kbt_skip "the token holds the platform key $old_pk" "p11tool (gnutls-bin) is not installed"
else
	check "the token holds the platform key $old_pk" grep -qxF -- "$old_pk" <<<"$ids"
fi

kbt_section "rotate the platform key, 16 readers throughout; SIGKILL the broker half-way"
bpid=$KBT_PID
rm -f "$w/killed" "$w/restarted"
"$KBT_PY" "$here/test-rotation.py" rotate --pid "$bpid" --readers 16 --tenant "$T" \
	--out "$w" >"$w/py.rotate.out" 2>&1 &
pypid=$!
# (stderr: bash's "Killed" notice of the broker may come during this loop)
while kill -0 "$pypid" 2>/dev/null && [[ ! -e $w/killed ]]; do
	sleep 0.02
done 2>/dev/null
if [[ -e $w/killed ]]; then
	# (stderr: bash's "Killed" notice of the broker comes with this wait)
	{ wait "$bpid"; } 2>/dev/null
	KBT_PID=
	echo "=== SIGKILL during the rotation job $(<"$w/job")" >>"$KBT_LOG"
	if kbt_start; then
		date +%s.%N >"$w/restarted.tmp"
	else
		echo failed >"$w/restarted.tmp"
	fi
	mv "$w/restarted.tmp" "$w/restarted"
fi
wait "$pypid"
rc=$?
kbt_py_report "$w/py.rotate.out"
check "test-rotation.py rotate exits 0" test "$rc" = 0
[[ -e $w/killed && -n $KBT_PID ]] || kbt_done
check "the killed broker is gone" bash -c "! kill -0 $bpid 2>/dev/null"
job=$(<"$w/job")
new_pk=$(<"$w/new-key")
mapfile -t old_pks <"$w/old-keys"
check_eq "the first rotation rotated away the platform key the DEKs were read under" \
	"${old_pks[0]}" "$old_pk"
check "the restarted broker logs that it resumed the job" \
	grep -Eq "job $job: .*\(([1-9][0-9]*) of [0-9]+ done\)" "$KBT_LOG"

kbt_section "after the rotation"
expect_ok kb_admin jobs show "$job" --json
check_json "jobs show: done, every data key re-sealed" \
	"d['state'] == 'done' and d['done'] == d['total'] and d['total'] >= $N"
expect_ok kb_admin verify --json
check_json "kbctl verify: every stored data key checked in the token, 0 failures" \
	"d['checked'] >= $N and not d.get('failures')"
check_eq "no data key is sealed by a platform key other than the new one" \
	"$(sql "SELECT count(*) FROM deks d JOIN environments e ON e.id = d.env_id
		WHERE e.mode = 'platform' AND d.key_id != '$new_pk'")" 0
check_eq "the new platform key $new_pk is the one active platform key" \
	"$(sql "SELECT id FROM keys WHERE purpose = 'platform' AND state != 'deleted'")" "$new_pk"
kbt_stop
# Once the broker is stopped, nothing more can change in the token or the
# database (the old key is destroyed right after the job's last commit).
ids=$(kbt_token_ids)
have_ids=$?
for k in "${old_pks[@]}"; do
	check_eq "the old platform key $k is recorded deleted" \
		"$(sql "SELECT state FROM keys WHERE id = '$k'")" deleted
	check_eq "no row is sealed by the old platform key $k" \
		"$(sql "SELECT count(*) FROM deks WHERE key_id = '$k'")" 0
	if ((have_ids == 2)); then
		kbt_skip "the token has no object with the id $k" "p11tool (gnutls-bin) is not installed"
	else
		check "the token has no object with the old key's id $k" \
			lacks "$ids" "$k"
	fi
done
if ((have_ids != 2)); then
	check "the token holds the new platform key $new_pk" grep -qxF -- "$new_pk" <<<"$ids"
fi
check_eq "$N rows are sealed by the new platform key" \
	"$(sql "SELECT count(*) FROM deks d JOIN environments e ON e.id = d.env_id
		WHERE e.tenant_id = '$T' AND d.key_id = '$new_pk'")" "$N"
check "the database passes PRAGMA integrity_check" \
	bash -c "[[ \$(sqlite3 '$db' 'PRAGMA integrity_check') == ok ]]"

kbt_done
