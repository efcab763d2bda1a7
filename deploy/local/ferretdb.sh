#!/usr/bin/env bash
# FerretDB v1 with the SQLite backend: the local MongoDB wire-protocol server.
# usage: ferretdb.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

FERRET_CACHE="$CACHE_DIR/ferretdb-$FERRETDB_VERSION"
FERRET_BIN="$FERRET_CACHE/ferretdb"
FERRET_RUN="$RUN_DIR/ferretdb"
PIDFILE="$FERRET_RUN/ferretdb.pid"
LOG="$FERRET_RUN/ferretdb.log"

install() {
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
  for port in "$FERRETDB_PORT" "$FERRETDB_DEBUG_PORT"; do
    if port_in_use "$port"; then
      say "ERROR: port $port is taken by another process; set FERRETDB_PORT / FERRETDB_DEBUG_PORT or stop it"
      exit 1
    fi
  done
  require_venv
  mkdir -p "$FERRET_RUN/data" "$FERRET_RUN/state"
  say "starting FerretDB $FERRETDB_VERSION (SQLite) on 127.0.0.1:$FERRETDB_PORT"
  "$FERRET_BIN" --handler=sqlite --sqlite-url="file:$FERRET_RUN/data/" --state-dir="$FERRET_RUN/state" \
    --listen-addr="127.0.0.1:$FERRETDB_PORT" --debug-addr="127.0.0.1:$FERRETDB_DEBUG_PORT" \
    --telemetry=disable --log-level=warn >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  if ! "$PYTHON" "$ROOT/deploy/local/probe.py" mongodb "mongodb://127.0.0.1:$FERRETDB_PORT" --timeout 30; then
    pid_alive "$PIDFILE" || say "the FerretDB process exited"
    die_with_log "FerretDB did not answer a ping in 30 s" "$LOG"
  fi
  say "FerretDB is up (pid $(cat "$PIDFILE"))"
}

stop() { stop_pidfile "$PIDFILE" "FerretDB"; }

status() {
  if pid_alive "$PIDFILE"; then
    echo "ferretdb   running  pid $(cat "$PIDFILE")  mongodb://127.0.0.1:$FERRETDB_PORT"
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
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
