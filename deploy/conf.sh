#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# conf.sh: write a keybrokerd configuration for a var directory to stdout.
#
#   deploy/conf.sh VAR_DIR [KEY=VALUE...] > VAR_DIR/keybroker.conf
#
# Starts from deploy/keybroker.conf.example and sets absolute paths into
# VAR_DIR: tls_cert/tls_key/client_ca/client_crl (VAR_DIR/pki, see pki.sh), pin_file and
# softhsm2_conf (VAR_DIR/token, see token.sh), database (VAR_DIR/keybroker.db),
# and listen ($KB_LISTEN, default 127.0.0.1:7443). KEY=VALUE arguments replace
# (or, for keys the example lacks, append) further settings.
set -euo pipefail

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
	awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
	(($# >= 1)) && exit 0 || exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
var=$(cd "$1" && pwd)
shift

settings=(
	"listen=${KB_LISTEN:-127.0.0.1:7443}"
	"tls_cert=$var/pki/server.crt"
	"tls_key=$var/pki/server.key"
	"client_ca=$var/pki/ca.crt"
	"client_crl=$var/pki/crl.pem"
	"pin_file=$var/token/pin"
	"softhsm2_conf=$var/token/softhsm2.conf"
	"database=$var/keybroker.db"
)
for kv in "$@"; do
	[[ $kv =~ ^[a-z0-9_]+=.*$ ]] || { echo "conf: not KEY=VALUE: $kv" >&2; exit 2; }
	settings+=("$kv")
done

# Later settings win; keys the example has are replaced in place (keeping its
# comments), the others are appended at the end.
printf '%s\n' "${settings[@]}" | awk '
	FNR == NR { i = index($0, "="); k = substr($0, 1, i - 1)
	            if (!(k in val)) order[++n] = k
	            val[k] = substr($0, i + 1); next }
	FNR == 1 { print "# Written by deploy/conf.sh from deploy/keybroker.conf.example." }
	/^[ \t]*[a-z0-9_]+[ \t]*=/ {
		k = $0; sub(/^[ \t]*/, "", k); sub(/[ \t]*=.*/, "", k)
		if (k in val) { print k " = " val[k]; done[k] = 1; next }
	}
	{ print }
	END { for (j = 1; j <= n; j++) if (!(order[j] in done)) print order[j] " = " val[order[j]] }
' - "$root/deploy/keybroker.conf.example"
