#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test.sh: install, build and run every test (unit and integration) with CTest.
#
#   deploy/test.sh [MODE] [CTEST_ARGS...]
#
# Modes:
#   (none)    build/ (RelWithDebInfo), then ctest
#   --asan    build-asan/ with -DKB_SANITIZE=ON (ASan+UBSan), then ctest; any
#             ASan, UBSan or LeakSanitizer report aborts the process it
#             happens in (SIGABRT), which fails the test
#   --fuzz [SECONDS]
#             build-fuzz/ with clang and -DKB_FUZZ=ON, then each libFuzzer
#             target of tests/fuzz/ for SECONDS (default 30) on a copy of its
#             corpus (tests/fuzz/corpus/TARGET); fails if any target crashes.
#             SECONDS 0 replays the corpus once (seeds and regression inputs).
#             Crash inputs are kept in build-fuzz/fuzz-artifacts/TARGET/.
#   --valgrind
#             build/, then the end-to-end smoke (tests/integration/test-e2e.sh)
#             with keybrokerd under valgrind memcheck (suppressions:
#             tests/valgrind.supp); fails on any error valgrind reports:
#             invalid accesses, uses of uninitialised memory, definite leaks.
#             Logs are kept in build/valgrind/.
# CTEST_ARGS go to ctest (e.g. -R e2e, -V). Exits non-zero if any test fails
# or none ran.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# ---- --fuzz ----

fuzz_targets=(pfx byok config request)

# fuzz_summary TARGET LOG RC: one line per target from libFuzzer's final
# statistics (-print_final_stats=1).
fuzz_summary() {
	local t=$1 log=$2 rc=$3 runs secs rate rss
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
	rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
	secs=$(sed -En 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -n 1)
	printf '%-8s %10s runs %6s s %8s runs/s %6s MB peak RSS  %s\n' "$t" \
		"${runs:-?}" "${secs:-?}" "${rate:-?}" "${rss:-?}" \
		"$( ((rc == 0)) && echo "no crash" || echo "CRASH (exit $rc)")"
}

run_fuzz() {
	local secs=$1 build_dir=build-fuzz work t rc failed=0 i f
	local -a args pids=()
	local -A status=()
	[[ $secs =~ ^[0-9]+$ ]] || { echo "test.sh: --fuzz SECONDS: not a number: $secs" >&2; exit 2; }
	deploy/deps.sh
	args=(-S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
		-DCMAKE_C_COMPILER=clang -DKB_FUZZ=ON)
	[[ ${CI:-} == true ]] && args+=(-DKB_WERROR=ON)
	cmake "${args[@]}" >/dev/null
	cmake --build "$build_dir" -j"$(nproc)" \
		--target "${fuzz_targets[@]/%/_fuzzer}" request_corpus

	# Each target works on a copy of its corpus, in a directory deleted at
	# the end (the request fuzzer's token and database live there too), so
	# runs never grow the repository.
	# On tmpfs when there is one: the request fuzzer's database and audit log
	# then fsync for free (500 rather than 300 inputs a second).
	local base=${TMPDIR:-/tmp}
	[[ -d /dev/shm && -w /dev/shm ]] && base=/dev/shm
	work=$(mktemp -d "$base/kb-fuzz.XXXXXX")
	# shellcheck disable=SC2064 # expand $work now, $(jobs -p) at exit
	trap "kill \$(jobs -p) 2>/dev/null || true; rm -rf '$work'" EXIT
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:halt_on_error=1
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1
	echo "fuzz: ${#fuzz_targets[@]} targets, $( ((secs > 0)) && echo "$secs s each" ||
		echo "corpus replay only"), two at a time; logs in $work"
	for t in "${fuzz_targets[@]}"; do
		mkdir -p "$work/$t/tmp" "$work/$t/artifacts"
		cp -r "tests/fuzz/corpus/$t" "$work/$t/corpus"
		args=(-print_final_stats=1 -timeout=60 "-artifact_prefix=$work/$t/artifacts/")
		if ((secs > 0)); then
			args+=("-max_total_time=$secs")
		else
			args+=(-runs=0)
		fi
		[[ -f tests/fuzz/$t.dict ]] && args+=("-dict=$root/tests/fuzz/$t.dict")
		(
			cd "$work/$t"
			TMPDIR=$work/$t/tmp exec "$root/$build_dir/tests/fuzz/${t}_fuzzer" \
				"${args[@]}" corpus >log 2>&1
		) &
		pids+=($!)
		status[$!]=$t
		# Two at a time: the machine (and CI's) has two cores.
		while (($(jobs -rp | wc -l) >= 2)); do
			wait -n || true
		done
	done
	for i in "${pids[@]}"; do
		rc=0
		wait "$i" || rc=$?
		t=${status[$i]}
		fuzz_summary "$t" "$work/$t/log" "$rc"
		if ((rc != 0)); then
			failed=1
			mkdir -p "$build_dir/fuzz-artifacts/$t"
			cp "$work/$t/log" "$build_dir/fuzz-artifacts/$t/log"
			cp "$work/$t/artifacts/"* "$build_dir/fuzz-artifacts/$t/" 2>/dev/null || true
			echo "---- $t: the report (full log: $build_dir/fuzz-artifacts/$t/log) ----"
			# From the sanitizer's (or the target's own) report to its summary.
			sed -nE '/^==[0-9]+==ERROR|runtime error|_fuzzer: |^SUMMARY/,/^SUMMARY/p' \
				"$work/$t/log" | head -n 60 | grep . || tail -n 20 "$work/$t/log"
			echo "----"
			for f in "$build_dir/fuzz-artifacts/$t"/*; do
				[[ $f == */log ]] || echo "input kept: $f" \
					"(reproduce: $build_dir/tests/fuzz/${t}_fuzzer $f)"
			done
		fi
	done
	if ((failed)); then
		echo "fuzz: FAILED (README.md, Reliability: a crash becomes a regression input)"
		exit 1
	fi
	echo "fuzz: no crash"
}

