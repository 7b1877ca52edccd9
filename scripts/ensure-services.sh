#!/usr/bin/env bash
# Make sure the RabbitMQ and PostgreSQL that civicline needs are reachable: start them when they
# are installed but stopped, install them (as root, with apt-get) or run them in Docker when not.
# `make run` and `make test` call this before anything else; it is idempotent and prints one
# line per service when all is well.
#
# usage: scripts/ensure-services.sh [--dry-run]
#   --dry-run   look (ports, clusters, containers), but only print what would be started,
#               installed or changed
#
# environment (defaults in brackets):
#   CIVICLINE_AMQP_HOST [127.0.0.1]  CIVICLINE_AMQP_PORT [5672]   the RabbitMQ AMQP listener
#   PGHOST [127.0.0.1]               PGPORT [5432]                the PostgreSQL server
#   CIVICLINE_SERVICES_TIMEOUT [60]  seconds to wait for a service this script started
# Only a service on this machine (loopback address, or a PGHOST socket directory) is started.
set -euo pipefail

readonly RABBITMQ_MIN_MAJOR=3 RABBITMQ_MIN_MINOR=10
readonly RABBITMQ_CONTAINER=civicline-rabbitmq RABBITMQ_IMAGE=rabbitmq:3.13-management
readonly POSTGRES_CONTAINER=civicline-postgres POSTGRES_IMAGE=postgres:16
readonly HBA_MARKER="# added by civicline scripts/ensure-services.sh for local development"
readonly HBA_RULE="host all all 127.0.0.1/32 trust"

amqp_host=${CIVICLINE_AMQP_HOST:-127.0.0.1}
amqp_port=${CIVICLINE_AMQP_PORT:-5672}
pg_host=${PGHOST:-127.0.0.1}
pg_port=${PGPORT:-5432}
wait_seconds=${CIVICLINE_SERVICES_TIMEOUT:-60}
dry_run=false

# Debian keeps the server tools (rabbitmq-server, rabbitmqctl) in sbin, which is not on a
# non-root user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '%s\n' "$*" >&2; }
die() {
	printf 'ensure-services: %s\n' "$*" >&2
	exit 1
}

# Run a command that changes the machine, or only show it under --dry-run. Its output goes to
# stderr: stdout carries only the one-line verdicts.
run() {
	if $dry_run; then
		say "  would run: $*"
	else
		say "  + $*"
		"$@" >&2
	fi
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

for arg in "$@"; do
	case $arg in
	--dry-run) dry_run=true ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		say "ensure-services: unknown argument '$arg'"
		usage >&2
		exit 2
		;;
	esac
done

for number in "$amqp_port" "$pg_port" "$wait_seconds"; do
	[[ $number =~ ^[0-9]+$ ]] || die "'$number' is not a number (check CIVICLINE_AMQP_PORT, PGPORT, CIVICLINE_SERVICES_TIMEOUT)"
done

# --- helpers ----------------------------------------------------------------------------------

