"""The store writer without sockets: a failing disk turns into nacks, and paging through a real
RocksDB store (the sans-IO broker driven by FakeClient, the writer's flush called as the
transport's batches do)."""

from __future__ import annotations

import pytest
from pamqp import commands
from pamqp.commands import Basic

from amqpbroker.broker.broker import Broker
from amqpbroker.store.base import StoreError
from amqpbroker.store.rocks import RocksStore
from amqpbroker.server.persistence import StoreWriter
from tests.helpers import FakeClient

PERSISTENT = commands.Basic.Properties(delivery_mode=2)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FullDisk:
    """A store whose every write fails, as with ENOSPC."""

    def write(self, ops: list[tuple]) -> None:
        raise StoreError("No space left on device")

    def write_pages(self, pages: list[tuple]) -> None:
        raise StoreError("No space left on device")

    def sync(self) -> None:
        raise StoreError("No space left on device")


async def test_a_failed_write_nacks_persistent_publishes_and_transient_traffic_goes_on(caplog):
    broker = Broker()
    broker.journal.enabled = True
    StoreWriter(FullDisk(), broker)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("orders", durable=True)
    client.send(commands.Confirm.Select(), 1)
    client.expect(commands.Confirm.SelectOk)
    client.publish(1, "", "orders", b"first", PERSISTENT)
    (nack,) = client.expect(Basic.Nack)
    assert nack.delivery_tag == 1
    assert "the store failed" in caplog.text
    client.publish(1, "", "orders", b"second", PERSISTENT)
    (nack,) = client.expect(Basic.Nack)
    assert nack.delivery_tag == 2
    client.publish(1, "", "orders", b"transient")
    (ack,) = client.expect(Basic.Ack)
    assert ack.delivery_tag == 3
    client.send(commands.Basic.Get(queue="orders", no_ack=True))
    assert not client.closed


async def test_a_queue_past_its_window_pages_out_and_basic_get_reads_it_back_in_order(tmp_path):
    broker = Broker(paging_window=(10, 0))
    store = RocksStore(str(tmp_path / "db"))
    try:
        broker.journal.enabled = True
        StoreWriter(store, broker)
        client = FakeClient(broker)
        client.open_channel()
        client.declare_queue("backlog")
        for index in range(100):
            client.publish(1, "", "backlog", f"m{index}".encode())
        queue = broker.vhosts["/"].queues["backlog"]
        assert (len(queue.ready), queue.paged, queue.message_count) == (10, 90, 100)
        got = []
        for _ in range(100):
            client.send(commands.Basic.Get(queue="backlog", no_ack=True))
            frames = client.received()
            got.append(frames[-1][1].value)
        assert got == [f"m{index}".encode() for index in range(100)]
        assert queue.message_count == 0
        client.send(commands.Basic.Get(queue="backlog", no_ack=True))
        client.expect(Basic.GetEmpty)
    finally:
        store.close()


class RecordingStore:
    """A store that keeps what it was asked to write; nothing is synced unless the test says so."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    def write(self, ops: list[tuple]) -> None:
        self.ops.extend(op for op in ops if op is not None)

    def write_pages(self, pages: list[tuple]) -> None:
        pass

    def sync(self) -> None:
        pass


async def test_a_persistent_message_consumed_before_it_was_written_is_confirmed_without_a_write():
    broker = Broker()
    broker.journal.enabled = True
    store = RecordingStore()
    writer = StoreWriter(store, broker)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("fast", durable=True)
    client.send(commands.Confirm.Select(), 1)
    client.expect(commands.Confirm.SelectOk)
    client.publish(1, "", "fast", b"parked", PERSISTENT)  # nobody consumes: waits for the sync
    assert client.methods() == []
    assert [op[0] for op in store.ops] == ["queue", "message", "entry"]
    client.send(commands.Basic.Consume(queue="fast", consumer_tag="c", no_ack=True), 1)
    client.publish(1, "", "fast", b"taken at once", PERSISTENT)
    # both delivered; only the second is confirmed, and the store never saw it
    assert [type(frame) for _, frame in client.methods()] == [Basic.ConsumeOk, Basic.Deliver, Basic.Deliver, Basic.Ack]
    assert [op[0] for op in store.ops] == ["queue", "message", "entry", "entry-", "message-"]
    await writer.drain()  # the sync the first one waited for
    (ack,) = client.expect(Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (1, False)


async def test_only_basic_get_reads_a_page_on_the_spot_never_the_timer(tmp_path):
    """A TTL queue's timer looks at the in-memory head only; the paged-out part comes back
    through the page reader, not through a RocksDB read on the loop every tick."""
    broker = Broker(paging_window=(10, 0))
    store = RocksStore(str(tmp_path / "db"))
    try:
        broker.journal.enabled = True
        writer = StoreWriter(store, broker)
        client = FakeClient(broker)
        client.open_channel()
        client.declare_queue("timed", arguments={"x-message-ttl": 60_000})
        for index in range(30):
            client.publish(1, "", "timed", f"m{index}".encode())
        queue = broker.vhosts["/"].queues["timed"]
        reads = []
        broker.journal.read_page_now = lambda q: (reads.append(q.name), writer.read_page_now(q))
        while queue.ready:
            queue.get()
        assert (queue.paged, reads) == (20, [])
        broker.tick(queue.host.clock())
        assert reads == []  # the timer did not read
        entry = queue.get()
        assert reads == ["timed"] and entry[1].body == b"m10"
    finally:
        store.close()
