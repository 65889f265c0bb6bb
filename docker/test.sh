#!/usr/bin/env bash
# Build the image from docker/Dockerfile and check it: a container on the host network answers
# AMQP (pika connects, publishes, gets) and /metrics, and its health check passes.
#
# Docker Hub is out of reach here, so with podman (rootful; installed from Debian's packages if
# missing) the base image the Dockerfile names is built from Debian's packages with debootstrap
# and imported under that name; the Dockerfile itself stays as real users need it.
set -euo pipefail
cd "$(dirname "$0")/.."
base=debian:bookworm-slim
image=localhost/amqpbroker:test
name=amqpbroker-test-$$
python=${PYTHON:-.venv/bin/python}

if ! command -v podman >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >/dev/null
fi
if ! grep -q '^runtime = "runc"' /etc/containers/containers.conf 2>/dev/null; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000"]\n\n[engine]\nruntime = "runc"\n' \
    >/etc/containers/containers.conf
fi

if ! podman image exists "docker.io/library/$base"; then
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  # the Debian mirror this machine already uses
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"
  tar -C "$rootfs" -c . | podman import - "docker.io/library/$base" >/dev/null
fi

if command -v "${python%/python}/hadolint" >/dev/null 2>&1; then
  "${python%/python}/hadolint" docker/Dockerfile
fi
# this machine's CA bundle (a TLS-inspecting proxy may stand between it and the package index),
# lent to pip in the build's RUN steps through a pip.conf of their own: the image keeps neither
build_mounts=()
host_ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_ca" ]; then
  pip_conf=$(mktemp)
  printf '[global]\ncert = /tmp/build-ca.crt\n' >"$pip_conf"
  build_mounts+=(--volume "$host_ca:/tmp/build-ca.crt:ro" --volume "$pip_conf:/etc/pip.conf:ro")
fi
podman build --format docker --network host "${build_mounts[@]}" -q -f docker/Dockerfile -t "$image" . >/dev/null
rm -f "${pip_conf:-}"

