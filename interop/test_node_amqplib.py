"""Node's amqplib (callback API) against the broker: programs written for RabbitMQ finish here too."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from interop.support import Cleanup, connect

NODE_DIR = Path(__file__).parent / "node"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "amqplib").is_dir(),
    reason="needs node and amqplib (cd interop/node && npm ci; .ci/run does it)")


def test_amqplib_publish_then_close_finishes(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    """After close-ok the broker waits for the client to close the socket, discarding what still
    arrives, as RabbitMQ does: amqplib's close overtakes its queued publishes, and a socket
    closed at once reset it and left the program hanging without its close callback."""
    queue = cleanup.queue(f"{unique}-amqplib")
    result = subprocess.run(["node", str(NODE_DIR / "publish_then_close.js"), amqp_url, queue, "2000"],
                            capture_output=True, text=True, timeout=30, env={**os.environ})
    assert (result.returncode, result.stdout.strip()) == (0, "closed"), result.stderr
    with connect(amqp_url) as connection:
        declared = connection.channel().queue_declare(queue, passive=True)
        assert declared.method.message_count <= 2000


def test_amqplib_writes_a_stream_and_replays_it_twice(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    """A stream as amqplib programs use one: confirms, a prefetch, manual acks, x-stream-offset."""
    import json

    stream = cleanup.queue(f"{unique}-stream")
    result = subprocess.run(["node", str(NODE_DIR / "stream_replay.js"), amqp_url, stream, "50"],
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode == 0, result.stderr
    read = json.loads(result.stdout)
    start = read["first"][0]
    assert read["first"] == read["second"] == list(range(start, start + 50))
