#!/usr/bin/env bash
# Docker Compose v2, to validate docker-compose.yml where the docker client has no compose plugin.
# usage: compose.sh ARGS...   runs `docker compose ARGS...`, or the project's own build of Compose
source "$(dirname "$0")/lib.sh"

COMPOSE_VERSION="v2.40.3"
COMPOSE_BIN="$CACHE_DIR/compose-$COMPOSE_VERSION/docker-compose"

if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
fi

if [ ! -x "$COMPOSE_BIN" ]; then
  command -v go >/dev/null || { say "ERROR: no 'docker compose' and no Go to build it"; exit 1; }
  say "building Docker Compose $COMPOSE_VERSION from the Go module proxy (once, a few minutes)"
  mkdir -p "$(dirname "$COMPOSE_BIN")"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod
  # built inside its module (not `go install ...@version`): Compose's go.mod has replace directives
  moddir="$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$moddir" ] || { say "ERROR: could not download the Compose module"; exit 1; }
  (cd "$moddir" && go build -trimpath -o "$COMPOSE_BIN.tmp" ./cmd) >"$COMPOSE_BIN.log" 2>&1 \
    || die_with_log "Docker Compose did not build" "$COMPOSE_BIN.log"
  mv "$COMPOSE_BIN.tmp" "$COMPOSE_BIN"
fi
exec "$COMPOSE_BIN" "$@"