ports=$("$python" -c 'import socket
ss=[socket.socket() for _ in range(5)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')
read -r amqp metrics management amqps amqp2 <<<"$ports"

# What an operator mounts: TLS files and a definitions file (readable by the image's uid 999)
mounted=$(mktemp -d)
chmod 755 "$mounted"
"$python" - "$mounted" <<'PY'
import json, sys
import trustme
where = sys.argv[1]
ca = trustme.CA()
server = ca.issue_cert("localhost", "127.0.0.1")
ca.cert_pem.write_to_path(f"{where}/ca.pem")
server.cert_chain_pems[0].write_to_path(f"{where}/cert.pem")
server.private_key_pem.write_to_path(f"{where}/key.pem")
with open(f"{where}/definitions.json", "w") as file:
    json.dump({"vhosts": [{"name": "app"}],
               "queues": [{"name": "from-definitions", "vhost": "app", "durable": True, "auto_delete": False,
                           "arguments": {"x-max-length": 10}}]}, file)
PY
chmod 644 "$mounted"/*

# Run the image on the host network: launch NAME [NAME=VALUE...] -- BROKER ARGS. Where the
# container runtime cannot start containers (this workplace's sandbox refuses
# setrlimit(RLIMIT_NPROC), which runc and crun both make), run the image's own root filesystem
# under chroot as its user instead: the same files and command, the mounts copied in.
runners=()
containers=()
chrooted=""
cleanup() {
  for each in "${containers[@]}"; do podman rm -f "$each" >/dev/null 2>&1 || true; done
  for each in "${runners[@]}"; do kill "$each" 2>/dev/null; wait "$each" 2>/dev/null || true; done
  if [ -n "$chrooted" ]; then buildah umount "$chrooted" >/dev/null; buildah rm "$chrooted" >/dev/null; fi
  rm -rf "${rootfs:-/nonexistent}" "$mounted"
}
trap cleanup EXIT
launch() {
  local name=$1; shift
  local settings=()
  while [ "$1" != "--" ]; do settings+=("$1"); shift; done
  shift
  if [ -z "$chrooted" ]; then
    local flags=() errors
    errors=$(mktemp)
    for each in "${settings[@]}"; do flags+=(--env "$each"); done
    if podman run -d --rm --network host --name "$name" --volume "$mounted:/etc/amqpbroker:ro" "${flags[@]}" \
        "$image" "$@" >/dev/null 2>"$errors"; then
      containers+=("$name")
      rm -f "$errors"
      return
    fi
    grep -qi rlimit "$errors" || { cat "$errors" >&2; rm -f "$errors"; exit 1; }
    echo "docker/test.sh: podman cannot start containers here ($(grep -oi 'setrlimit[^:]*' "$errors" | head -1 || echo rlimit));" \
         "running the image's filesystem under chroot instead" >&2
    rm -f "$errors"
    chrooted=$(buildah from "$image")
    root=$(buildah mount "$chrooted")
    image_env=$(podman image inspect --format '{{range .Config.Env}}{{.}} {{end}}' "$image")
    user=$(podman image inspect --format '{{.Config.User}}' "$image")
    mkdir -p "$root/etc/amqpbroker"
    cp "$mounted"/* "$root/etc/amqpbroker/"
  fi
  # each chrooted broker gets a data directory of its own, as each container gets its volume
  local data="/var/lib/amqpbroker/data-$name"
  mkdir -p "$root$data" && chown "$user" "$root$data"
  # shellcheck disable=SC2086  # image_env is a list of NAME=value words
  chroot --userspec="$user" "$root" /usr/bin/env -i $image_env "${settings[@]}" AMQPBROKER_DATA_DIR="$data" \
    HOME=/var/lib/amqpbroker /opt/amqpbroker/bin/amqpbroker "$@" &
  runners+=($!)
}
health() {
  if [ -n "$chrooted" ]; then
    chroot --userspec="$user" "$root" /opt/amqpbroker/bin/amqpbroker diagnostics ping "$@"
  else
    podman exec "$name" /opt/amqpbroker/bin/amqpbroker diagnostics ping "$@"
  fi
}

# 1. as the image comes: guest/guest from anywhere, AMQP and /metrics
name=amqpbroker-test-$$
launch "$name" -- --port "$amqp" --prometheus-port "$metrics" --management-port "$management"
"$python" - "$amqp" "$metrics" <<'PY'
import sys, time, urllib.request
import pika
amqp, metrics = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 30
while True:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{amqp}/"))
        break
    except pika.exceptions.AMQPConnectionError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
channel = connection.channel()
channel.queue_declare("docker-test")
channel.confirm_delivery()
channel.basic_publish("", "docker-test", b"from the container test")
assert channel.basic_get("docker-test", auto_ack=True)[2] == b"from the container test"
connection.close()
with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
    assert b"rabbitmq_connections" in response.read()
print("container: AMQP and /metrics answer")
PY
health --port "$amqp"

# 2. as an operator sets it up: another default user (guest then does not exist), TLS files and
#    a definitions file from the mounted directory
name=amqpbroker-test-operator-$$
launch "$name" AMQPBROKER_DEFAULT_USER=admin AMQPBROKER_DEFAULT_PASS=s3cret AMQPBROKER_DEFAULT_VHOST=app \
  AMQPBROKER_TLS_CERTFILE=/etc/amqpbroker/cert.pem AMQPBROKER_TLS_KEYFILE=/etc/amqpbroker/key.pem \
  AMQPBROKER_TLS_PORT="$amqps" AMQPBROKER_LOAD_DEFINITIONS=/etc/amqpbroker/definitions.json \
  -- --port "$amqp2" --prometheus-port 0 --management-port 0
"$python" - "$amqp2" "$amqps" "$mounted/ca.pem" <<'PY'
import ssl, sys, time
import pika
amqp, amqps, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 30
while True:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(f"amqp://admin:s3cret@127.0.0.1:{amqp}/app"))
        break
    except pika.exceptions.AMQPConnectionError as exc:
        if time.monotonic() > deadline or isinstance(exc, pika.exceptions.ProbableAuthenticationError):
            raise
        time.sleep(0.5)
channel = connection.channel()
assert channel.queue_declare("from-definitions", passive=True).method.message_count == 0
connection.close()
try:
    pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{amqp}/"))
    raise SystemExit("guest logged in although another default user was set")
except pika.exceptions.ProbableAuthenticationError:
    pass
context = ssl.create_default_context(cafile=ca)
parameters = pika.ConnectionParameters("localhost", amqps, "app", pika.PlainCredentials("admin", "s3cret"),
                                       ssl_options=pika.SSLOptions(context, "localhost"))
with pika.BlockingConnection(parameters) as connection:
    connection.channel().queue_declare("from-definitions", passive=True)
print("container: the default user, vhost, TLS files and definitions from the environment and mounts")
PY
echo "docker/test.sh: ok"
