#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# token.sh: create a SoftHSMv2 token for keybroker in its own directory.
#
#   deploy/token.sh [VAR_DIR]      (default: $KB_VAR, else var/)
#
# Creates VAR_DIR/token/softhsm2.conf (token files in VAR_DIR/token/tokens),
# initialises a token labelled $KB_TOKEN_LABEL (default "keybroker") with a
# random user PIN and SO PIN, and writes them to VAR_DIR/token/pin and
# VAR_DIR/token/so-pin (mode 0600, no trailing newline). Never touches the
# system token directory (/var/lib/softhsm). Idempotent: an existing token
# with that label is kept.
#
# Prints the token's label and serial number. Use it with:
#   export SOFTHSM2_CONF=VAR_DIR/token/softhsm2.conf
set -euo pipefail
umask 077

case ${1:-} in
-h|--help) awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
esac

var=${1:-${KB_VAR:-var}}
label=${KB_TOKEN_LABEL:-keybroker}
mkdir -p "$var/token/tokens"
tokdir=$(cd "$var/token" && pwd)
conf=$tokdir/softhsm2.conf

if [[ ! -f $conf ]]; then
	cat >"$conf" <<CONF
# SoftHSMv2 configuration for keybroker (written by deploy/token.sh).
directories.tokendir = $tokdir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
fi
export SOFTHSM2_CONF=$conf

# "Label: keybroker" and "Serial number: ..." of the token with our label.
token_serial() {
	softhsm2-util --show-slots 2>/dev/null | awk -v want="$label" '
		/^Slot [0-9]/ { serial = ""; lab = "" }
		/^ *Serial number:/ { serial = $3 }
		/^ *Label:/ { sub(/^ *Label: */, ""); sub(/ *$/, ""); lab = $0
		              if (lab == want && serial != "") { print serial; exit } }'
}

serial=$(token_serial)
if [[ -n $serial ]]; then
	if [[ ! -s $tokdir/pin ]]; then
		echo "token: token '$label' exists in $tokdir/tokens but $tokdir/pin is missing" >&2
		exit 1
	fi
	echo "token: '$label' serial $serial exists ($conf)"
	exit 0
fi

if [[ -e $tokdir/pin ]]; then
	# Another token (another label) owns this directory's pin file.
	echo "token: no token '$label' in $tokdir/tokens, but $tokdir/pin exists;" \
		"refusing to overwrite it (use another VAR_DIR)" >&2
	exit 1
fi

# Random PINs from the kernel's CSPRNG; kept in shell variables (never echoed).
pin=$(openssl rand -hex 16)
so_pin=$(openssl rand -hex 16)
# printf is a shell builtin: the PINs do not show up in any process's argv.
trap 'rm -f "$tokdir/pin.tmp" "$tokdir/so-pin.tmp"' EXIT
printf '%s' "$pin" >"$tokdir/pin.tmp"
printf '%s' "$so_pin" >"$tokdir/so-pin.tmp"
chmod 0600 "$tokdir/pin.tmp" "$tokdir/so-pin.tmp"

# softhsm2-util reads PINs only from its command line or a terminal, so for
# this one-off initialisation (a process that lives well under a second) the
# PINs are in its argv. Nothing long-lived ever gets a PIN in argv: keybrokerd
# reads the pin file.
softhsm2-util --init-token --free --label "$label" \
	--so-pin "$so_pin" --pin "$pin" >/dev/null
unset pin so_pin

mv -f "$tokdir/pin.tmp" "$tokdir/pin"
mv -f "$tokdir/so-pin.tmp" "$tokdir/so-pin"
serial=$(token_serial)
if [[ -z $serial ]]; then
	echo "token: initialised, but softhsm2-util does not list token '$label'" >&2
	exit 1
fi
echo "token: created '$label' serial $serial ($conf)"
