"""The transport (one task group per connection) around deferred replies, on loopback sockets:
the broker's own connection handler, an in-process broker and store."""

from __future__ import annotations

import asyncio
import time

import anyio
import anyio.abc
import pytest
from pamqp import body as pamqp_body, commands, frame as pamqp_frame, header as pamqp_header

from amqpbroker.broker.broker import Broker
from amqpbroker.server.persistence import StoreWriter
from amqpbroker.server import transport as transport_module
from amqpbroker.server.transport import direct_transport, serve_connection
from amqpbroker.store.rocks import RocksStore
from tests.helpers import FakeClient, decode_frames, plain_response

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _handshake(stream, heartbeat: int = 0) -> None:
    async def send(method, channel=0):
        await stream.send(pamqp_frame.marshal(method, channel))
    await stream.send(pamqp_header.ProtocolHeader().marshal())
    await stream.receive()
    await send(commands.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                           response=plain_response(), locale="en_US"))
    await stream.receive()
    await send(commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=heartbeat))
    await send(commands.Connection.Open(virtual_host="/"))
    await stream.receive()
    await send(commands.Channel.Open(), 1)
    await stream.receive()


async def test_a_close_sent_behind_a_deferred_get_gets_the_get_ok_and_the_close_ok(tmp_path) -> None:
    """basic.get (its page read takes a moment) and connection.close in one write: when the get is
    answered, the held close is handled too; both answers must still reach the client (autoack:
    a get-ok lost on the way would be a lost message)."""
    broker = Broker(paging_window=(10, 0))
    broker.journal.enabled = True
    store = RocksStore(str(tmp_path / "db"))
    writer = StoreWriter(store, broker)
    read_page = store.read_page
    store.read_page = lambda *args: (time.sleep(0.3), read_page(*args))[1]
    setup = FakeClient(broker)
    setup.open_channel()
    setup.declare_queue("backlog")
    for index in range(30):
        setup.publish(1, "", "backlog", f"m{index}".encode())
    queue = broker.vhosts["/"].queues["backlog"]
    while queue.ready:
        queue.get()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, lambda stream: serve_connection(stream, broker))
            group.start_soon(writer.run)
            group.start_soon(writer.run_pages)
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await _handshake(stream)
            await stream.send(pamqp_frame.marshal(commands.Basic.Get(queue="backlog", no_ack=True), 1)
                              + pamqp_frame.marshal(commands.Connection.Close(
                                  reply_code=200, reply_text="bye", class_id=0, method_id=0), 0))
            got = b""
            with anyio.move_on_after(5):
                try:
                    while not got.endswith(pamqp_frame.marshal(commands.Connection.CloseOk(), 0)):
                        got += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            await stream.aclose()
            group.cancel_scope.cancel()
    finally:
        store.close()
    kinds = [type(frame).__name__ for _, frame in decode_frames(got)]
    assert kinds[0] == "GetOk" and kinds[-1] == "CloseOk", kinds


async def test_one_large_write_handled_in_slices_is_all_handled_without_more_input() -> None:
    """1,000 publishes with confirms in one write: the transport handles them a slice per turn
    of the loop; every one must be confirmed although the client sends nothing more (a
    publisher waiting for its confirms would otherwise wait for ever)."""
    broker = Broker()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    publish = FakeClient(broker, handshake=False).publish_frames(1, "", "sliced", b"x" * 100)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, lambda stream: serve_connection(stream, broker))
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await _handshake(stream)
        await stream.send(pamqp_frame.marshal(commands.Queue.Declare(queue="sliced"), 1)
                          + pamqp_frame.marshal(commands.Confirm.Select(), 1))
        await stream.receive()
        await stream.send(publish * 1000)
        confirmed = 0
        got = b""
        with anyio.move_on_after(10):
            while confirmed < 1000:
                got += await stream.receive()
                acks = [frame for _, frame in decode_frames(got) if isinstance(frame, commands.Basic.Ack)]
                confirmed = max((ack.delivery_tag for ack in acks), default=0)
        await stream.aclose()
        group.cancel_scope.cancel()
    assert confirmed == 1000
    assert broker.vhosts["/"].queues["sliced"].message_count == 1000


async def test_a_plain_tcp_stream_is_written_to_directly() -> None:
    """Output goes straight to the asyncio transport under anyio's stream (no task switch per
    write): an anyio upgrade that hides it must fail here, not silently slow every delivery."""
    found = []

    async def handle(stream) -> None:
        found.append(direct_transport(stream))
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        stream = await anyio.connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5):
            while not found:
                await anyio.sleep(0.01)
        await stream.aclose()
        group.cancel_scope.cancel()
    assert isinstance(found[0], asyncio.WriteTransport)
    assert direct_transport(object()) is None  # a stream without one: the writer task sends all


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writer-only"])
async def test_a_consumer_that_stops_reading_gets_every_delivery_once_in_order(monkeypatch, direct) -> None:
    """Deliveries written straight to the socket while it has room, and by the writer once it is
    full (the client not reading): none lost, none doubled, none out of order; the same with every
    write going through the writer task."""
    if not direct:
        monkeypatch.setattr(transport_module, "direct_transport", lambda stream: None)
    broker = Broker()
    publisher = FakeClient(broker)
    publisher.open_channel()
    publisher.declare_queue("unread")
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    count, size = 500, 32768
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, lambda stream: serve_connection(stream, broker))
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await _handshake(stream)
        await stream.send(pamqp_frame.marshal(commands.Basic.Consume(queue="unread", no_ack=True), 1))
        got = bytearray(await stream.receive())
        for index in range(count):  # 16 MB while the client reads nothing: the socket fills
            publisher.publish(1, "", "unread", index.to_bytes(4, "big") * (size // 4))
            if index % 50 == 0:
                await anyio.sleep(0)
        await anyio.sleep(0.2)
        # the broker stopped writing (its output bounded), not buffering the queue for the socket
        held_back = broker.vhosts["/"].queues["unread"].message_count
        with anyio.fail_after(20):
            while True:  # until the broker has nothing more to send for half a second
                with anyio.move_on_after(0.5) as quiet:
                    got += await stream.receive(1 << 20)
                if quiet.cancel_called:
                    break
        await stream.aclose()
        group.cancel_scope.cancel()
    frames = [frame for _, frame in decode_frames(got)]
    tags = [frame.delivery_tag for frame in frames if isinstance(frame, commands.Basic.Deliver)]
    bodies = [frame.value for frame in frames if isinstance(frame, pamqp_body.ContentBody)]
    assert held_back > count // 10  # (the kernel takes about 10 MB on loopback)
    assert tags == list(range(1, count + 1))
    assert [body[:4] for body in bodies] == [index.to_bytes(4, "big") for index in range(count)]
    assert all(len(body) == size for body in bodies)
