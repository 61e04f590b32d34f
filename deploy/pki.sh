#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# pki.sh: a development PKI for keybroker (EC P-256 keys, SHA-256), openssl CLI.
#
# usage: deploy/pki.sh [OPTIONS] COMMAND [ARGS...]
#
# Commands (files go to the PKI directory, default ${KB_VAR:-var}/pki):
#   init                      CA (ca.crt/ca.key, 10 years), server.crt/.key
#                             (SAN IP:127.0.0.1, IP:::1, DNS:localhost), admin.crt/.key
#                             (/OU=admin/CN=admin, SAN URI kb://platform), auditor.crt/.key
#                             (/OU=auditor/CN=auditor), and the CA's CRL crl.pem (empty).
#                             Idempotent: keeps an existing CA, certificates and CRL; an
#                             admin.crt from before kb://platform is reissued.
#   admin NAME [TENANT...]    admin-NAME.crt/.key, /OU=admin/CN=NAME, one SAN URI
#                             kb://tenant/TENANT per tenant (none: kb://platform, every
#                             tenant)
#   service TENANT ENV [NAME] service-TENANT-ENV.crt/.key, /OU=service/CN=NAME
#                             (default TENANT-ENV), SAN URI kb://env/TENANT/ENV
#   auditor NAME              auditor-NAME.crt/.key, /OU=auditor/CN=NAME
#   server [NAME]             (re)issue server.crt/.key (or server-NAME.crt/.key)
#   revoke NAME|FILE.crt      revoke a certificate (NAME: its base name in the PKI
#                             directory, e.g. service-acme-prod) and rewrite crl.pem;
#                             a running broker reads it within a second
#   crl                       rewrite crl.pem (e.g. before its nextUpdate)
#
# Options:
#   --dir DIR         PKI directory (default ${KB_VAR:-var}/pki)
#   --ca-dir DIR      issue from the CA in DIR (DIR/ca.crt, DIR/ca.key) instead of
#                     the PKI directory's own: "a certificate from another CA"
#   --days N          validity of the certificate in days (default 825); N <= 0
#                     makes a certificate that expired |N| days ago (valid for
#                     one day before that)
#   --not-before DATE --not-after DATE
#                     explicit validity (anything `date -d` reads, e.g.
#                     "2020-01-01", "2 days ago"; UTC)
#   --crl-days N      the CRL's nextUpdate in N days (default 365)
#   --crl-next-update DATE
#                     the CRL's nextUpdate at DATE (a past date makes a stale CRL)
#   -h, --help        this text
#
# Keys are mode 0600. Leaf certificates are (re)issued each time they are asked
# for; init never replaces anything (but an admin.crt without kb://platform).
# The CA's revocation database is ca-index.txt and ca-crlnumber beside ca.key.
set -euo pipefail
umask 077

