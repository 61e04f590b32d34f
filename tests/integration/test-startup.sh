#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# test-startup.sh: how keybrokerd starts and stops.
#
# --version/--help/--check-config; refusals to start, each non-zero with a
# message that says why: a database bound to another token (same label,
# other serial; other label), a wrong PIN, a PIN file readable by others, a
# missing or bad configuration file; after all of them the right token still
# opens the same data. SIGTERM exits 0, also with calls in flight.
# Run: bash tests/integration/test-startup.sh (KB_BUILD=build dir, KBT_KEEP=1).
# shellcheck disable=SC2119 # kbt_setup/kbt_start take optional arguments
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/integration/lib.sh
. "$here/lib.sh"

# token_serial VAR_DIR [LABEL]: serial number of the token in VAR_DIR/token.
token_serial() {
	SOFTHSM2_CONF=$1/token/softhsm2.conf softhsm2-util --show-slots 2>/dev/null |
		awk -v want="${2:-keybroker}" '
		/^Slot [0-9]/ { serial = "" }
		/^ *Serial number:/ { serial = $3 }
		/^ *Label:/ { sub(/^ *Label: */, ""); sub(/ *$/, "")
		              if ($0 == want && serial != "") { print serial; exit } }'
}

# expect_refused DESC ERE CONF: keybrokerd --config CONF must exit non-zero
# within 20 s, with stderr matching ERE (case-insensitive); several EREs may
# be given as "ERE1" "ERE2"... after CONF. If it comes up instead, it is
# stopped and that is a failure.
expect_refused() {
	local desc=$1 conf=$2 err=$KBT_DIR/refused.err pid rc i re
	shift 2
	"$KB_BUILD/keybrokerd" --config "$conf" </dev/null >"$err" 2>&1 &
	pid=$!
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid"
		kbt_fail "$desc" "keybrokerd still running after 20 s; stopped it" \
			"log: $(tail -n 20 "$err")"
		return
	fi
	wait "$pid"
	rc=$?
	if ((rc == 0)); then
		kbt_fail "$desc" "exit status 0" "log: $(tail -n 20 "$err")"
		return
	fi
	if ((rc > 128)); then
		kbt_fail "$desc" "killed by signal $((rc - 128))" "log: $(tail -n 20 "$err")"
		return
	fi
	for re in "$@"; do
		if ! grep -Eqi -- "$re" "$err"; then
			kbt_fail "$desc" "exit $rc, but the output does not match /$re/" \
				"log: $(tail -n 20 "$err")"
			return
		fi
	done
	# Show the line that matched, without its time stamp.
	kbt_pass "$desc (exit $rc): $(grep -Ei -- "${1:-.}" "$err" | tail -n 1 |
		sed -E 's/^[0-9]{4}-[0-9T:.-]+Z //' | cut -c1-300)"
}

kbt_setup
bin=$KB_BUILD/keybrokerd

kbt_section "command line"
check "keybrokerd --version exits 0" "$bin" --version
check "keybrokerd --help exits 0" "$bin" --help
check "keybrokerd --check-config accepts the generated config" "$bin" --check-config --config "$KBT_CONF"
if "$bin" --no-such-option >/dev/null 2>&1; then
	kbt_fail "keybrokerd --no-such-option fails" "exit 0"
else
	kbt_pass "keybrokerd --no-such-option fails"
fi

kbt_section "first start binds the database to the token"
serial=$(token_serial "$KBT_DIR")
check "the test token has a serial number" test -n "$serial"
kbt_start || kbt_done
expect_ok kb_admin tenants create acme --name "Acme Corp"
expect_ok kb_admin envs create acme prod
"$KB_SRC/deploy/pki.sh" service acme prod >/dev/null
expect_ok kb_as service-acme-prod datakey get acme prod --json
dek=$(json 'd["dek"]' 2>&1)
kbt_stop

kbt_section "refusals to start"
# Same label, another serial: the trap where a fresh token looks like the old one.
"$KB_SRC/deploy/token.sh" "$KBT_DIR/t2" >/dev/null
serial2=$(token_serial "$KBT_DIR/t2")
check "a second token with the same label has another serial" test -n "$serial2" -a "$serial2" != "$serial"
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" \
	"pin_file=$KBT_DIR/t2/token/pin" "softhsm2_conf=$KBT_DIR/t2/token/softhsm2.conf" \
	>"$KBT_DIR/t2.conf"
