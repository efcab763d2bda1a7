#!/usr/bin/env bash
# The whole local stack: Kafka, FerretDB, the contract's topics, and the four services.
# usage: stack.sh up|down|status
# The caller's environment passes through to every process; documented development defaults fill
# only what is unset.
source "$(dirname "$0")/lib.sh"

SERVICES=(entitlements:8001 connector:8002 importer:8003 categorizer:8004)
SANDBOX_PORT="${AGGREGATOR_SANDBOX_PORT:-8010}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8090}"
LOG_DIR="$RUN_DIR/logs"

export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$KAFKA_PORT}"
export MONGODB_URL="${MONGODB_URL:-mongodb://127.0.0.1:$FERRETDB_PORT}"
export AGGREGATOR_BASE_URL="${AGGREGATOR_BASE_URL:-http://127.0.0.1:8010}"
export ENTITLEMENTS_URL="${ENTITLEMENTS_URL:-http://127.0.0.1:8001}"
export CONNECTOR_URL="${CONNECTOR_URL:-http://127.0.0.1:8002}"
export IMPORTER_URL="${IMPORTER_URL:-http://127.0.0.1:8003}"
export CATEGORIZER_URL="${CATEGORIZER_URL:-http://127.0.0.1:8004}"
export KAFKA_TOPIC_PARTITIONS
# the sandbox signs its CONNECTION_SYNCED webhooks to the connector (BI-Signature) with this shared secret
export AGGREGATOR_WEBHOOK_SECRET="${AGGREGATOR_WEBHOOK_SECRET:-dev-only-webhook-secret}"
export SANDBOX_WEBHOOK_SECRET="${SANDBOX_WEBHOOK_SECRET:-$AGGREGATOR_WEBHOOK_SECRET}"
# the connector is the sandbox's registered client: same id and secret on both sides, and the connector's
# callback as the one redirect URI the webview may send a browser back to
export AGGREGATOR_CLIENT_ID="${AGGREGATOR_CLIENT_ID:-banksync-dev-client}"
export AGGREGATOR_CLIENT_SECRET="${AGGREGATOR_CLIENT_SECRET:-dev-only-aggregator-client-secret}"
export SANDBOX_CLIENT_ID="${SANDBOX_CLIENT_ID:-$AGGREGATOR_CLIENT_ID}"
export SANDBOX_CLIENT_SECRET="${SANDBOX_CLIENT_SECRET:-$AGGREGATOR_CLIENT_SECRET}"
export SANDBOX_REDIRECT_URIS="${SANDBOX_REDIRECT_URIS:-$CONNECTOR_URL/v1/callback}"

service_up() {  # service_up NAME PORT [MODULE]
  local name="$1" port="$2" module="${3:-services.$1}" pidfile="$RUN_DIR/$1.pid"
  if pid_alive "$pidfile"; then
    say "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  port_in_use "$port" && { say "ERROR: port $port ($name) is taken by another process"; exit 1; }
  (cd "$ROOT" && exec "$PYTHON" -m "$module" --port "$port") >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

wait_ready() {  # wait_ready NAME PORT
  local name="$1" port="$2"
  for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
      return 0
    fi
    pid_alive "$RUN_DIR/$name.pid" || die_with_log "$name exited during start-up" "$LOG_DIR/$name.log"
    sleep 0.5
  done
  die_with_log "$name did not become ready in 60 s (GET /readyz)" "$LOG_DIR/$name.log"
}

up() {
  require_venv
  mkdir -p "$LOG_DIR"
  "$ROOT/deploy/local/kafka.sh" start
  "$ROOT/deploy/local/ferretdb.sh" start
  "$PYTHON" "$ROOT/deploy/local/probe.py" topics "$KAFKA_BOOTSTRAP_SERVERS" --partitions "$KAFKA_TOPIC_PARTITIONS"
  service_up sandbox "$SANDBOX_PORT" sandbox
  for entry in "${SERVICES[@]}"; do service_up "${entry%%:*}" "${entry##*:}"; done
  service_up dashboard "$DASHBOARD_PORT" ops.dashboard
  wait_ready sandbox "$SANDBOX_PORT"
  for entry in "${SERVICES[@]}"; do wait_ready "${entry%%:*}" "${entry##*:}"; done
  wait_ready dashboard "$DASHBOARD_PORT"
  say "stack is up; logs in $LOG_DIR"
  print_addresses
}

print_addresses() {
  cat <<TXT
  Kafka         $KAFKA_BOOTSTRAP_SERVERS
  aggregator    http://127.0.0.1:$SANDBOX_PORT   (Powens-compatible sandbox)
  MongoDB wire  $MONGODB_URL   (FerretDB)
  entitlements  http://127.0.0.1:8001   (docs: /docs)
  connector     http://127.0.0.1:8002
  importer      http://127.0.0.1:8003
  categorizer   http://127.0.0.1:8004
  ops dashboard http://127.0.0.1:$DASHBOARD_PORT   (AsyncAPI: /asyncapi.json)
                log in with an ops token: .venv/bin/python -m ops.dashboard --print-token
TXT
}

down() {
  for entry in "${SERVICES[@]}"; do stop_pidfile "$RUN_DIR/${entry%%:*}.pid" "${entry%%:*}"; done
  stop_pidfile "$RUN_DIR/sandbox.pid" "sandbox"
  stop_pidfile "$RUN_DIR/dashboard.pid" "dashboard"
  "$ROOT/deploy/local/ferretdb.sh" stop
  "$ROOT/deploy/local/kafka.sh" stop
}

status() {
  local rc=0
  "$ROOT/deploy/local/kafka.sh" status || rc=3
  "$ROOT/deploy/local/ferretdb.sh" status || rc=3
  for entry in "sandbox:$SANDBOX_PORT" "${SERVICES[@]}" "dashboard:$DASHBOARD_PORT"; do
    local name="${entry%%:*}" port="${entry##*:}"
    if pid_alive "$RUN_DIR/$name.pid"; then
      local ready
      ready="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)"
      printf '%-12s running  pid %s  http://127.0.0.1:%s  readyz %s\n' "$name" "$(cat "$RUN_DIR/$name.pid")" "$port" "$ready"
    else
      printf '%-12s stopped\n' "$name"
      rc=3
    fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
