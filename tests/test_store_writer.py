"""The store writer without sockets: a failing disk turns into nacks, and paging through a real
RocksDB store (the sans-IO broker driven by FakeClient, the writer's flush called as the
transport's batches do)."""

from __future__ import annotations

import time

import anyio
import pytest
from pamqp import commands, frame as pamqp_frame
from pamqp.commands import Basic

from amqpbroker.broker.broker import Broker
from amqpbroker.store.base import StoreError
from amqpbroker.store.rocks import RocksStore
from amqpbroker.server.persistence import StoreWriter
from tests.helpers import FakeClient, deliveries

PERSISTENT = commands.Basic.Properties(delivery_mode=2)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _get(client: FakeClient, queue: str) -> list:
    """basic.get (autoack), waiting for the answer while the page reader works."""
    client.send(commands.Basic.Get(queue=queue, no_ack=True))
    with anyio.fail_after(5):
        while not client.session.out:
            await anyio.sleep(0.005)
    return client.received()


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
    assert "store alarm" in caplog.text and broker.store_alarm
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
        writer = StoreWriter(store, broker)
        client = FakeClient(broker)
        client.open_channel()
        client.declare_queue("backlog")
        for index in range(100):
            client.publish(1, "", "backlog", f"m{index}".encode())
        queue = broker.vhosts["/"].queues["backlog"]
        assert (len(queue.ready), queue.paged, queue.message_count) == (10, 90, 100)
        got = []
        async with anyio.create_task_group() as group:
            group.start_soon(writer.run_pages)
            for _ in range(100):
                got.append((await _get(client, "backlog"))[-1][1].value)
            group.cancel_scope.cancel()
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


async def test_basic_get_on_a_paged_queue_waits_for_the_page_reader_never_reads_on_the_loop(tmp_path):
    """The timer and basic.get look at the in-memory head only; the paged-out part comes back
    through the page reader (a worker thread). A get whose answer needs it is deferred, and what
    the client sent after it waits, in order."""
    broker = Broker(paging_window=(10, 0))
    store = RocksStore(str(tmp_path / "db"))
    reads = []
    read_page = store.read_page
    store.read_page = lambda *args: (reads.append(args), read_page(*args))[1]
    try:
        broker.journal.enabled = True
        writer = StoreWriter(store, broker)
        client = FakeClient(broker)
        client.open_channel()
        client.declare_queue("timed", arguments={"x-message-ttl": 60_000})
        for index in range(30):
            client.publish(1, "", "timed", f"m{index}".encode())
        queue = broker.vhosts["/"].queues["timed"]
        while queue.ready:
            queue.get()
        broker.tick(queue.host.clock())
        assert queue.paged == 20 and reads == []  # neither the timer nor get read on the loop
        client.send_many((commands.Basic.Get(queue="timed", no_ack=True), 1),
                         (commands.Queue.Declare(queue="timed", passive=True), 1))
        assert client.methods() == [] and reads == []  # deferred, and the declare waits behind it
        async with anyio.create_task_group() as group:
            group.start_soon(writer.run_pages)
            with anyio.fail_after(5):
                while not client.session.out:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()
        frames = client.methods()
        assert [type(frame) for _, frame in frames] == [Basic.GetOk, commands.Queue.DeclareOk]
        assert len(reads) == 1
    finally:
        store.close()


class FlakyStore:
    """A real RocksDB store whose writes, syncs, page writes or page reads fail while told to."""

    def __init__(self, path: str) -> None:
        self.real = RocksStore(path)
        self.failing: set[str] = set()

    def _maybe_fail(self, what: str) -> None:
        if what in self.failing:
            raise StoreError(f"{what}: No space left on device")

    def write(self, ops):
        self._maybe_fail("write")
        self.real.write(ops)

    def write_pages(self, pages):
        self._maybe_fail("write_pages")
        self.real.write_pages(pages)

    def sync(self):
        self._maybe_fail("sync")
        self.real.sync()

    def read_page(self, *args):
        self._maybe_fail("read_page")
        return self.real.read_page(*args)

    def read_stream(self, *args):
        self.stream_reads = getattr(self, "stream_reads", 0) + 1
        self._maybe_fail("read_stream")
        return self.real.read_stream(*args)


def _recovered(path) -> Broker:
    from amqpbroker.broker.recovery import restore
    broker = Broker()
    store = RocksStore(path)
    try:
        restore(broker, store)
    finally:
        store.close()
    return broker


