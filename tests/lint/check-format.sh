#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# check-format.sh: every C source and header of the tree is formatted as
# .clang-format says (clang-format --dry-run --Werror); names each file
# that differs and how to fix it. Usage: check-format.sh SRC_DIR
set -euo pipefail
src=${1:?usage: check-format.sh SRC_DIR}
cd "$src"
command -v clang-format >/dev/null || { echo "clang-format is not installed (deploy/deps.sh installs it)" >&2; exit 1; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	mapfile -t files < <(git ls-files '*.c' '*.h')
else
	mapfile -t files < <(find . -path ./build -prune -o \( -name '*.c' -o -name '*.h' \) -print)
fi
bad=()
for f in "${files[@]}"; do
	[[ -f $f ]] || continue
	clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
	printf 'FAIL: not formatted as .clang-format says: %s\n' "${bad[@]}"
	echo "fix: clang-format -i ${bad[*]}"
	exit 1
fi
echo "ok: ${#files[@]} C files formatted as .clang-format says ($(clang-format --version | head -n 1))"
