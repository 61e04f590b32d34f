#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test.sh: install, build and run every test (unit and integration) with CTest.
#
#   deploy/test.sh [MODE] [CTEST_ARGS...]
#
# Modes:
#   (none)    build/ (RelWithDebInfo), then ctest
#   --asan    build-asan/ with -DKB_SANITIZE=ON (ASan+UBSan), then ctest
# CTEST_ARGS go to ctest (e.g. -R e2e, -V). Exits non-zero if any test fails
# or none ran.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

build_dir=build
cmake_args=()
case ${1:-} in
--asan)
	build_dir=build-asan
	cmake_args+=(-DKB_SANITIZE=ON)
	# Leak checks on; UBSan reports carry a stack (the build already makes
	# every report fatal with -fno-sanitize-recover=all).
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
	shift
	;;
-h|--help)
	awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
	exit 0
	;;
esac

deploy/deps.sh
KB_BUILD_DIR=$build_dir deploy/build.sh "${cmake_args[@]}"

# Two jobs: the machine (and CI's) has two cores.
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error -j2 "$@"
