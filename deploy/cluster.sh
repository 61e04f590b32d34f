#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cluster.sh: several brokers on one PostgreSQL and one token, on this machine.
#
#   deploy/cluster.sh up N      start PostgreSQL and brokers 1..N (default 3)
#   deploy/cluster.sh down      stop every broker, then PostgreSQL
#   deploy/cluster.sh kill I    SIGKILL broker I
#   deploy/cluster.sh start I   start broker I again
#   deploy/cluster.sh status    which brokers run, and PostgreSQL
#
# Uses the development token and PKI of deploy/run.sh (var/token, var/pki;
# made here if absent) and, under var/cluster/ (or $KB_VAR/cluster): a
# PostgreSQL server of its own (initdb in pg/, listening on a unix socket in
# pg/ and on 127.0.0.1:$KB_PG_PORT only, default 7432), and for broker I
# its configuration brokerI.conf, its log brokerI.log and its pid file:
# gRPC on 127.0.0.1:(7442+I), metrics on 127.0.0.1:(7542+I). "up" returns
# once every broker answers SERVING and prints the kbctl lines to try.
# PostgreSQL does not run as root: as root, the server runs as the user
# "postgres" (Debian's package makes it), which must be able to reach var/.
set -euo pipefail

usage() { awk 'NR > 2 && !/^#/ { exit } NR > 2 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export KB_VAR=${KB_VAR:-var}
build=${KB_BUILD_DIR:-build}
pg_port=${KB_PG_PORT:-7432}
pgbin=$(pg_config --bindir 2>/dev/null || true)
[[ -x $pgbin/initdb ]] || pgbin=/usr/lib/postgresql/15/bin

die() { echo "cluster: $*" >&2; exit 1; }

# As root, PostgreSQL's commands run as the user "postgres".
as_pg() {
	if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

paths() {
	mkdir -p "$KB_VAR/cluster"
	var=$(cd "$KB_VAR" && pwd)
	cl=$var/cluster
	pgdata=$cl/pg
	url="postgresql://postgres@/keybroker?host=$pgdata&port=$pg_port"
}

pg_up() {
	[[ -x $pgbin/initdb ]] || die "PostgreSQL's server is not installed: apt-get install postgresql (deploy/deps.sh does)"
	if ((EUID == 0)); then
		id postgres >/dev/null 2>&1 || die "no user 'postgres' to run PostgreSQL as (apt-get install postgresql makes it)"
		chown postgres "$cl"
		runuser -u postgres -- test -x "$cl" ||
			die "the user 'postgres' cannot reach $cl: make its parent directories searchable (chmod o+x) or set KB_VAR to a directory it can reach"
	fi
	if [[ ! -f $pgdata/PG_VERSION ]]; then
		as_pg "$pgbin/initdb" -D "$pgdata" -A trust -U postgres -E UTF8 --no-instructions >"$cl/initdb.log" 2>&1 ||
			die "initdb failed; see $cl/initdb.log"
		cat >>"$pgdata/postgresql.conf" <<CONF
# deploy/cluster.sh: a unix socket here and loopback only.
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pgdata'
max_connections = 200
fsync = on
synchronous_commit = on
CONF
	fi
	if ! as_pg "$pgbin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
		as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$cl/postgresql.log" -w -t 60 start >/dev/null ||
			die "PostgreSQL did not start; see $cl/postgresql.log"
	fi
	if ! as_pg "$pgbin/psql" -h "$pgdata" -p "$pg_port" -U postgres -Atc \
		"SELECT 1 FROM pg_database WHERE datname = 'keybroker'" postgres | grep -q 1; then
		as_pg "$pgbin/createdb" -h "$pgdata" -p "$pg_port" -U postgres keybroker
	fi
	echo "cluster: PostgreSQL on $pgdata (socket) and 127.0.0.1:$pg_port"
}

conf_of() { printf '%s/broker%s.conf' "$cl" "$1"; }
pid_of() { cat "$cl/broker$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

broker_start() {
	local i=$1 conf
	conf=$(conf_of "$i")
	if running "$i"; then echo "cluster: broker $i already runs (pid $(pid_of "$i"))"; return 0; fi
	# Written at each start from deploy/keybroker.conf.example: edit that
	# (or deploy/conf.sh's settings), not this file.
	KB_LISTEN=127.0.0.1:$((7442 + i)) deploy/conf.sh "$var" \
		"database=$url" "metrics_listen=127.0.0.1:$((7542 + i))" >"$conf.tmp"
	mv -f "$conf.tmp" "$conf"
	"$build/keybrokerd" --config "$conf" >>"$cl/broker$i.log" 2>&1 &
	echo $! >"$cl/broker$i.pid"
}

# Wait until broker I answers SERVING (or has died).
broker_wait() {
	local i=$1 t
	for ((t = 0; t < 300; t++)); do
		if KB_ADDR=127.0.0.1:$((7442 + i)) kbctl_dev health 2>/dev/null | grep -q SERVING; then
			echo "cluster: broker $i SERVING on 127.0.0.1:$((7442 + i)) (pid $(pid_of "$i"), log $cl/broker$i.log)"
			return 0
		fi
		running "$i" || { tail -5 "$cl/broker$i.log" >&2; die "broker $i exited; see $cl/broker$i.log"; }
		sleep 0.2
	done
	die "broker $i did not answer SERVING within 60 s; see $cl/broker$i.log"
}

kbctl_dev() {
	KB_CA=$var/pki/ca.crt KB_CERT=$var/pki/admin.crt KB_KEY=$var/pki/admin.key "$build/kbctl" "$@"
}

num() { [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || die "not a broker number: ${1:-}"; }

cmd=${1:-}
case $cmd in
up)
	n=${2:-3}
	num "$n"
	deploy/deps.sh
	deploy/build.sh
	paths
	deploy/token.sh "$var" >/dev/null
	deploy/pki.sh --dir "$var/pki" init >/dev/null
	pg_up
	echo "$n" >"$cl/brokers"
	# The first broker alone first: on a new database it makes the
	# platform key and binds the database to the token.
	broker_start 1
	broker_wait 1
	for ((i = 2; i <= n; i++)); do broker_start "$i"; done
	for ((i = 2; i <= n; i++)); do broker_wait "$i"; done
	addrs=$(for ((i = 1; i <= n; i++)); do printf '127.0.0.1:%d,' $((7442 + i)); done)
	addrs=${addrs%,}
	p=$var/pki
	[[ $p == "$root"/* ]] && p=${p#"$root"/}
	cat <<TRY

In another shell, from $root (kbctl fails over between the addresses):

  export KB_ADDR=$addrs KB_CA=$p/ca.crt KB_CERT=$p/admin.crt KB_KEY=$p/admin.key
  $build/kbctl health
  $build/kbctl tenants create acme --name "Acme Corp"
  $build/kbctl envs create acme prod
  deploy/cluster.sh kill 1; $build/kbctl envs list acme
  deploy/cluster.sh start 1
  deploy/cluster.sh down
TRY
	;;
down)
	paths
	for f in "$cl"/broker*.pid; do
		[[ -e $f ]] || continue
		p=$(cat "$f")
		kill -TERM "$p" 2>/dev/null || true
	done
	for f in "$cl"/broker*.pid; do
		[[ -e $f ]] || continue
		p=$(cat "$f")
		for ((t = 0; t < 100; t++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		rm -f "$f"
	done
	if [[ -f $pgdata/PG_VERSION ]]; then
		as_pg "$pgbin/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
	fi
	echo "cluster: down (data kept in $cl; delete it to start over)"
	;;
kill)
	num "${2:-}"
	paths
	p=$(pid_of "$2")
	[[ -n $p ]] && kill -KILL "$p" 2>/dev/null || die "broker $2 is not running"
	rm -f "$cl/broker$2.pid"
	echo "cluster: broker $2 killed (SIGKILL, pid $p)"
	;;
start)
	num "${2:-}"
	paths
	[[ -f $pgdata/PG_VERSION ]] || die "no cluster here: deploy/cluster.sh up N first"
	pg_up >/dev/null
	broker_start "$2"
	broker_wait "$2"
	;;
status)
	paths
	if as_pg "$pgbin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then echo "PostgreSQL: running"; else echo "PostgreSQL: stopped"; fi
	for f in "$cl"/broker*.conf; do
		[[ -e $f ]] || continue
		i=${f##*/broker}; i=${i%.conf}
		if running "$i"; then echo "broker $i: running (pid $(pid_of "$i"), 127.0.0.1:$((7442 + i)))"; else echo "broker $i: stopped"; fi
	done
	;;
-h|--help) usage ;;
*) usage >&2; exit 2 ;;
esac
