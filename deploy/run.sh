#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run.sh: install, build, set up a development broker and run it in the foreground.
#
#   deploy/run.sh
#
# On the first run, creates under var/ (or $KB_VAR): a SoftHSMv2 token
# (token.sh), a development PKI (pki.sh init) and keybroker.conf (conf.sh;
# listen address $KB_LISTEN, default 127.0.0.1:7443). Later runs reuse var/
# as it is (delete var/ to start over). Then prints kbctl commands to try and
# runs build/keybrokerd in the foreground (Ctrl-C stops it).
set -euo pipefail

case ${1:-} in
-h|--help) awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
'') ;;
*) echo "usage: deploy/run.sh (no arguments; see --help)" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export KB_VAR=${KB_VAR:-var}
build=${KB_BUILD_DIR:-build}

deploy/deps.sh
deploy/build.sh

mkdir -p "$KB_VAR"
var=$(cd "$KB_VAR" && pwd)
deploy/token.sh "$var"
deploy/pki.sh --dir "$var/pki" init
conf=$var/keybroker.conf
if [[ ! -f $conf ]]; then
	deploy/conf.sh "$var" >"$conf.tmp"
	mv -f "$conf.tmp" "$conf"
	echo "run: wrote $conf"
else
	echo "run: using $conf"
	# A configuration from before revocation (issue 11): point it at the
	# development CA's CRL, which pki.sh init has just made.
	if ! grep -Eq '^[[:space:]]*client_crl[[:space:]]*=' "$conf"; then
		printf 'client_crl = %s\n' "$var/pki/crl.pem" >>"$conf"
		echo "run: added client_crl = $var/pki/crl.pem to $conf"
	fi
fi

# Show paths relative to the repository when var/ is inside it.
rel() { local p=$1; [[ $p == "$root"/* ]] && p=${p#"$root"/}; printf '%s' "$p"; }
listen=$(awk -F' *= *' '/^[ \t]*listen[ \t]*=/ { print $2 }' "$conf")
listen=${listen:-127.0.0.1:7443}
p=$(rel "$var/pki")

cat <<TRY

In another shell, from $root:

  export KB_ADDR=$listen KB_CA=$p/ca.crt KB_CERT=$p/admin.crt KB_KEY=$p/admin.key
  $build/kbctl health
  $build/kbctl whoami
  $build/kbctl tenants create acme --name "Acme Corp"
  $build/kbctl envs create acme prod
  KB_VAR=$(rel "$var") deploy/pki.sh service acme prod
  KB_CERT=$p/service-acme-prod.crt KB_KEY=$p/service-acme-prod.key $build/kbctl datakey get acme prod --json

Starting: $build/keybrokerd --config $(rel "$conf")
TRY

exec "$build/keybrokerd" --config "$conf"
