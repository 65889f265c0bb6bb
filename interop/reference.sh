#!/usr/bin/env bash
# A real RabbitMQ on loopback to run the interop tests and the benchmark against, next to amqpbroker.
#
#   interop/reference.sh start    start it (installing it first if needed); prints its AMQP URL
#   interop/reference.sh stop     stop it
#   interop/reference.sh status   print the URL if it answers; exit status 1 if not
#
# It listens on 127.0.0.1:${RABBITMQ_REF_PORT:-5682}, its management API on the port + 10000 (15682),
# user guest/guest: the ports `interop` (MANAGEMENT_URL) and `python -m interop.bench --reference`
# expect. Two ways to get one, the first that works:
#   - Debian's (or Ubuntu's) rabbitmq-server package, installed with apt-get when missing (as root);
#     its data and logs go to /tmp/rabbitmq-reference-PORT;
#   - a container of the rabbitmq:3.10-management image, when docker is there and apt-get is not
#     (or RABBITMQ_REF_DOCKER=1), named amqpbroker-reference-PORT.
# Examples:
#   AMQP_URL=$(interop/reference.sh start) .venv/bin/pytest interop
#   .venv/bin/python -m interop.bench --url amqp://guest:guest@127.0.0.1:5672/ --reference
set -euo pipefail
port=${RABBITMQ_REF_PORT:-5682}
management=$((port + 10000))
url="amqp://guest:guest@127.0.0.1:$port/"
base=/tmp/rabbitmq-reference-$port
node=reference$port@localhost
container=amqpbroker-reference-$port

use_docker() {
  [ "${RABBITMQ_REF_DOCKER:-0}" = 1 ] && return 0
  command -v rabbitmq-server >/dev/null && return 1
  command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && return 1
  command -v docker >/dev/null
}

answers() {  # is something speaking AMQP there?
  python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) else 1)
PY
}

wait_until_up() {
  for _ in $(seq 90); do
    if answers && curl -fs -u guest:guest "http://127.0.0.1:$management/api/overview" >/dev/null 2>&1; then
      echo "$url"; return 0
    fi
    sleep 2
  done
  echo "RabbitMQ did not come up on 127.0.0.1:$port; $1" >&2
  return 1
}

debian_env() {
  export RABBITMQ_NODENAME=$node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port \
    RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins RABBITMQ_CONFIG_FILE=$base/rabbitmq \
    RABBITMQ_PID_FILE=$base/pid HOME=${HOME:-/root}
}

start_debian() {
  if ! command -v rabbitmq-server >/dev/null; then
    echo "installing rabbitmq-server with apt-get..." >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null
  fi
  debian_env
  mkdir -p "$base/mnesia" "$base/log"
  echo "[rabbitmq_management]." >"$base/enabled_plugins"
  printf '%s\n' "listeners.tcp.default = 127.0.0.1:$port" "management.tcp.port = $management" \
    "management.tcp.ip = 127.0.0.1" >"$base/rabbitmq.conf"
  if id rabbitmq >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    chown -R rabbitmq:rabbitmq "$base"
    # as the rabbitmq user, keeping a high open-files limit (su would reset it to 1024)
    (ulimit -n 20000; cd /var/lib/rabbitmq && HOME=/var/lib/rabbitmq setpriv --reuid rabbitmq \
      --regid rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server -detached >/dev/null 2>&1) || true
  else
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  wait_until_up "see $base/log"
}

start_docker() {
  docker rm -f "$container" >/dev/null 2>&1 || true
  docker run -d --name "$container" -p "127.0.0.1:$port:5672" -p "127.0.0.1:$management:15672" \
    rabbitmq:3.10-management >/dev/null
  wait_until_up "see: docker logs $container"
}

case ${1:-status} in
start)
  if answers; then echo "$url"; exit 0; fi
  if use_docker; then start_docker; else start_debian; fi ;;
stop)
  if use_docker; then
    docker rm -f "$container" >/dev/null 2>&1 || true
  else
    debian_env
    rabbitmqctl -n "$node" -q stop >/dev/null 2>&1 || true
  fi ;;
status)
  if answers; then echo "$url"; else exit 1; fi ;;
*)
  echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
