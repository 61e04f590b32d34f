#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# kbt-pg.sh: a throwaway PostgreSQL 15 server for tests, in a directory of
# its own (unix socket only, trust authentication, fsync on).
#   kbt-pg.sh start DIR   create and start it, create database keybroker,
#                         print its libpq URI
#   kbt-pg.sh url DIR     print the URI again
#   kbt-pg.sh stop DIR    stop it (fast shutdown)
# As root, the server runs as the user postgres (else nobody) and DIR is
# chowned to it: PostgreSQL refuses to run as root.
set -euo pipefail

die() {
	echo "kbt-pg.sh: $*" >&2
	exit 1
}

cmd=${1:-}
dir=${2:-}
[[ -n $cmd && -n $dir ]] || die "usage: kbt-pg.sh start|stop|url DIR"
[[ $dir == /* ]] || dir=$PWD/$dir
# The URI carries DIR unescaped, and a socket path is at most 107 bytes.
[[ $dir =~ ^[A-Za-z0-9/._-]+$ ]] || die "DIR $dir: use only letters, digits and /._-"
((${#dir} < 90)) || die "DIR $dir is too long for a unix socket path: use a shorter one (mktemp -d)"

bin=
for d in /usr/lib/postgresql/15/bin "$(pg_config --bindir 2>/dev/null || true)"; do
	if [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]]; then
		bin=$d
		break
	fi
done
[[ -n $bin ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/15/bin or pg_config --bindir: install the package postgresql (apt-get install postgresql)"

# Run as the server's user.
as_user() {
	if ((EUID == 0)); then
		runuser -u "$user" -- "$@"
	else
		"$@"
	fi
}
user=$(id -un)
if ((EUID == 0)); then
	if id postgres >/dev/null 2>&1; then user=postgres; else user=nobody; fi
fi

url() {
	echo "postgresql:///keybroker?host=$dir&user=postgres"
}

case $cmd in
start)
	mkdir -p "$dir"
	[[ ! -e $dir/data ]] || die "$dir/data exists: a server was made there already (kbt-pg.sh stop $dir, or use a new DIR)"
	((EUID != 0)) || chown "$user" "$dir"
	cd "$dir" # the server's user may not be able to enter ours
	as_user "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-locale \
		-E UTF8 >"$dir/initdb.log" 2>&1 \
		|| die "initdb failed (as $user): $(tail -n 5 "$dir/initdb.log")"
	cat >>"$dir/data/postgresql.conf" <<-EOF
		listen_addresses = ''
		unix_socket_directories = '$dir'
		fsync = on
	EOF
	as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
		start >/dev/null \
		|| die "the server did not start: $(tail -n 5 "$dir/server.log")"
	"$bin/createdb" -h "$dir" -U postgres keybroker \
		|| die "createdb keybroker failed (see $dir/server.log)"
	url
	;;
stop)
	[[ -d $dir/data ]] || die "no server in $dir"
	cd "$dir"
	as_user "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
	;;
url)
	[[ -d $dir/data ]] || die "no server in $dir (kbt-pg.sh start $dir)"
	url
	;;
*) die "unknown command $cmd: use start, stop or url" ;;
esac