usage() { awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
die() { echo "pki: $*" >&2; exit 1; }
die_usage() { echo "pki: $*" >&2; echo "try: deploy/pki.sh --help" >&2; exit 2; }

pki_dir=
ca_dir=
days=825
not_before=
not_after=
crl_days=365
crl_next=
while (($#)); do
	case $1 in
	--dir) (($# >= 2)) || die_usage "$1 needs a value"; pki_dir=$2; shift 2 ;;
	--ca-dir) (($# >= 2)) || die_usage "$1 needs a value"; ca_dir=$2; shift 2 ;;
	--days) (($# >= 2)) || die_usage "$1 needs a value"; days=$2; shift 2
		[[ $days =~ ^-?[0-9]+$ ]] || die_usage "--days: not an integer: $days" ;;
	--not-before) (($# >= 2)) || die_usage "$1 needs a value"; not_before=$2; shift 2 ;;
	--not-after) (($# >= 2)) || die_usage "$1 needs a value"; not_after=$2; shift 2 ;;
	--crl-days) (($# >= 2)) || die_usage "$1 needs a value"; crl_days=$2; shift 2
		[[ $crl_days =~ ^[0-9]+$ ]] && ((crl_days > 0)) || die_usage "--crl-days: not a positive integer: $crl_days" ;;
	--crl-next-update) (($# >= 2)) || die_usage "$1 needs a value"; crl_next=$2; shift 2 ;;
	-h|--help) usage; exit 0 ;;
	--) shift; break ;;
	-*) die_usage "unknown option: $1" ;;
	*) break ;;
	esac
done
(($#)) || die_usage "no command"
cmd=$1
shift

pki_dir=${pki_dir:-${KB_VAR:-var}/pki}
mkdir -p "$pki_dir"
pki_dir=$(cd "$pki_dir" && pwd)
ca_dir=${ca_dir:-$pki_dir}
[[ $ca_dir == "$pki_dir" || -d $ca_dir ]] || die "--ca-dir: no such directory: $ca_dir"

work=$(mktemp -d "${TMPDIR:-/tmp}/kb-pki.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Names end up in file names and certificate subjects: keep them plain.
check_name() {
	[[ $2 =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "$1 must be [A-Za-z0-9._-]+, got '$2'"
}

# UTC time in the form openssl ca wants (YYYYMMDDHHMMSSZ); $1 is a `date -d` string.
asn1_time() {
	date -u -d "$1" +%Y%m%d%H%M%SZ 2>/dev/null || die "cannot read the date '$1'"
}

new_key() { # new_key FILE
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null
	chmod 0600 "$1"
}

# One openssl configuration for both the CA (req -x509) and leaves (ca).
# $1: directory of the CA to issue from; $2: extensions for the leaf.
write_config() {
	local cadir=$1 ext=$2
	: >"$work/index.txt"
	openssl rand -hex 16 >"$work/serial"
	cat >"$work/openssl.cnf" <<CNF
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ ca ]
default_ca = kb_ca
[ kb_ca ]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
certificate = $cadir/ca.crt
private_key = $cadir/ca.key
default_md = sha256
policy = kb_policy
unique_subject = no
copy_extensions = none
email_in_dn = no
preserve = yes
[ kb_policy ]
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[ leaf ]
basicConstraints = critical, CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
$ext
CNF
}

make_ca() { # make_ca DIR
	local dir=$1
	if [[ -f $dir/ca.crt ]]; then
		[[ -f $dir/ca.key ]] || die "$dir/ca.crt exists but $dir/ca.key does not"
		echo "pki: keeping CA $dir/ca.crt"
		return 0
	fi
	write_config "$dir" ""
	new_key "$work/ca.key"
	# A random suffix so that two development CAs never share a name.
	openssl req -new -x509 -config "$work/openssl.cnf" -extensions v3_ca \
		-key "$work/ca.key" -sha256 -days 3650 -set_serial "0x$(openssl rand -hex 16)" \
		-subj "/O=keybroker dev/CN=keybroker dev CA $(openssl rand -hex 4)" \
		-out "$work/ca.crt"
	mv -f "$work/ca.key" "$dir/ca.key"
	chmod 0644 "$work/ca.crt"
	mv -f "$work/ca.crt" "$dir/ca.crt"
	echo "pki: created CA $dir/ca.crt"
}

# issue BASENAME SUBJECT EXTENSIONS: write $pki_dir/BASENAME.crt and .key.
issue() {
	local base=$1 subj=$2 ext=$3 validity=()
	[[ -f $ca_dir/ca.crt && -f $ca_dir/ca.key ]] ||
		die "no CA in $ca_dir (run: deploy/pki.sh init)"
	if [[ -n $not_before || -n $not_after ]]; then
		validity=(-startdate "$(asn1_time "${not_before:-now}")"
			-enddate "$(asn1_time "${not_after:-now + $days days}")")
	elif ((days <= 0)); then
		validity=(-startdate "$(asn1_time "now - $((1 - days)) days")"
			-enddate "$(asn1_time "now - $((-days)) days")")
	else
		validity=(-days "$days")
	fi
	write_config "$ca_dir" "$ext"
	new_key "$work/$base.key"
	openssl req -new -config "$work/openssl.cnf" -key "$work/$base.key" \
		-subj "$subj" -out "$work/$base.csr"
	openssl ca -batch -config "$work/openssl.cnf" -extensions leaf -notext \
		-preserveDN "${validity[@]}" -in "$work/$base.csr" \
		-out "$work/$base.crt" 2>"$work/ca.log" || { cat "$work/ca.log" >&2; die "openssl ca failed for $base"; }
	chmod 0644 "$work/$base.crt"
	mv -f "$work/$base.key" "$pki_dir/$base.key"
	mv -f "$work/$base.crt" "$pki_dir/$base.crt"
	echo "pki: wrote $pki_dir/$base.crt ($subj)"
}

client_ext() { # client_ext [SAN...]
	local ext=$'keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth'
	if (($#)); then
		local IFS=,
		ext+=$'\n'"subjectAltName = $*"
	fi
	printf '%s' "$ext"
}

# The CA's revocation database lives beside its key (kept across runs, made
# on first use, so older PKI directories work too); crl.pem beside ca.crt.
crl_config() {
	[[ -f $ca_dir/ca.crt && -f $ca_dir/ca.key ]] ||
		die "no CA in $ca_dir (run: deploy/pki.sh init)"
	[[ -f $ca_dir/ca-index.txt ]] || : >"$ca_dir/ca-index.txt"
	[[ -f $ca_dir/ca-crlnumber ]] || echo 01 >"$ca_dir/ca-crlnumber"
	cat >"$work/crl.cnf" <<CNF
[ ca ]
default_ca = kb_crl
[ kb_crl ]
database = $ca_dir/ca-index.txt
crlnumber = $ca_dir/ca-crlnumber
certificate = $ca_dir/ca.crt
private_key = $ca_dir/ca.key
default_md = sha256
default_crl_days = $crl_days
unique_subject = no
crl_extensions = crl_ext
[ crl_ext ]
authorityKeyIdentifier = keyid:always
CNF
}

gen_crl() {
	local next=()
	crl_config
	[[ -z $crl_next ]] || next=(-crl_nextupdate "$(asn1_time "$crl_next")")
	openssl ca -batch -config "$work/crl.cnf" -gencrl "${next[@]}" \
		-out "$work/crl.pem" 2>"$work/crl.log" || { cat "$work/crl.log" >&2; die "openssl ca -gencrl failed"; }
	chmod 0644 "$work/crl.pem"
	mv -f "$work/crl.pem" "$ca_dir/crl.pem"     # a rename: a reader never sees half a CRL
	echo "pki: wrote $ca_dir/crl.pem ($(grep -c '^V' "$ca_dir/ca-index.txt" 2>/dev/null || true) valid, $(grep -c '^R' "$ca_dir/ca-index.txt" 2>/dev/null || true) revoked in ca-index.txt)"
}

server_ext=$'keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost'

case $cmd in
init)
	(($# == 0)) || die_usage "init takes no arguments"
	[[ $ca_dir == "$pki_dir" ]] || die_usage "init makes its own CA: no --ca-dir"
	make_ca "$pki_dir"
	[[ -f $pki_dir/server.crt ]] || issue server "/OU=server/CN=keybroker" "$server_ext"
	# Since issue 11 an admin with no kb:// scope is refused: reissue an
	# older admin.crt as platform-wide.
	if [[ ! -f $pki_dir/admin.crt ]] ||
		! openssl x509 -in "$pki_dir/admin.crt" -noout -ext subjectAltName 2>/dev/null |
		grep -q 'URI:kb://'; then
		issue admin "/OU=admin/CN=admin" "$(client_ext URI:kb://platform)"
	fi
	[[ -f $pki_dir/auditor.crt ]] || issue auditor "/OU=auditor/CN=auditor" "$(client_ext)"
	[[ -f $pki_dir/crl.pem ]] || gen_crl
	;;
admin)
	(($# >= 1)) || die_usage "usage: admin NAME [TENANT...]"
	name=$1
	shift
	check_name NAME "$name"
	sans=()
	for t in "$@"; do
		check_name TENANT "$t"
		sans+=("URI:kb://tenant/$t")
	done
	((${#sans[@]})) || sans=(URI:kb://platform)
	issue "admin-$name" "/OU=admin/CN=$name" "$(client_ext "${sans[@]}")"
	;;
service)
	(($# == 2 || $# == 3)) || die_usage "usage: service TENANT ENV [NAME]"
	check_name TENANT "$1"
	check_name ENV "$2"
	name=${3:-$1-$2}
	check_name NAME "$name"
	issue "service-$1-$2" "/OU=service/CN=$name" "$(client_ext "URI:kb://env/$1/$2")"
	;;
auditor)
	(($# == 1)) || die_usage "usage: auditor NAME"
	check_name NAME "$1"
	issue "auditor-$1" "/OU=auditor/CN=$1" "$(client_ext)"
	;;
server)
	(($# <= 1)) || die_usage "usage: server [NAME]"
	base=server
	if (($#)); then
		check_name NAME "$1"
		base=server-$1
	fi
	issue "$base" "/OU=server/CN=keybroker" "$server_ext"
	;;
revoke)
	(($# == 1)) || die_usage "usage: revoke NAME|FILE.crt"
	crt=$1
	if [[ $crt != */* && $crt != *.crt ]]; then
		check_name NAME "$crt"
		crt=$pki_dir/$crt.crt
	fi
	[[ -f $crt ]] || die "no certificate $crt"
	serial=$(openssl x509 -in "$crt" -noout -serial) || die "cannot read $crt"
	crl_config
	if grep -q "^R.*	${serial#serial=}	" "$ca_dir/ca-index.txt" 2>/dev/null; then
		echo "pki: $crt (serial ${serial#serial=}) was already revoked"
	else
		openssl ca -batch -config "$work/crl.cnf" -revoke "$crt" \
			-crl_reason keyCompromise 2>"$work/revoke.log" ||
			{ cat "$work/revoke.log" >&2; die "openssl ca -revoke failed for $crt"; }
		echo "pki: revoked $crt (serial ${serial#serial=})"
	fi
	gen_crl
	;;
crl)
	(($# == 0)) || die_usage "crl takes no arguments"
	gen_crl
	;;
*)
	die_usage "unknown command: $cmd"
	;;
esac
