#!/usr/bin/env bash
# FerretDB v1 on its PostgreSQL backend: the local MongoDB wire-protocol server.
# A private PostgreSQL cluster (Debian's postgresql-15, its own data folder under the run folder, its own
# port, run as the `postgres` OS user because PostgreSQL refuses root) holds the data; FerretDB speaks
# the MongoDB wire protocol in front of it. ferretdb-gin.sql gives every index FerretDB creates the GIN
# twin its queries can use.
# usage: ferretdb.sh install|start|stop|status|psql [ARGS]
source "$(dirname "$0")/lib.sh"

FERRET_CACHE="$CACHE_DIR/ferretdb-$FERRETDB_VERSION"
FERRET_BIN="$FERRET_CACHE/ferretdb"
FERRET_RUN="$RUN_DIR/ferretdb"
PIDFILE="$FERRET_RUN/ferretdb.pid"
DEBUG_ADDR_FILE="$FERRET_RUN/debug-addr"
LOG="$FERRET_RUN/ferretdb.log"
PG_BIN="/usr/lib/postgresql/$POSTGRES_MAJOR/bin"
PG_DATA="$FERRET_RUN/pg"
PG_LOG="$FERRET_RUN/postgresql.log"
PG_ROLE="banksync"
PG_DB="ferretdb"
PG_URL="postgres://$PG_ROLE@127.0.0.1:$FERRETDB_PG_PORT/$PG_DB?pool_max_conns=$FERRETDB_POOL_MAX_CONNS"

