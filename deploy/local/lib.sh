# Shared by the deploy/local scripts: paths, ports and small helpers. Source it; do not run it.
# Every value can be overridden from the environment (the tests start their own instances this way).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Downloads and builds, shared by every clone on this machine (a second setup is fast).
CACHE_DIR="${BANKSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/budgetfacile-banksync}"
# Data, logs and pid files of one running stack; ignored by git.
RUN_DIR="${BANKSYNC_RUN_DIR:-$ROOT/.run/stack}"
VENV="${BANKSYNC_VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"

KAFKA_VERSION="4.2.0"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_TOPIC_PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-6}"

FERRETDB_VERSION="v1.24.2"
FERRETDB_PORT="${FERRETDB_PORT:-27017}"
# FerretDB's debug HTTP server (pprof, metrics, /debug/archive; no authentication; v1.24 takes a TCP
# address only, no unix socket): on loopback, on a port of each instance's own. Empty (the default): a
# free port picked at each start, never FerretDB's well-known 8088; ferretdb.sh writes the address it
# used to $RUN_DIR/ferretdb/debug-addr.
FERRETDB_DEBUG_PORT="${FERRETDB_DEBUG_PORT:-}"
# FerretDB's backend: a private PostgreSQL cluster per run folder
POSTGRES_MAJOR="15"
FERRETDB_PG_PORT="${FERRETDB_PG_PORT:-54329}"
# FerretDB v1.24 keeps one pooled connection per statement of an update or delete command until the
# command ends (its handler defers each statement's close to the end of the loop): a command with more
# statements than the pool, or several at once, wait for each other for ever and block every database.
# Hence a large pool, and (shared.bulk) commands of at most 50 statements, at most 3 at once per process.
FERRETDB_POOL_MAX_CONNS="${FERRETDB_POOL_MAX_CONNS:-800}"

say() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0" .sh)" "$*" >&2; }

die_with_log() {  # die_with_log MESSAGE LOGFILE
  say "ERROR: $1"
  if [ -f "$2" ]; then
    say "last lines of $2:"
    tail -n 40 "$2" >&2
  fi
  exit 1
}

pid_alive() {  # pid_alive PIDFILE
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

port_in_use() {  # port_in_use PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_private_port: a loopback port nobody listens on, from 20000-32767: below the kernel's ephemeral
# range (32768-60999), whose ports the outgoing connections of every client on the machine take without
# listening (a FerretDB failed to bind a debug port picked there that a client socket held)
free_private_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  say "ERROR: found no free loopback port"
  return 1
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME: TERM, wait up to 20 s, then KILL
  local pidfile="$1" name="$2" pid
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop in 20 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "$name stopped"
}

require_venv() {
  [ -x "$PYTHON" ] || { say "ERROR: no virtual environment at $VENV: run 'make setup' first"; exit 1; }
}
