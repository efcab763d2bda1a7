#!/usr/bin/env bash
# Apache Kafka 4.x, KRaft mode (one node that is broker and controller), from its Maven Central artifacts.
# usage: kafka.sh install|start|stop|status
source "$(dirname "$0")/lib.sh"

KAFKA_CACHE="$CACHE_DIR/kafka-$KAFKA_VERSION"
CLASSPATH_FILE="$KAFKA_CACHE/classpath.txt"
KAFKA_RUN="$RUN_DIR/kafka"
PIDFILE="$KAFKA_RUN/kafka.pid"
LOG="$KAFKA_RUN/logs/console.log"

install() {
  if [ -s "$CLASSPATH_FILE" ] && [ "$(cat "$KAFKA_CACHE/pom.sha" 2>/dev/null)" = "$(sha256sum "$ROOT/deploy/local/kafka/pom.xml" | cut -c1-64)" ]; then
    return 0
  fi
  command -v java >/dev/null || { say "ERROR: java not found (Java 17+ is needed)"; exit 1; }
  command -v mvn >/dev/null || { say "ERROR: mvn not found (Maven resolves Kafka's jars)"; exit 1; }
  say "resolving Apache Kafka $KAFKA_VERSION and its dependencies from Maven Central (once)"
  mkdir -p "$KAFKA_CACHE"
  mvn -B -q -f "$ROOT/deploy/local/kafka/pom.xml" \
    -Dmaven.repo.local="$KAFKA_CACHE/m2" \
    dependency:build-classpath -Dmdep.outputFile="$CLASSPATH_FILE.tmp" >"$KAFKA_CACHE/mvn.log" 2>&1 \
    || die_with_log "Maven could not resolve Kafka" "$KAFKA_CACHE/mvn.log"
  mv "$CLASSPATH_FILE.tmp" "$CLASSPATH_FILE"
  sha256sum "$ROOT/deploy/local/kafka/pom.xml" | cut -c1-64 >"$KAFKA_CACHE/pom.sha"
  say "Kafka $KAFKA_VERSION ready in $KAFKA_CACHE"
}

java_cmd() {  # java_cmd MAINCLASS ARGS...: runs in the foreground; `exec`-able from a subshell
  # shellcheck disable=SC2086
  exec java $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$KAFKA_RUN/logs" \
    -Dlog4j2.configurationFile="$ROOT/deploy/local/kafka/log4j2.properties" \
    -cp "$(cat "$CLASSPATH_FILE")" "$@"
}

write_config() {
  mkdir -p "$KAFKA_RUN/data" "$KAFKA_RUN/logs"
  cat >"$KAFKA_RUN/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_RUN/data
num.partitions=$KAFKA_TOPIC_PARTITIONS
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=9600
CONF
}

start() {
  install
  if pid_alive "$PIDFILE"; then
    say "Kafka already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  if port_in_use "$KAFKA_PORT"; then
    say "ERROR: port $KAFKA_PORT is taken by another process; set KAFKA_PORT or stop it"
    exit 1
  fi
  require_venv
  write_config
  if [ ! -f "$KAFKA_RUN/data/meta.properties" ]; then
    say "formatting KRaft storage in $KAFKA_RUN/data (once)"
    (java_cmd kafka.tools.StorageTool format --standalone \
      -t "$( (java_cmd kafka.tools.StorageTool random-uuid) 2>/dev/null | tail -n 1)" \
      -c "$KAFKA_RUN/server.properties") >"$KAFKA_RUN/logs/format.log" 2>&1 \
      || die_with_log "could not format Kafka storage" "$KAFKA_RUN/logs/format.log"
  fi
  say "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  # a subshell that execs java: $! is the JVM itself, so stop signals reach it
  (java_cmd kafka.Kafka "$KAFKA_RUN/server.properties") >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  if ! "$PYTHON" "$ROOT/deploy/local/probe.py" kafka "127.0.0.1:$KAFKA_PORT" --timeout 90; then
    pid_alive "$PIDFILE" || say "the Kafka process exited"
    tail -n 20 "$LOG" >&2 || true
    die_with_log "Kafka did not answer a produce/consume round trip in 90 s" "$KAFKA_RUN/logs/server.log"
  fi
  say "Kafka is up (pid $(cat "$PIDFILE"))"
}

stop() { stop_pidfile "$PIDFILE" "Kafka"; }

status() {
  if pid_alive "$PIDFILE"; then
    echo "kafka      running  pid $(cat "$PIDFILE")  127.0.0.1:$KAFKA_PORT"
  else
    echo "kafka      stopped"
    return 3
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  classpath) install; cat "$CLASSPATH_FILE" ;;
  *) echo "usage: $0 install|start|stop|status|classpath" >&2; exit 2 ;;
esac