port_open() { # host port
	# shellcheck disable=SC2016 # expanded by the inner bash, from its own arguments
	timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

is_local() { # host
	case $1 in
	127.* | localhost | ::1 | /*) return 0 ;;
	*) return 1 ;;
	esac
}

wait_until() { # seconds command...
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 1
	done
}

is_root() { [[ $(id -u) -eq 0 ]]; }

apt_updated=false
apt_install() { # package
	if ! $apt_updated; then
		run apt-get update -q || die "apt-get update failed"
		apt_updated=true
	fi
	run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" ||
		die "apt-get install $1 failed"
}

docker_usable() {
	command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

# Start the named container, creating it when it does not exist (a stopped one is reused, so
# its data survives).
docker_up() { # name docker-run-arguments...
	local name=$1 state
	shift
	if state=$(docker container inspect --format '{{.State.Status}}' "$name" 2>/dev/null); then
		if [[ $state != running ]]; then
			run docker start "$name" || die "docker start $name failed"
		fi
	else
		run docker run -d --name "$name" "$@" || die "docker run $name failed"
	fi
}

# --- RabbitMQ ---------------------------------------------------------------------------------

# The version the server on host:port announces in its AMQP Connection.Start frame. Unlike
# `rabbitmqctl version` (the CLI's own version) or `rabbitmq-diagnostics server_version` (the
# default local node, wherever it listens), this names the server that really answers on the
# configured port: a container, another node, or not RabbitMQ at all. The broker logs the early
# close as "client unexpectedly closed TCP connection"; that line is this check.
rabbitmq_version() { # host port
	local greeting
	greeting=$(
		# shellcheck disable=SC2016 # expanded by the inner bash, from its own arguments
		timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "AMQP\0\0\11\1" >&3 &&
			dd bs=8192 count=1 status=none <&3' _ "$1" "$2" 2>/dev/null |
			LC_ALL=C tr -c '[:print:]' '.'
	) || true
	# Field tables are name, type byte 'S', a 4-byte length, then the text.
	[[ $greeting =~ productS....RabbitMQ ]] || return 1
	[[ $greeting =~ versionS....([0-9]+\.[0-9]+(\.[0-9]+)*) ]] || return 1
	printf '%s\n' "${BASH_REMATCH[1]}"
}

rabbitmq_node_running() {
	command -v rabbitmq-diagnostics >/dev/null &&
		timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

# Start RabbitMQ on this machine; sets started_how to local or docker.
started_how=""
start_rabbitmq() {
	local where=$1
	if command -v rabbitmq-server >/dev/null; then
		if rabbitmq_node_running; then
			die "rabbitmq: a local RabbitMQ node is running, but nothing answers on $where;" \
				"set CIVICLINE_AMQP_PORT to a port it listens on (rabbitmq-diagnostics listeners)"
		fi
		say "rabbitmq: nothing answers on $where; starting the installed server"
		run rabbitmq-server -detached ||
			die "rabbitmq: 'rabbitmq-server -detached' failed (as root? see /var/log/rabbitmq/)"
		started_how=local
	elif is_root && command -v apt-get >/dev/null; then
		say "rabbitmq: not installed; installing Debian's rabbitmq-server"
		apt_install rabbitmq-server
		# The package's own scripts may already have started the node.
		if $dry_run || ! rabbitmq_node_running; then
			run rabbitmq-server -detached || die "rabbitmq: 'rabbitmq-server -detached' failed"
		fi
		started_how=local
	elif docker_usable; then
		say "rabbitmq: not installed; running it in Docker as $RABBITMQ_CONTAINER"
		docker_up "$RABBITMQ_CONTAINER" -p "127.0.0.1:$amqp_port:5672" "$RABBITMQ_IMAGE"
		started_how=docker
	else
		die "rabbitmq: nothing answers on $where and there is no way to start it here." \
			"Install RabbitMQ $RABBITMQ_MIN_MAJOR.$RABBITMQ_MIN_MINOR or newer" \
			"(Debian/Ubuntu: apt-get install rabbitmq-server; or run this script as root to do it)," \
			"or Docker, or point CIVICLINE_AMQP_HOST and CIVICLINE_AMQP_PORT at a running broker."
	fi
}

ensure_rabbitmq() {
	local where="$amqp_host:$amqp_port" version major minor
	if ! port_open "$amqp_host" "$amqp_port"; then
		is_local "$amqp_host" ||
			die "rabbitmq: nothing answers on $where, which is not on this machine;" \
				"start it there or set CIVICLINE_AMQP_HOST and CIVICLINE_AMQP_PORT"
		start_rabbitmq "$where"
		if $dry_run; then
			say "  would wait up to ${wait_seconds}s for RabbitMQ to answer on $where"
			echo "rabbitmq: would be started ($where)"
			return
		fi
		# A published Docker port accepts connections before the broker inside listens, so wait
		# for the broker's own AMQP greeting rather than an open port.
		wait_until "$wait_seconds" rabbitmq_version "$amqp_host" "$amqp_port" >/dev/null ||
			die "rabbitmq: started, but no AMQP server answered on $where within ${wait_seconds}s;" \
				"see $([[ $started_how == docker ]] && echo "docker logs $RABBITMQ_CONTAINER" || echo /var/log/rabbitmq/)"
		if [[ $started_how == local ]] && command -v rabbitmqctl >/dev/null; then
			timeout "$wait_seconds" rabbitmqctl -q await_startup >/dev/null ||
				die "rabbitmq: the node did not finish starting within ${wait_seconds}s; see /var/log/rabbitmq/"
		fi
	fi
	# A second try covers a greeting split across two reads.
	version=$(rabbitmq_version "$amqp_host" "$amqp_port") ||
		version=$(rabbitmq_version "$amqp_host" "$amqp_port") ||
		die "rabbitmq: something answers on $where, but it is not a RabbitMQ server" \
			"(no AMQP 0-9-1 greeting naming RabbitMQ and its version)"
	IFS=. read -r major minor _ <<<"$version.0"
	minor=${minor%%[!0-9]*}
	# At-least-once dead-lettering from quorum queues (our poison-message path) came in 3.10;
	# an older broker would not honour the queue arguments we declare.
	if ((major < RABBITMQ_MIN_MAJOR || (major == RABBITMQ_MIN_MAJOR && minor < RABBITMQ_MIN_MINOR))); then
		die "rabbitmq: $where runs RabbitMQ $version; civicline needs" \
			"$RABBITMQ_MIN_MAJOR.$RABBITMQ_MIN_MINOR or newer (quorum queues with at-least-once dead-lettering)"
	fi
	echo "rabbitmq: ok ($version, $where)"
}

# --- PostgreSQL -------------------------------------------------------------------------------

pg_reachable() {
	if [[ $pg_host == /* ]]; then
		[[ -S $pg_host/.s.PGSQL.$pg_port ]]
	else
		port_open "$pg_host" "$pg_port"
	fi
}

pg_accepting() {
	if command -v pg_isready >/dev/null; then
		pg_isready -q -h "$pg_host" -p "$pg_port" -t 2
	elif [[ $1 == docker ]]; then
		docker exec "$POSTGRES_CONTAINER" pg_isready -q -U postgres
	else
		pg_reachable
	fi
}

# "<version> <cluster> <status>" of the Debian cluster configured for $pg_port.
pg_cluster_on_port() {
	command -v pg_lsclusters >/dev/null || return 1
	pg_lsclusters --no-header 2>/dev/null |
		awk -v port="$pg_port" '$3 == port { print $1, $2, $4; found = 1; exit } END { exit !found }'
}

pg_cluster_ports() {
	command -v pg_lsclusters >/dev/null || return 0
	pg_lsclusters --no-header 2>/dev/null | awk '{ printf "%s%s/%s on %s", sep, $1, $2, $3; sep = ", " }'
}

pg_login_without_password() {
	env -u PGPASSWORD PGPASSFILE=/dev/null \
		psql -X -w -q -A -t -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c 'select 1' \
		>/dev/null 2>&1
}

# Our tests and `make run` connect as postgres over 127.0.0.1 with no password. Debian's default
# pg_hba.conf asks for one there, and its first matching line wins, so the rule goes on top.
ensure_trust_login() { # version cluster
	local hba="/etc/postgresql/$1/$2/pg_hba.conf" original
	[[ $pg_host == /* ]] && return 0
	if ! command -v psql >/dev/null; then
		say "postgres: psql not found, so password-less login over 127.0.0.1 was not checked"
		return 0
	fi
	pg_login_without_password && return 0
	[[ -f $hba && -w $hba ]] ||
		die "postgres: user postgres cannot log in over 127.0.0.1 without a password and $hba" \
			"is not writable here; add '$HBA_RULE' at its top and reload the cluster"
	if grep -qxF "$HBA_RULE" "$hba"; then
		die "postgres: $hba already has '$HBA_RULE', yet user postgres cannot log in over 127.0.0.1"
	fi
	if $dry_run; then
		say "  would add '$HBA_RULE' at the top of $hba and reload cluster $1/$2"
		return 0
	fi
	original=$(<"$hba")
	# Rewrite in place, so the file keeps its owner and mode.
	printf '%s\n%s\n%s\n' "$HBA_MARKER" "$HBA_RULE" "$original" >"$hba"
	say "postgres: changed $hba: added '$HBA_RULE' at the top (password-less local login as postgres)"
	run pg_ctlcluster --skip-systemctl-redirect "$1" "$2" reload ||
		die "postgres: reloading cluster $1/$2 failed"
	wait_until 10 pg_login_without_password ||
		die "postgres: user postgres still cannot log in over 127.0.0.1 after reloading $1/$2"
}

start_cluster() { # version cluster status
	if [[ $3 == online* ]]; then
		die "postgres: cluster $1/$2 is online but does not answer on $pg_host:$pg_port;" \
			"check listen_addresses in /etc/postgresql/$1/$2/postgresql.conf"
	fi
	say "postgres: nothing answers on $pg_host:$pg_port; starting cluster $1/$2"
	run pg_ctlcluster --skip-systemctl-redirect "$1" "$2" start ||
		die "postgres: 'pg_ctlcluster $1 $2 start' failed (as root? see /var/log/postgresql/)"
}

# Start PostgreSQL on this machine; sets started_how to "local <version> <cluster>", "local"
# (dry run of an install) or docker.
start_postgres() {
	local cluster others
	if cluster=$(pg_cluster_on_port); then
		# shellcheck disable=SC2086 # "version name status", split on purpose
		start_cluster $cluster
		started_how="local ${cluster% *}"
		return
	fi
	others=$(pg_cluster_ports)
	if [[ -n $others ]]; then
		die "postgres: no cluster is set up for port $pg_port (there is $others);" \
			"set PGPORT to one of those ports, or create one: pg_createcluster --port $pg_port <version> <name>"
	fi
	if is_root && command -v apt-get >/dev/null; then
		say "postgres: not installed; installing Debian's postgresql (it creates cluster 'main')"
		apt_install postgresql
		if $dry_run; then
			say "  would run: pg_ctlcluster --skip-systemctl-redirect <version> main start"
			started_how=local
			return
		fi
		cluster=$(pg_cluster_on_port) ||
			die "postgres: installed postgresql, but no cluster is set up for port $pg_port" \
				"(pg_lsclusters shows: $(pg_cluster_ports)); set PGPORT to its port"
		# The package's scripts may already have started it.
		if ! pg_reachable; then
			# shellcheck disable=SC2086 # "version name status", split on purpose
			start_cluster $cluster
		fi
		started_how="local ${cluster% *}"
	elif [[ $pg_host != /* ]] && docker_usable; then
		say "postgres: not installed; running it in Docker as $POSTGRES_CONTAINER"
		docker_up "$POSTGRES_CONTAINER" -e POSTGRES_HOST_AUTH_METHOD=trust \
			-p "127.0.0.1:$pg_port:5432" "$POSTGRES_IMAGE"
		started_how=docker
	else
		die "postgres: nothing answers on $pg_host:$pg_port and there is no way to start it here." \
			"Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; or run this script as" \
			"root to do it) or Docker, or point PGHOST and PGPORT at a running server."
	fi
}

postgres_version() {
	local version
	command -v psql >/dev/null || return 1
	version=$(
		timeout 10 psql -X -w -q -A -t -h "$pg_host" -p "$pg_port" -U "${PGUSER:-postgres}" \
			-d "${PGDATABASE:-postgres}" -c 'show server_version' 2>/dev/null
	) || return 1
	printf '%s\n' "${version%% *}"
}

ensure_postgres() {
	local where="$pg_host:$pg_port" version
	if ! pg_reachable; then
		is_local "$pg_host" ||
			die "postgres: nothing answers on $where, which is not on this machine;" \
				"start it there or set PGHOST and PGPORT"
		start_postgres
		if $dry_run; then
			say "  would wait up to ${wait_seconds}s for PostgreSQL to accept connections on $where"
			if [[ $started_how == local* ]]; then
				say "  would check that user postgres can log in over 127.0.0.1 without a password," \
					"else add '$HBA_RULE' at the top of the cluster's pg_hba.conf and reload it"
			fi
			echo "postgres: would be started ($where)"
			return
		fi
		wait_until "$wait_seconds" pg_accepting "$started_how" ||
			die "postgres: started, but it did not accept connections on $where within ${wait_seconds}s;" \
				"see $([[ $started_how == docker ]] && echo "docker logs $POSTGRES_CONTAINER" || echo /var/log/postgresql/)"
		if [[ $started_how == local\ * ]]; then
			# shellcheck disable=SC2086 # "local version name", split on purpose
			set -- $started_how
			ensure_trust_login "$2" "$3"
		fi
	fi
	version=$(postgres_version) || version=""
	echo "postgres: ok (${version:+$version, }$where)"
}

ensure_rabbitmq
ensure_postgres
