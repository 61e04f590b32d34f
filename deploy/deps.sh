#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deps.sh: install the Debian packages keybroker needs to build, run and test.
#
# Idempotent and fast: asks dpkg which packages are missing and only then runs
# apt-get (update + install). Non-interactive; uses sudo when not root.
set -euo pipefail

# The one list of packages. Add new ones here.
KB_PACKAGES=(
	build-essential cmake pkg-config
	libgrpc-dev protobuf-c-compiler libprotobuf-c-dev
	libp11-kit-dev p11-kit softhsm2
	libsqlite3-dev sqlite3
	libssl-dev openssl
	libjansson-dev
	# The metrics endpoint (broker/metrics.c).
	libmicrohttpd-dev
	python3 python3-grpcio python3-grpc-tools python3-cryptography
	# Tests: the metrics page, the alert rules and the dashboard parsed by
	# the Prometheus client library's own parser and by PyYAML.
	python3-prometheus-client python3-yaml
	# Tests: p11tool/certtool (token object checks, GnuTLS .pfx files).
	gnutls-bin
	clang libclang-rt-14-dev valgrind
	# The PostgreSQL store backend (broker/db_pg.c) and its tests: a server
	# each test starts in a temporary directory; amcheck ships with it.
	libpq-dev postgresql
	# CI: the format check (tests/lint/check-format.sh).
	clang-format
)

usage() {
	cat <<USAGE
usage: deploy/deps.sh [--list|--check]
  (no option)  install the missing packages with apt-get
  --list       print the package list
  --check      exit 1 if any package is missing (prints them), install nothing
USAGE
}

# Print the packages of KB_PACKAGES that are not installed.
missing_packages() {
	local p status
	for p in "${KB_PACKAGES[@]}"; do
		status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
		[[ $status == ii* ]] || printf '%s\n' "$p"
	done
}

mode=install
case ${1:-} in
'') ;;
--list) printf '%s\n' "${KB_PACKAGES[@]}"; exit 0 ;;
--check) mode=check ;;
-h|--help) usage; exit 0 ;;
*) usage >&2; exit 2 ;;
esac

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
	echo "deps: all ${#KB_PACKAGES[@]} packages present"
	exit 0
fi
if [[ $mode == check ]]; then
	echo "deps: missing: ${missing[*]}" >&2
	exit 1
fi

echo "deps: installing: ${missing[*]}"
sudo=()
if ((EUID != 0)); then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo -E)
	else
		echo "deps: not root and no sudo: as root run" >&2
		echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg (unattended upgrades) instead of failing at once.
apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 -q)
"${sudo[@]}" apt-get "${apt_opts[@]}" update
"${sudo[@]}" apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} != 0)); then
	echo "deps: still missing after apt-get: ${missing[*]}" >&2
	exit 1
fi
echo "deps: done"
