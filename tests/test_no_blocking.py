"""Nothing blocks the broker's event loop: the whole broker runs in this process under
``blockbuster`` (every blocking call the standard library can make, made on the loop's thread,
raises), while real clients in other threads drive it through paging, page reads, confirms,
transactions, a stream (its segment files written, synced and read), the management API and
/metrics.

blockbuster cannot see RocksDB's C calls: that is why the store is reached only through the
persistence driver (``server/persistence.py``), whose reads and syncs run in worker threads, and
why ``tests/test_store_writer.py`` pins that ``basic.get`` never reads a page on the loop.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.request

import anyio
import pika
import pytest
from blockbuster import blockbuster_ctx

from amqpbroker.config import Config
from amqpbroker.server.lifecycle import serve
from amqpbroker.testing import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _allowed_at_start(blockbuster) -> None:
    """Opening the data directory and recovering happen before anything is served, by design
    (DESIGN.md: recover before serving); the memory alarm's look at /proc/self/statm is a read
    of kernel memory, not of a disk."""
    for name in ("os.mkdir", "os.stat", "os.path.exists", "os.path.isdir", "os.path.isfile", "os.listdir",
                 "os.scandir", "os.unlink", "os.remove", "os.rmdir"):  # (and streams' files checked)
        if name in blockbuster.functions:
            blockbuster.functions[name].can_block_in("amqpbroker/server/lifecycle.py", "open_store")
    for name in ("io.BufferedReader.read", "io.FileIO.read", "os.read"):
        if name in blockbuster.functions:
            blockbuster.functions[name].can_block_in("amqpbroker/server/memory.py", "resident_bytes")


def _http(url: str, method: str = "GET", body: dict | None = None) -> object:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
    return json.loads(data) if data.startswith((b"{", b"[")) else data


def _workload(port: int, management: int, prometheus: int) -> None:
    """What a busy broker does, from a client thread (blocking calls are fine here)."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        channel = connection.channel()
        channel.queue_declare("nb-durable", durable=True)
        channel.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2)
        for index in range(300):  # past the 50-message window: pages written, then read back
            channel.basic_publish("", "nb-durable", f"m{index}".encode(), persistent)
        got = []
        while True:
            method, _, body = channel.basic_get("nb-durable", auto_ack=True)
            if method is None:
                break
            got.append(body)
        assert got == [f"m{index}".encode() for index in range(300)]
        tx = connection.channel()
        tx.tx_select()
        tx.basic_publish("", "nb-durable", b"in a transaction", persistent)
        tx.tx_commit()
        _http(f"http://127.0.0.1:{management}/api/overview")
        assert any(q["name"] == "nb-durable" for q in _http(f"http://127.0.0.1:{management}/api/queues"))
        _http(f"http://127.0.0.1:{management}/api/queues/%2F/nb-durable/get", "POST",
              {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"})
        with urllib.request.urlopen(f"http://127.0.0.1:{prometheus}/metrics", timeout=10) as response:
            assert b"rabbitmq_queue_messages" in response.read()
        channel.queue_delete("nb-durable")
        _stream_workload(connection, port)
    finally:
        connection.close()


def _stream_workload(connection: pika.BlockingConnection, port: int) -> None:
    """A stream written with confirms past its tail (the 50-message window), then read from
    ``first``: segment files written and synced, and read, by worker threads only."""
    channel = connection.channel()
    channel.queue_declare("nb-stream", durable=True, arguments={"x-queue-type": "stream"})
    channel.confirm_delivery()
    for index in range(300):
        channel.basic_publish("", "nb-stream", f"s{index}".encode())
    reader = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        consuming = reader.channel()
        consuming.basic_qos(prefetch_count=100)
        got = []
        for method, _, body in consuming.consume("nb-stream", arguments={"x-stream-offset": "first"},
                                                 inactivity_timeout=10):
            assert method is not None, f"only {len(got)} of 300 read back"
            got.append(body)
            consuming.basic_ack(method.delivery_tag)
            if len(got) == 300:
                break
        assert got == [f"s{index}".encode() for index in range(300)]
    finally:
        reader.close()
    channel.queue_delete("nb-stream")


async def test_the_event_loop_never_blocks(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    port, management, prometheus = free_port(), free_port(), free_port()
    config = Config(host="127.0.0.1", port=port, data_dir=str(tmp_path), management_host="127.0.0.1",
                    management_port=management, prometheus_host="127.0.0.1", prometheus_port=prometheus,
                    queue_window_messages=50, memory_high_watermark=0.9)
    with blockbuster_ctx("amqpbroker") as blockbuster:
        _allowed_at_start(blockbuster)
        async with anyio.create_task_group() as group:
            await group.start(serve, config)
            await anyio.to_thread.run_sync(_workload, port, management, prometheus)
            group.cancel_scope.cancel()
    ours = [record for record in caplog.records if record.name.startswith("amqpbroker")]
    assert [record.getMessage() for record in ours if "BlockingError" in record.getMessage()] == []
    assert [record.getMessage() for record in ours if record.levelno >= logging.ERROR] == []