async def test_the_store_alarm_blocks_publishers_and_clears_itself_keeping_every_operation(tmp_path, monkeypatch):
    import amqpbroker.server.persistence as persistence
    monkeypatch.setattr(persistence, "RETRY_SECONDS", 0.01)
    path = str(tmp_path / "db")
    store = FlakyStore(path)
    broker = Broker()
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    client = FakeClient(broker, capabilities={"connection.blocked": True, "publisher_confirms": True})
    client.open_channel()
    client.send(commands.Confirm.Select(), 1)
    client.expect(commands.Confirm.SelectOk)
    store.failing = {"write", "sync"}
    client.declare_queue("kept", durable=True)  # its definition is in the failed batch
    client.publish(1, "", "kept", b"m1", PERSISTENT)
    frames = [type(frame) for _, frame in client.methods()]
    assert frames == [commands.Connection.Blocked, Basic.Nack]
    assert broker.store_alarm and broker.journal.failed
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        group.start_soon(writer.run_retries)
        await anyio.sleep(0.05)
        assert broker.store_alarm  # still failing: still on
        store.failing = set()
        with anyio.fail_after(5):
            while broker.store_alarm:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert [type(frame) for _, frame in client.methods()] == [commands.Connection.Unblocked]
    client.publish(1, "", "kept", b"m2", PERSISTENT)
    await writer.drain()
    assert [type(frame) for _, frame in client.methods()] == [Basic.Ack]
    store.real.close()
    queue = _recovered(path).vhosts["/"].queues["kept"]  # the failed batch was written after all
    assert [entry[1].body for entry in queue.ready] == [b"m1", b"m2"]


async def test_failed_page_writes_and_reads_never_drop_a_message(tmp_path, monkeypatch):
    import amqpbroker.server.persistence as persistence
    monkeypatch.setattr(persistence, "RETRY_SECONDS", 0.01)
    store = FlakyStore(str(tmp_path / "db"))
    broker = Broker(paging_window=(10, 0))
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("backlog")
    store.failing = {"write_pages"}
    for index in range(100):
        client.publish(1, "", "backlog", f"m{index}".encode())
    queue = broker.vhosts["/"].queues["backlog"]
    assert queue.message_count == 100
    got = []
    empties = 0
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run_pages)
        group.start_soon(writer.run_retries)
        for index in range(100):
            if index == 10:
                store.failing = {"read_page"}  # the pages are written now; reading them fails
            frames = await _get(client, "backlog")
            while isinstance(frames[0][1], Basic.GetEmpty):  # a failed read answers "empty" for now
                empties += 1
                store.failing = set()
                frames = await _get(client, "backlog")
            got.append(frames[-1][1].value)
        group.cancel_scope.cancel()
    assert got == [f"m{index}".encode() for index in range(100)] and empties >= 1
    store.real.close()


async def test_a_definition_the_store_cannot_hold_is_the_clients_406_before_anything_changes(tmp_path):
    from amqpbroker.errors import ChannelError
    path = str(tmp_path / "db")
    store = RocksStore(path)
    broker = Broker()
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    vhost = broker.vhosts["/"]
    with pytest.raises(ChannelError) as info:  # a management PUT with a JSON integer >= 2^63
        vhost.declare_queue("huge", passive=False, durable=True, exclusive=False, auto_delete=False,
                            arguments={"x-custom": 2 ** 63}, owner=None)
    assert info.value.reply_code == 406 and "huge" not in vhost.queues and not broker.journal.ops
    client = FakeClient(broker)
    client.open_channel()
    # a non-UTF-8 longstr argument (pamqp decodes it to bytes): RabbitMQ takes it, so do we
    raw = commands.Queue.Declare(queue="binary", durable=True, arguments={"x-tag": "PLACEHOLDER"})
    frame = pamqp_frame.marshal(raw, 1).replace(b"PLACEHOLDER", b"\xff\xfeACEHOLDER")
    client.feed(frame)
    client.expect(commands.Queue.DeclareOk)
    await writer.drain()
    assert not broker.store_alarm
    store.close()
    recovered = _recovered(path).vhosts["/"].queues["binary"]
    assert recovered.arguments["x-tag"] == b"\xff\xfeACEHOLDER"


async def test_tx_commit_ok_waits_until_the_committed_persistent_messages_are_synced(tmp_path):
    store = RecordingStore()
    synced = []
    store.sync = lambda: synced.append(len(store.ops))
    broker = Broker()
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("txq", durable=True)
    client.send(commands.Tx.Select())
    client.expect(commands.Tx.SelectOk)
    client.publish(1, "", "txq", b"committed", PERSISTENT)
    client.send_many((commands.Tx.Commit(), 1), (commands.Queue.Declare(queue="txq", passive=True), 1))
    assert client.methods() == [] and synced == []  # written, not synced: no commit-ok yet
    await writer.drain()
    assert synced and [type(frame) for _, frame in client.methods()] == [commands.Tx.CommitOk,
                                                                        commands.Queue.DeclareOk]


