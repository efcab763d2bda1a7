#!/usr/bin/env bash
# The whole local stack: Kafka, FerretDB, the contract's topics, and the four services.
# usage: [REPLICAS=N] stack.sh up|down|status
# The caller's environment passes through to every process; documented development defaults fill
# only what is unset.
# REPLICAS (1 to 9, default 1) runs that many processes of each service: replica 1 on the service's port
# below with `<name>.pid` / `<name>.log`, replica k on port + 100*(k-1) with `<name>-k.pid` / `<name>-k.log`,
# each with SERVICE_REPLICA=k. The replicas of a service share its database and consumer groups (they
# split the partitions). The sandbox and the dashboard stay single; the sandbox's webhooks and the
# webview's redirect go to replica 1 of the connector (production puts a load balancer there).
source "$(dirname "$0")/lib.sh"

SERVICES=(entitlements:8001 connector:8002 importer:8003 categorizer:8004)
REPLICAS="${REPLICAS:-1}"
[[ "$REPLICAS" =~ ^[1-9]$ ]] || { say "ERROR: REPLICAS must be 1 to 9, not '$REPLICAS'"; exit 2; }
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

replica_name() {  # replica_name SERVICE K: the first replica is the service's own name, then SERVICE-K
  if [ "$2" -eq 1 ]; then echo "$1"; else echo "$1-$2"; fi
}

replica_port() {  # replica_port BASE_PORT K
  echo $(($1 + 100 * ($2 - 1)))
}

replica_pidfiles() {  # replica_pidfiles SERVICE: the pid files of every replica started, whatever REPLICAS is now
  local name="$1" pidfile
  [ -f "$RUN_DIR/$name.pid" ] && echo "$RUN_DIR/$name.pid"
  for pidfile in "$RUN_DIR/$name"-*.pid; do
    [[ "$pidfile" =~ -[0-9]+\.pid$ ]] && [ -f "$pidfile" ] && echo "$pidfile"
  done
  return 0
}

service_up() {  # service_up NAME PORT MODULE [VAR=VALUE...]: NAME names the pid and log files
  local name="$1" port="$2" module="$3" pidfile="$RUN_DIR/$1.pid"
  shift 3
  if pid_alive "$pidfile"; then
    say "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  port_in_use "$port" && { say "ERROR: port $port ($name) is taken by another process"; exit 1; }
  (cd "$ROOT" && exec env "$@" "$PYTHON" -m "$module" --port "$port") >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

each_replica() {  # each_replica COMMAND: COMMAND SERVICE NAME PORT K for every replica of every service
  local entry k
  for entry in "${SERVICES[@]}"; do
    for k in $(seq 1 "$REPLICAS"); do
      "$1" "${entry%%:*}" "$(replica_name "${entry%%:*}" "$k")" "$(replica_port "${entry##*:}" "$k")" "$k"
    done
  done
}

replica_up() {  # replica_up SERVICE NAME PORT K
  service_up "$2" "$3" "services.$1" "SERVICE_REPLICA=$4"
}

replica_ready() {  # replica_ready SERVICE NAME PORT K
  wait_ready "$2" "$3"
}

warn_extra_replicas() {  # replicas left running by an earlier `up` with a larger REPLICAS
  local entry pidfile k
  for entry in "${SERVICES[@]}"; do
    while read -r pidfile; do
      k="$(basename "$pidfile" .pid)"
      k="${k##*-}"
      if [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -gt "$REPLICAS" ] && pid_alive "$pidfile"; then
        say "note: $(basename "$pidfile" .pid) is still running from an earlier up with more replicas ('make down' stops it)"
      fi
    done < <(replica_pidfiles "${entry%%:*}")
  done
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
  each_replica replica_up
  service_up dashboard "$DASHBOARD_PORT" ops.dashboard
  wait_ready sandbox "$SANDBOX_PORT"
  each_replica replica_ready
  wait_ready dashboard "$DASHBOARD_PORT"
  warn_extra_replicas
  say "stack is up ($REPLICAS of each service); logs in $LOG_DIR"
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
  if [ "$REPLICAS" -gt 1 ]; then
    echo "  replica k of each service: its port + 100*(k-1) (8101-8104, 8201-8204...); make status lists them"
  fi
}

down() {
  local entry pidfile
  # every replica that has a pid file, at once (each waits for its own process)
  for entry in "${SERVICES[@]}"; do
    while read -r pidfile; do
      stop_pidfile "$pidfile" "$(basename "$pidfile" .pid)" &
    done < <(replica_pidfiles "${entry%%:*}")
  done
  wait
  stop_pidfile "$RUN_DIR/sandbox.pid" "sandbox"
  stop_pidfile "$RUN_DIR/dashboard.pid" "dashboard"
  "$ROOT/deploy/local/ferretdb.sh" stop
  "$ROOT/deploy/local/kafka.sh" stop
}

process_status() {  # process_status NAME PORT: one line; fails when the process is not running
  local name="$1" port="$2" ready
  if pid_alive "$RUN_DIR/$name.pid"; then
    ready="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)"
    printf '%-14s running  pid %s  http://127.0.0.1:%s  readyz %s\n' "$name" "$(cat "$RUN_DIR/$name.pid")" "$port" "$ready"
  else
    printf '%-14s stopped\n' "$name"
    return 3
  fi
}

status() {
  local rc=0 entry k top pidfile
  "$ROOT/deploy/local/kafka.sh" status || rc=3
  "$ROOT/deploy/local/ferretdb.sh" status || rc=3
  process_status sandbox "$SANDBOX_PORT" || rc=3
  for entry in "${SERVICES[@]}"; do
    # REPLICAS of each, and any further replica that has a pid file
    top="$REPLICAS"
    while read -r pidfile; do
      k="$(basename "$pidfile" .pid)"
      k="${k##*-}"
      [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -gt "$top" ] && top="$k"
    done < <(replica_pidfiles "${entry%%:*}")
    for k in $(seq 1 "$top"); do
      process_status "$(replica_name "${entry%%:*}" "$k")" "$(replica_port "${entry##*:}" "$k")" || rc=3
    done
  done
  process_status dashboard "$DASHBOARD_PORT" || rc=3
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