expect_refused "another token with the same label is refused, naming both tokens" \
	"$KBT_DIR/t2.conf" "$serial" "$serial2" "keybroker"

# Another label.
KB_TOKEN_LABEL=other "$KB_SRC/deploy/token.sh" "$KBT_DIR/t3" >/dev/null
serial3=$(token_serial "$KBT_DIR/t3" other)
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" token_uri=pkcs11:token=other \
	"pin_file=$KBT_DIR/t3/token/pin" "softhsm2_conf=$KBT_DIR/t3/token/softhsm2.conf" \
	>"$KBT_DIR/t3.conf"
expect_refused "a token with another label is refused, naming both tokens" \
	"$KBT_DIR/t3.conf" "$serial3" "$serial" "'?keybroker'?" "'?other'?"

# No token with the configured label at all.
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" token_uri=pkcs11:token=absent \
	>"$KBT_DIR/absent.conf"
expect_refused "a token_uri that matches no token is refused" \
	"$KBT_DIR/absent.conf" "absent"

# A wrong PIN (same length, mode 0600).
(umask 077 && printf '%s' 00000000000000000000000000000000 >"$KBT_DIR/wrong-pin")
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "pin_file=$KBT_DIR/wrong-pin" \
	>"$KBT_DIR/wrong-pin.conf"
expect_refused "a wrong PIN is refused" "$KBT_DIR/wrong-pin.conf" "PIN"

# A PIN file others can read (the right PIN).
cp "$KBT_DIR/token/pin" "$KBT_DIR/open-pin"
chmod 0644 "$KBT_DIR/open-pin"
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "pin_file=$KBT_DIR/open-pin" \
	>"$KBT_DIR/open-pin.conf"
expect_refused "a PIN file readable by others is refused" "$KBT_DIR/open-pin.conf" \
	"open-pin|0600|mode"

# Configuration problems.
expect_refused "a missing config file is refused" "$KBT_DIR/no-such.conf" "no-such.conf"
{ cat "$KBT_CONF"; echo "frobnicate = 1"; } >"$KBT_DIR/unknown-key.conf"
expect_refused "an unknown config key is refused" "$KBT_DIR/unknown-key.conf" "frobnicate"
if "$bin" --check-config --config "$KBT_DIR/unknown-key.conf" >/dev/null 2>&1; then
	kbt_fail "--check-config rejects an unknown key" "exit 0"
else
	kbt_pass "--check-config rejects an unknown key"
fi
KB_LISTEN=$KB_ADDR "$KB_SRC/deploy/conf.sh" "$KBT_DIR" "tls_cert=$KBT_DIR/pki/nope.crt" \
	>"$KBT_DIR/no-cert.conf"
expect_refused "a missing server certificate is refused" "$KBT_DIR/no-cert.conf" "nope.crt"

kbt_section "the right token still opens the same data"
kbt_start || kbt_done
expect_ok kb_admin tenants show acme
expect_ok kb_as service-acme-prod datakey get acme prod --json
check_eq "the DEK is unchanged after the refused starts" "$(json 'd["dek"]' 2>&1)" "$dek"

kbt_section "SIGTERM with calls in flight"
pids=()
for ((n = 0; n < 16; n++)); do
	KB_CERT=$KBT_PKI/service-acme-prod.crt KB_KEY=$KBT_PKI/service-acme-prod.key \
		timeout -k 5 30 "$KB_BUILD/kbctl" datakey get acme prod \
		</dev/null >/dev/null 2>"$KBT_DIR/inflight.$n" &
	pids+=($!)
done
sleep 0.1
kbt_stop
bad=0
for ((n = 0; n < 16; n++)); do
	wait "${pids[n]}"
	rc=$?
	# Answered (0), or refused with a status (1); never hung (124) or crashed.
	if ((rc != 0 && rc != 1)); then
		bad=$((bad + 1))
		echo "     | call $n: exit $rc: $(head -c 300 "$KBT_DIR/inflight.$n")"
	fi
done
check "calls in flight at SIGTERM end with an answer or a status" test "$bad" = 0

kbt_done