class SwitchableStore:
    """Writes fail while ``failing``; nothing is kept."""

    failing = False

    def write(self, ops):
        if self.failing:
            raise StoreError("No space left on device")

    def write_pages(self, pages):
        pass

    def sync(self):
        pass


async def test_a_commit_waiting_for_a_sync_is_released_when_a_later_failure_clears(monkeypatch):
    import amqpbroker.server.persistence as persistence
    monkeypatch.setattr(persistence, "RETRY_SECONDS", 0.01)
    broker = Broker()
    broker.journal.enabled = True
    store = SwitchableStore()
    writer = StoreWriter(store, broker)
    a = FakeClient(broker)
    a.open_channel()
    a.declare_queue("q", durable=True)
    a.send(commands.Tx.Select())
    a.expect(commands.Tx.SelectOk)
    a.publish(1, "", "q", b"m", PERSISTENT)
    a.send_many((commands.Tx.Commit(), 1), (commands.Queue.Declare(queue="q", passive=True), 1))
    assert a.connection.paused  # commit-ok waits for the next sync
    b = FakeClient(broker)
    b.open_channel()
    store.failing = True
    b.publish(1, "", "q", b"n", PERSISTENT)  # this batch's write fails: the store alarm
    assert broker.store_alarm
    store.failing = False
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        group.start_soon(writer.run_retries)
        with anyio.fail_after(5):
            while broker.store_alarm or a.connection.paused:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert [type(frame) for _, frame in a.methods()] == [commands.Tx.CommitOk, commands.Queue.DeclareOk]


async def test_overlapping_pauses_release_the_input_only_when_all_are_over():
    """9 MiB of returns at commit (the output bound) and a commit waiting for its sync: the
    declare sent after the commit is answered after the commit-ok, not when the returns went."""
    broker = Broker()
    broker.journal.enabled = True
    writer = StoreWriter(RecordingStore(), broker)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("q", durable=True)
    client.send(commands.Tx.Select())
    client.expect(commands.Tx.SelectOk)
    for _ in range(9):  # mandatory and unroutable: returned at commit
        client.publish(1, "", "nowhere", b"x" * (1 << 20), mandatory=True, body_frame_size=100_000)
    client.publish(1, "", "q", b"durable", PERSISTENT)
    client.send_many((commands.Tx.Commit(), 1), (commands.Queue.Declare(queue="q", passive=True), 1))
    session = client.session
    assert session.paused_for_output and client.connection.paused
    client.received()
    session.out_bytes = 0
    session.output_drained()  # the transport sent the returns: the commit still holds the input
    assert client.methods() == [] and client.connection.paused
    await writer.drain()
    assert [type(frame) for _, frame in client.methods()] == [commands.Tx.CommitOk, commands.Queue.DeclareOk]


async def test_a_durable_queues_paged_part_is_not_read_while_its_writes_wait_for_the_store(
        monkeypatch, tmp_path):
    import amqpbroker.server.persistence as persistence
    monkeypatch.setattr(persistence, "RETRY_SECONDS", 0.01)
    store = FlakyStore(str(tmp_path / "db"))
    broker = Broker(paging_window=(4, 0))
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("dq", durable=True)
    store.failing = {"write", "sync"}
    for index in range(10):  # transient, into a durable queue: 6 of them paged out (inline)
        client.publish(1, "", "dq", f"b{index}".encode())
    assert broker.store_alarm
    queue = broker.vhosts["/"].queues["dq"]
    got = []
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        group.start_soon(writer.run_pages)
        group.start_soon(writer.run_retries)
        for _ in range(4):
            got.append((await _get(client, "dq"))[-1][1].value)
        store.failing = set()  # space again: the paged part is written, then read
        for _ in range(6):
            frames = await _get(client, "dq")
            while isinstance(frames[0][1], Basic.GetEmpty):
                frames = await _get(client, "dq")
            got.append(frames[-1][1].value)
        group.cancel_scope.cancel()
    assert got == [f"b{index}".encode() for index in range(10)] and queue.message_count == 0
    store.real.close()


async def _stream_in_alarm(path: str, monkeypatch, body: bytes):
    """A stream ``log`` with confirms on, and the store alarm on: a failed write of ``body``
    (transient: a stream stores it anyway), nacked. Retries every 10 ms."""
    import amqpbroker.server.persistence as persistence
    monkeypatch.setattr(persistence, "RETRY_SECONDS", 0.01)
    store = FlakyStore(path)
    broker = Broker()
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    client = FakeClient(broker)
    client.open_channel()
    client.send(commands.Confirm.Select(), 1)
    client.expect(commands.Confirm.SelectOk)
    client.declare_queue("log", durable=True, arguments={"x-queue-type": "stream"})
    await writer.drain()
    store.failing = {"write"}
    client.publish(1, "", "log", body)
    assert [type(frame) for _, frame in client.methods()] == [Basic.Nack]
    return store, broker, writer, client


