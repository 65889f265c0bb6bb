"""The transport (one task group per connection) around deferred replies, on loopback sockets:
the broker's own connection handler, an in-process broker and store."""

from __future__ import annotations

import time

import anyio
import anyio.abc
import pytest
from pamqp import commands, frame as pamqp_frame, header as pamqp_header

from amqpbroker.broker.broker import Broker
from amqpbroker.server.persistence import StoreWriter
from amqpbroker.server.transport import serve_connection
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
