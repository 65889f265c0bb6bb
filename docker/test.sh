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
ss=[socket.socket() for _ in range(3)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')
read -r amqp metrics management <<<"$ports"
# Run it on the host network. Where the container runtime cannot start containers (this
# workplace's sandbox refuses setrlimit(RLIMIT_NPROC), which runc and crun both make), run the
# image's own root filesystem under chroot as its user instead: the same files, the same command.
health=(podman exec "$name" /opt/amqpbroker/bin/amqpbroker diagnostics ping --port "$amqp")
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; rm -rf "${rootfs:-/nonexistent}"; }
trap cleanup EXIT
if ! podman run -d --rm --network host --name "$name" "$image" \
    --port "$amqp" --prometheus-port "$metrics" --management-port "$management" >/dev/null 2>"$0.err.$$"; then
  grep -qi rlimit "$0.err.$$" || { cat "$0.err.$$" >&2; rm -f "$0.err.$$"; exit 1; }
  echo "docker/test.sh: podman cannot start containers here ($(grep -oi 'setrlimit[^:]*' "$0.err.$$" | head -1 || echo rlimit));" \
       "running the image's filesystem under chroot instead" >&2
  container=$(buildah from "$image")
  root=$(buildah mount "$container")
  env=$(podman image inspect --format '{{range .Config.Env}}{{.}} {{end}}' "$image")
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  # shellcheck disable=SC2086  # env is a list of NAME=value words
  chroot --userspec="$user" "$root" /usr/bin/env -i $env HOME=/var/lib/amqpbroker /opt/amqpbroker/bin/amqpbroker \
    --port "$amqp" --prometheus-port "$metrics" --management-port "$management" &
  runner=$!
  health=(chroot --userspec="$user" "$root" /opt/amqpbroker/bin/amqpbroker diagnostics ping --port "$amqp")
  cleanup() { kill "$runner" 2>/dev/null; wait "$runner" 2>/dev/null; buildah umount "$container" >/dev/null;
              buildah rm "$container" >/dev/null; rm -rf "${rootfs:-/nonexistent}"; }
fi
rm -f "$0.err.$$"

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
"${health[@]}"
echo "docker/test.sh: ok"