async def test_a_stream_s_appends_during_the_store_alarm_are_nacked_kept_and_written_once_it_clears(tmp_path, monkeypatch):
    """Streams store every message: while the store fails, appends are nacked (the publisher may
    publish again) yet kept in order, and written when the store works again; a restart finds
    them and the chunk index that covers them."""
    path = str(tmp_path / "db")
    store, broker, writer, client = await _stream_in_alarm(path, monkeypatch, b"during")
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        group.start_soon(writer.run_retries)
        store.failing = set()
        with anyio.fail_after(5):
            while broker.store_alarm:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    client.publish(1, "", "log", b"after")
    await writer.drain()
    assert [type(frame) for _, frame in client.methods()] == [Basic.Ack]
    store.real.close()
    stream = _recovered(path).vhosts["/"].queues["log"]
    assert (stream.log.first, stream.log.next, stream.log.chunk_count) == (0, 2, 2)


async def test_a_retry_whose_sync_fails_writes_nothing_twice(tmp_path, monkeypatch):
    """While the store alarm is on, a retry whose write works and whose sync fails must not
    write the same operations again at the next try: a stream's chunk would be appended twice."""
    path = str(tmp_path / "db")
    store, broker, writer, client = await _stream_in_alarm(path, monkeypatch, b"during")
    writes = []
    real_write = store.real.write
    monkeypatch.setattr(store.real, "write", lambda ops: (writes.append(len(ops)), real_write(ops))[1])
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        group.start_soon(writer.run_retries)
        store.failing = {"sync"}  # the retries write, then fail to sync, several times
        await anyio.sleep(0.2)
        store.failing = set()
        with anyio.fail_after(5):
            while broker.store_alarm:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert writes == [1]  # the chunk, once
    client.publish(1, "", "log", b"after")
    await writer.drain()
    store.real.close()
    stream = _recovered(path).vhosts["/"].queues["log"]
    assert (stream.log.first, stream.log.next, stream.log.chunk_count) == (0, 2, 2)
    store = RocksStore(path)
    try:
        included, _ = store.read_stream(stream.queue_id, 0, 10, 1 << 20, None, False)
        assert [message.body for _, message in included] == [b"during", b"after"]
    finally:
        store.close()


async def test_a_failing_stream_read_is_tried_again_once_a_second_and_the_consumer_then_gets_everything(tmp_path, caplog):
    """A store read that fails for a consumer behind a stream's tail: logged, nothing delivered
    wrong, not asked for again before a second has passed (no flood), and the consumer gets every
    message once the store reads again; another stream is served meanwhile."""
    store = FlakyStore(str(tmp_path / "db"))
    broker = Broker()
    broker.journal.paging_window = (4, 1 << 20)  # a stream keeps its newest 4 messages in memory
    broker.journal.enabled = True
    writer = StoreWriter(store, broker)
    client = FakeClient(broker)
    client.open_channel()
    for name in ("far", "near"):
        client.declare_queue(name, durable=True, arguments={"x-queue-type": "stream"})
    for index in range(20):
        client.publish(1, "", "far", b"%d" % index)
    client.received()
    await writer.drain()
    store.failing = {"read_stream"}
    client.send(commands.Basic.Qos(prefetch_count=50))
    client.received()
    client.send(commands.Basic.Consume(queue="far", consumer_tag="behind", arguments={"x-stream-offset": "first"}))
    client.send(commands.Basic.Consume(queue="near", consumer_tag="live"))
    client.received()
    got: list[int] = []
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run_pages)
        started = anyio.current_time()
        while anyio.current_time() - started < 0.6:  # the broker's ticks, as its timer runs them
            broker.tick(time.time())
            client.publish(1, "", "near", b"live")  # (each publish is a batch: dispatch runs)
            got += [d.properties.headers["x-stream-offset"] for d in deliveries(client.received())
                    if d.method.consumer_tag == "behind"]
            await anyio.sleep(0.02)
        assert store.stream_reads == 1 and got == []  # one failed read in 0.6 s, not one per batch
        assert "reading messages for consumer" in caplog.text
        store.failing = set()
        with anyio.fail_after(5):
            while len(got) < 20:
                broker.tick(time.time())
                got += [d.properties.headers["x-stream-offset"] for d in deliveries(client.received())
                        if d.method.consumer_tag == "behind"]
                await anyio.sleep(0.02)
        group.cancel_scope.cancel()
    assert got == list(range(20))
    store.real.close()