install_postgres() {
  [ -x "$PG_BIN/postgres" ] && return 0
  say "installing Debian's postgresql-$POSTGRES_MAJOR (once)"
  [ "$(id -u)" = 0 ] || { say "ERROR: $PG_BIN/postgres is missing: apt-get install postgresql-$POSTGRES_MAJOR as root"; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$POSTGRES_MAJOR" >/dev/null
  [ -x "$PG_BIN/postgres" ] || { say "ERROR: postgresql-$POSTGRES_MAJOR did not install $PG_BIN/postgres"; exit 1; }
}

as_pg() {  # PostgreSQL refuses to run as root: as root, run its programs as the postgres OS user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_sql() {  # pg_sql DB SQL...: as the cluster's superuser, over loopback
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$FERRETDB_PG_PORT" -U "$PG_ROLE" -d "$1" "${@:2}"
}

pg_owns_data_dir() {
  mkdir -p "$PG_DATA"
  touch "$PG_LOG"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_DATA" "$PG_LOG"
    chmod 700 "$PG_DATA"
    # the postgres user must be able to reach its folder: give each parent the search bit it lacks
    local dir="$FERRET_RUN"
    while [ "$dir" != "/" ]; do
      runuser -u postgres -- test -x "$dir" || chmod o+x "$dir"
      dir="$(dirname "$dir")"
    done
  fi
}

start_postgres() {
  install_postgres
  pg_owns_data_dir
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    say "initialising a private PostgreSQL $POSTGRES_MAJOR cluster in $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_ROLE" --auth=trust -E UTF8 --no-locale >"$FERRET_RUN/initdb.log" 2>&1 \
      || die_with_log "initdb failed" "$FERRET_RUN/initdb.log"
    cat >>"$PG_DATA/postgresql.conf" <<CONF
# banksync: a private cluster behind FerretDB, on loopback only
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
shared_buffers = 256MB
work_mem = 16MB
maintenance_work_mem = 128MB
# a local stand-in: a commit is acknowledged before its WAL reaches the disk (an OS crash may lose
# the last few hundred milliseconds; a process crash loses nothing)
synchronous_commit = off
jit = off
random_page_cost = 1.1
# statistics follow bulk inserts within seconds (a plan made on a table without them reads more)
autovacuum_naptime = 5s
autovacuum_analyze_scale_factor = 0.02
autovacuum_vacuum_insert_scale_factor = 0.05
log_min_duration_statement = -1
CONF
  fi
  port_in_use "$FERRETDB_PG_PORT" && { say "ERROR: port $FERRETDB_PG_PORT is taken; set FERRETDB_PG_PORT"; exit 1; }
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -o "-p $FERRETDB_PG_PORT -c max_connections=$((FERRETDB_POOL_MAX_CONNS + 80))" start >/dev/null \
    || die_with_log "PostgreSQL did not start" "$PG_LOG"
  if [ "$(pg_sql postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    pg_sql postgres -c "CREATE DATABASE $PG_DB ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
  fi
  pg_sql "$PG_DB" -f "$ROOT/deploy/local/ferretdb-gin.sql" >/dev/null
}

stop_postgres() {
  [ -f "$PG_DATA/postmaster.pid" ] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  say "PostgreSQL stopped"
}

install() {
  install_postgres
  [ -x "$FERRET_BIN" ] && return 0
  command -v go >/dev/null || { say "ERROR: go not found (FerretDB is built from source)"; exit 1; }
  say "building FerretDB $FERRETDB_VERSION from the Go module proxy (once, about a minute)"
  mkdir -p "$FERRET_CACHE"
  # `go install ...@v1.24.2` builds a binary that panics at start: FerretDB embeds
  # build/version/version.txt, which its release process generates and the module does not carry.
  # So: fetch the same module, write that file, and build it.
  local moddir src
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod
  moddir="$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$moddir" ] || { say "ERROR: could not download the FerretDB module"; exit 1; }
  src="$(mktemp -d)"
  cp -r "$moddir/." "$src/"
  chmod -R u+w "$src"
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  echo "local" >"$src/build/version/package.txt"
  (cd "$src" && go build -trimpath -o "$FERRET_BIN.tmp" ./cmd/ferretdb) >"$FERRET_CACHE/build.log" 2>&1 \
    || die_with_log "FerretDB did not build" "$FERRET_CACHE/build.log"
  rm -rf "$src"
  mv "$FERRET_BIN.tmp" "$FERRET_BIN"
  say "FerretDB $("$FERRET_BIN" --version | head -n 1) ready in $FERRET_CACHE"
}

start() {
  install
  if pid_alive "$PIDFILE"; then
    say "FerretDB already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$FERRETDB_PORT"
    return 0
  fi
  # the debug server (pprof, metrics, command line) of this instance only: loopback, a private port
  local debug_port="$FERRETDB_DEBUG_PORT"
  [ -n "$debug_port" ] || debug_port="$(free_private_port)" || exit 1
  for port in "$FERRETDB_PORT" "$debug_port"; do
    if port_in_use "$port"; then
      say "ERROR: port $port is taken by another process; set FERRETDB_PORT / FERRETDB_DEBUG_PORT or stop it"
      exit 1
    fi
  done
  require_venv
  mkdir -p "$FERRET_RUN/state"
  start_postgres
  say "starting FerretDB $FERRETDB_VERSION (PostgreSQL on 127.0.0.1:$FERRETDB_PG_PORT) on 127.0.0.1:$FERRETDB_PORT"
  "$FERRET_BIN" --handler=postgresql --postgresql-url="$PG_URL" --state-dir="$FERRET_RUN/state" \
    --listen-addr="127.0.0.1:$FERRETDB_PORT" --debug-addr="127.0.0.1:$debug_port" \
    --telemetry=disable --log-level=warn >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  echo "127.0.0.1:$debug_port" >"$DEBUG_ADDR_FILE"
  if ! "$PYTHON" "$ROOT/deploy/local/probe.py" mongodb "mongodb://127.0.0.1:$FERRETDB_PORT" --timeout 30; then
    pid_alive "$PIDFILE" || say "the FerretDB process exited"
    die_with_log "FerretDB did not answer a ping in 30 s" "$LOG"
  fi
  say "FerretDB is up (pid $(cat "$PIDFILE"))"
}

stop() {
  stop_pidfile "$PIDFILE" "FerretDB"
  rm -f "$DEBUG_ADDR_FILE"
  stop_postgres
}

status() {
  if pid_alive "$PIDFILE"; then
    echo "ferretdb   running  pid $(cat "$PIDFILE")  mongodb://127.0.0.1:$FERRETDB_PORT  (PostgreSQL 127.0.0.1:$FERRETDB_PG_PORT, debug $(cat "$DEBUG_ADDR_FILE" 2>/dev/null || echo '?'))"
  else
    echo "ferretdb   stopped"
    return 3
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  psql) shift; pg_sql "$PG_DB" "$@" ;;
  *) echo "usage: $0 install|start|stop|status|psql [ARGS]" >&2; exit 2 ;;
esac