# ---- --valgrind ----

run_valgrind() {
	local build_dir=build logs wrapper rc=0 n
	command -v valgrind >/dev/null || { echo "test.sh: --valgrind needs valgrind (apt-get install valgrind)" >&2; exit 1; }
	deploy/deps.sh
	KB_BUILD_DIR=$build_dir deploy/build.sh
	logs=$root/$build_dir/valgrind
	rm -rf "$logs"
	mkdir -p "$logs"
	# lib.sh runs $KBT_BROKER --config FILE: a wrapper puts valgrind in front.
	# Exit status 99 when valgrind reports an error (definite leaks count),
	# which kbt_stop sees as a failed SIGTERM exit.
	wrapper=$logs/keybrokerd-valgrind
	cat >"$wrapper" <<EOF
#!/bin/sh
exec valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \\
	--show-leak-kinds=definite --errors-for-leak-kinds=definite \\
	--num-callers=40 --suppressions=$root/tests/valgrind.supp \\
	--gen-suppressions=all --log-file=$logs/keybrokerd.%p.log \\
	$root/$build_dir/keybrokerd "\$@"
EOF
	chmod +x "$wrapper"
	echo "valgrind: tests/integration/test-e2e.sh with keybrokerd under memcheck; logs in $logs"
	# Slower under valgrind: more time to start, per call and overall.
	KB_BUILD=$root/$build_dir KB_SRC=$root KBT_BROKER=$wrapper \
		KBT_START_TIMEOUT=${KBT_START_TIMEOUT:-180} \
		KBT_CALL_TIMEOUT=${KBT_CALL_TIMEOUT:-120} \
		KBT_DEADLINE=${KBT_DEADLINE:-1500} \
		bash tests/integration/test-e2e.sh >"$logs/test-e2e.log" 2>&1 || rc=$?
	tail -n 3 "$logs/test-e2e.log"
	n=0
	for f in "$logs"/keybrokerd.*.log; do
		[[ -e $f ]] || continue
		n=$((n + 1))
		echo "$(basename "$f"): $(grep -E 'ERROR SUMMARY|definitely lost' "$f" |
			sed -E 's/^==[0-9]+== *//' | tr '\n' ';')"
		if ! grep -q 'ERROR SUMMARY: 0 errors' "$f"; then
			rc=1
			echo "---- $f ----"
			# Everything after valgrind's banner: the errors, then the
			# summaries (with --gen-suppressions=all, each error's
			# suppression text too, for tests/valgrind.supp if it is
			# third-party only).
			awk 'on && !/^==[0-9]+== *$/; /Parent PID/ { on = 1 }' "$f" | head -n 150
		fi
	done
	if ((n == 0)); then
		echo "valgrind: no keybrokerd ran under valgrind"
		rc=1
	fi
	if ((rc != 0)); then
		echo "valgrind: FAILED (test-e2e.sh log: $logs/test-e2e.log)"
		grep -E '^FAIL' "$logs/test-e2e.log" | head -n 20 || true
		exit 1
	fi
	echo "valgrind: no errors in $n broker runs"
}

build_dir=build
cmake_args=()
case ${1:-} in
--asan)
	build_dir=build-asan
	cmake_args+=(-DKB_SANITIZE=ON)
	# Every report is fatal (the build adds -fno-sanitize-recover=all) and
	# ends the process with SIGABRT (abort_on_error), LeakSanitizer's at exit
	# too: a test expecting a refusal (exit 1) or a broker that must exit 0
	# cannot mistake a report for an ordinary failure. Ours come last: they
	# win over options already in the environment. No core files.
	export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:halt_on_error=1:abort_on_error=1
	export LSAN_OPTIONS=${LSAN_OPTIONS:+$LSAN_OPTIONS:}report_objects=1
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1:abort_on_error=1
	ulimit -c 0
	shift
	;;
--fuzz)
	shift
	secs=30
	if [[ ${1:-} =~ ^[0-9]+$ ]]; then
		secs=$1
		shift
	fi
	run_fuzz "$secs"
	exit 0
	;;
--valgrind)
	run_valgrind
	exit 0
	;;
-h|--help)
	awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
	exit 0
	;;
esac

deploy/deps.sh
KB_BUILD_DIR=$build_dir deploy/build.sh "${cmake_args[@]}"

# Two jobs: the machine (and CI's) has two cores.
rc=0
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j2 "$@" || rc=$?
if ((rc != 0)); then
	# The failed checks once more, at the very end, where the tail of a long
	# CI log shows them: each FAIL line with what the check printed after it.
	echo
	echo "== failed checks (from $build_dir/Testing/Temporary/LastTest.log) =="
	# Only the tests that failed (others print FAIL lines they expect).
	awk '/^[0-9]+\/[0-9]+ Testing: / { name = $3; n = 0 }
		{ block[n++] = $0 }
		/^Test Failed/ { print "-- " name
			for (i = 0; i < n; i++)
				if (block[i] ~ /^(FAIL|not ok)|^kb-bench: .*(UNAVAILABLE|INTERNAL|failed|error)/)
					for (j = i; j < n && j < i + 8; j++) print block[j] }' \
		"$build_dir/Testing/Temporary/LastTest.log" | head -n 150 || true
	exit "$rc"
fi
