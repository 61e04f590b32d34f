#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-install.sh: `cmake --install` puts the daemon, kbctl, the client
# library and header, the systemd unit and the example configuration where
# the unit expects them, and the installed unit passes systemd-analyze
# verify (where it exists).
set -u -o pipefail
build=${KB_BUILD:?} pass=0 fail=0
dest=$(mktemp -d "${TMPDIR:-/tmp}/kb-install.XXXXXX")
trap 'rm -rf "$dest"' EXIT
check() { # check DESC CMD...
	if "${@:2}" >/dev/null 2>&1; then
		pass=$((pass + 1)); echo "ok   $1"
	else
		fail=$((fail + 1)); echo "FAIL $1"
	fi
}
check "cmake --install (DESTDIR)" env DESTDIR="$dest" cmake --install "$build"
p=$dest/usr/local
for f in bin/keybrokerd bin/kbctl lib/systemd/system/keybrokerd.service \
	etc/keybroker/keybroker.conf.example include/keybroker/kbclient.h; do
	check "installed: $f" test -s "$p/$f"
done
check "installed: the client library" bash -c "ls '$p'/lib*/libkbclient.so* >/dev/null"
check "the installed keybrokerd runs (--version)" "$p/bin/keybrokerd" --version
check "the installed kbctl runs (--version)" "$p/bin/kbctl" --version
check "the unit runs the binary the install put in bin/" \
	grep -q '^ExecStart=/usr/local/bin/keybrokerd ' "$p/lib/systemd/system/keybrokerd.service"
if command -v systemd-analyze >/dev/null 2>&1; then
	# The unit names /usr/local/bin: point it at the installed copy.
	sed "s|/usr/local/bin/|$p/bin/|g" "$p/lib/systemd/system/keybrokerd.service" \
		>"$dest/keybrokerd.service"
	check "systemd-analyze verify of the installed unit" \
		systemd-analyze verify "$dest/keybrokerd.service"
else
	echo "skip systemd-analyze verify: not installed"
fi
echo "$pass passed, $fail failed"
((fail == 0))
