#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-resume.sh: an activation over 2,000 environments survives SIGKILL.
#
# A tenant with 2,000 customer-managed environments (made in parallel
# through Python grpcio: test-resume.py), every DEK recorded through service
# certificates. A second key is activated (keybrokerd-testclock, the clock
# moved past the 24-hour cooldown, rewrap_threads = 1) and the broker is
# killed with SIGKILL once the job has re-wrapped between 10% and 90% of the
# data keys, while services were reading DEKs (all answered, all original).
# Restarted, the broker resumes the job from where it was (its progress never
# goes back) and finishes it (done == total); services read DEKs throughout
# (every answer the original DEK); at the end every one of the 2,000
# environments returns its original DEK, wrapped by the new key. Then a
# production keybrokerd given the same configuration (test_clock_file set)
# refuses to start and says why.
# KBT_RESUME_ENVS changes the number of environments (default 2000).
# Run: bash tests/integration/test-resume.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

T=bulk
N=${KBT_RESUME_ENVS:-2000}
HOUR=3600

kbt_setup_testclock workers=4 hsm_sessions=8 rewrap_threads=1 log_level=info
kbt_start || kbt_done
w=$KBT_DIR/work
mkdir -m 700 "$w"
pw=$w/pw
kbt_secret_file "$pw" "resume password"
export KBT_PYSTUBS=$KBT_DIR/pystubs KBT_PROTO_DIR=$KB_SRC/proto KBT_PKI

# py SUBCOMMAND ARGS...: run test-resume.py and report (its exit status).
py() {
	local out=$w/py.$1.out rc
	"$KBT_PY" "$here/test-resume.py" "$@" --tenant "$T" --out "$w" >"$out" 2>&1
	rc=$?
	kbt_py_report "$out"
	return "$rc"
}

kbt_section "a tenant with $N customer-managed environments"
expect_ok kb_admin tenants create "$T"
expect_ok kb_admin keys generate "$T" --out "$w/a.pfx" --password-file "$pw" --json
A=$(json 'd["key"]["id"]' 2>/dev/null)
expect_ok kb_admin keys activate "$T" "$A" --wait
t0=$SECONDS
py populate --count "$N" || kbt_fail "populate exits 0"
echo "     (populated in $((SECONDS - t0)) s)"
expect_ok kb_admin tenants show "$T" --json
check_json "the tenant has $N environments" "d['environment_count'] == $N"

kbt_section "activate another key; SIGKILL the broker half-way"
killed=0
active_pfx=a.pfx
for attempt in 1 2 3; do
	expect_ok kb_admin keys generate "$T" --out "$w/k$attempt.pfx" --password-file "$pw" --json
	K=$(json 'd["key"]["id"]' 2>/dev/null)
	kbt_clock_set $((attempt * 25 * HOUR))
	rm -f "$w/readers-ready" "$w/job-id"
	bpid=$KBT_PID
	# Services start reading first; then the activation; the poller kills.
	"$KBT_PY" "$here/test-resume.py" kill-mid-job --pid "$bpid" --tenant "$T" \
		--out "$w" --lock-key "$w/$active_pfx" --lock-password-file "$pw" >"$w/py.kill.out" 2>&1 &
	pypid=$!
	for ((i = 0; i < 600; i++)); do
		[[ -e $w/readers-ready ]] && break
		kill -0 "$pypid" 2>/dev/null || break
		sleep 0.1
	done
	expect_ok kb_admin keys activate "$T" "$K" --json
	check_json "the job has $N data keys to re-wrap" "d['total'] == $N and d['state'] == 'running'"
	job=$(json 'd["id"]' 2>/dev/null)
	echo "$job" >"$w/job-id.tmp" && mv "$w/job-id.tmp" "$w/job-id"
	# (stderr: bash's "Killed" notice of the broker comes during this wait)
	{ wait "$pypid"; } 2>/dev/null
	rc=$?
	kbt_py_report "$w/py.kill.out"
	if ! kill -0 "$bpid" 2>/dev/null; then
		{ wait "$bpid"; } 2>/dev/null # reaped, without bash's "Killed" notice
		KBT_PID=
		echo "=== SIGKILL during job $job" >>"$KBT_LOG"
	fi
	if ((rc == 3)); then
		# The job ended before the poller saw it mid-way: let it be, try
		# the next key (each activation is 24 hours after the last).
		echo "     the job finished before it could be killed; again with another key"
		active_pfx=k$attempt.pfx
		continue
	fi
	((rc == 0)) && [[ -z $KBT_PID ]] && killed=1
	break
done
if ((!killed)); then
	kbt_fail "the broker was killed in the middle of an activation" "see above"
	kbt_done
fi
check "the killed broker is gone" bash -c "! kill -0 $bpid 2>/dev/null"

kbt_section "restart: the job resumes and finishes, DEKs served throughout"
# The readers wait for the broker and start at once, before the job ends.
"$KBT_PY" "$here/test-resume.py" after-restart --job "$job" --key "$K" --tenant "$T" \
	--out "$w" >"$w/py.after-restart.out" 2>&1 &
pypid=$!
kbt_start || kbt_done
wait "$pypid"
rc=$?
kbt_py_report "$w/py.after-restart.out"
check "test-resume.py after-restart exits 0" test "$rc" = 0
check "the restarted broker logs that it resumed the job" \
	grep -Eq "job $job: .*\(([1-9][0-9]*) of $N done\)" "$KBT_LOG"
expect_ok kb_admin jobs show "$job" --json
check_json "jobs show: done, $N of $N" "d['state'] == 'done' and d['done'] == d['total'] == $N"
expect_ok kb_admin keys list "$T" --json
check_json "the new key is the one active key" \
	"[k['id'] for k in d['keys'] if k['state'] == 'active'] == ['$K']"
check_json "no key is left installing" "all(k['state'] != 'installing' for k in d['keys'])"
expect_ok kb_admin tenants show "$T" --json
check_json "the tenant's active key is the new one" "d['active_key_id'] == '$K'"
kbt_stop

kbt_section "a production keybrokerd refuses a test clock"
check "the configuration sets test_clock_file" grep -q '^test_clock_file *=' "$KBT_CONF"
KBT_BROKER=$KB_BUILD/keybrokerd kbt_expect_no_start \
	"keybrokerd (production) with test_clock_file refuses to start and says why" \
	"$KBT_CONF" 'test_clock_file' 'production|cannot be moved|test build|testclock'

kbt_done
