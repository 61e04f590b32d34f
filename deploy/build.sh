#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# build.sh: configure and build keybroker with CMake.
#
#   deploy/build.sh [CMAKE_ARGS...]
#
# Builds into $KB_BUILD_DIR (default build/ at the repository root). Extra
# arguments go to the configure step (e.g. -DKB_SANITIZE=ON). With CI=true,
# warnings are errors (-DKB_WERROR=ON).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${KB_BUILD_DIR:-build}

args=(-S . -B "$build_dir" -DCMAKE_BUILD_TYPE="${KB_BUILD_TYPE:-RelWithDebInfo}")
if [[ ${CI:-} == true ]]; then
	args+=(-DKB_WERROR=ON)
fi

cmake "${args[@]}" "$@"
cmake --build "$build_dir" -j"$(nproc)"
