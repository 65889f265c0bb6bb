"""The stream queue type without sockets or a store (sans-IO, through the fake client): appends
with offsets, consumers at their own offsets, credit, RabbitMQ's refusals, filters, retention."""

from __future__ import annotations

from pamqp import commands

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.queue_types import STREAM
from amqpbroker.broker.stream import StreamQueue
from tests.helpers import FakeClient, deliveries

ARGS = {"x-queue-type": "stream"}


def _client() -> FakeClient:
    client = FakeClient(Broker())
    client.open_channel()
    return client


def _stream(client: FakeClient, name: str = "s", **arguments) -> StreamQueue:
    client.declare_queue(name, durable=True, arguments={**ARGS, **arguments})
    queue = client.broker.vhosts["/"].queues[name]
    assert isinstance(queue, StreamQueue) and queue.type is STREAM
    return queue


def _publish(client: FakeClient, name: str, bodies, headers=None) -> None:
    for body in bodies:
        client.publish(1, "", name, body, properties=commands.Basic.Properties(headers=headers))
    client.received()


def test_appends_get_offsets_and_every_consumer_reads_from_its_own() -> None:
    client = _client()
    stream = _stream(client)
    _publish(client, "s", [b"a", b"b", b"c"])
    assert (stream.message_count, stream.log.first, stream.log.next) == (3, 0, 3)
    client.send(commands.Basic.Qos(prefetch_count=10))
    client.received()
    got = deliveries(client.consume("s", "from-first", arguments={"x-stream-offset": "first"}))
    assert [(d.body, d.properties.headers["x-stream-offset"], d.redelivered) for d in got] == \
        [(b"a", 0, False), (b"b", 1, False), (b"c", 2, False)]
    got = deliveries(client.consume("s", "from-1", arguments={"x-stream-offset": 1}))
    assert [d.body for d in got] == [b"b", b"c"]
    assert deliveries(client.consume("s", "from-next")) == []  # the default: next
    _publish(client, "s", [b"d"])  # (the publisher's own frames: drained by _publish)
    assert stream.message_count == 4  # nothing was removed by reading


def test_credit_bounds_a_consumer_and_acks_only_return_it() -> None:
    client = _client()
    stream = _stream(client)
    _publish(client, "s", [b"%d" % i for i in range(5)])
    client.send(commands.Basic.Qos(prefetch_count=2))
    client.received()
    got = deliveries(client.consume("s", "c", arguments={"x-stream-offset": "first"}))
    assert [d.body for d in got] == [b"0", b"1"]
    client.ack(got[-1].tag, multiple=True)
    assert [d.body for d in deliveries(client.received())] == [b"2", b"3"]
    assert stream.message_count == 5 and stream.unacked_count == 2


def test_what_a_stream_refuses() -> None:
    client = _client()
    _stream(client)
    client.send(commands.Basic.Consume(queue="s", consumer_tag="c"))  # no prefetch
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_code == 406 and "consumer prefetch count is not set" in close.reply_text
    client.send(commands.Channel.CloseOk())
    client.open_channel(2)
    client.send(commands.Basic.Get(queue="s"), 2)
    (close,) = client.expect(commands.Connection.Close)
    assert close.reply_code == 540 and close.reply_text.startswith("NOT_IMPLEMENTED - basic.get not supported")


def test_a_nack_closes_the_connection_with_540_and_leaves_the_stream_whole() -> None:
    client = _client()
    stream = _stream(client)
    _publish(client, "s", [b"x"])
    client.send(commands.Basic.Qos(prefetch_count=5))
    client.received()
    (delivery,) = deliveries(client.consume("s", "c", arguments={"x-stream-offset": "first"}))
    client.send(commands.Basic.Nack(delivery_tag=delivery.tag, requeue=True))
    (close,) = client.expect(commands.Connection.Close)
    assert close.reply_code == 540
    assert stream.message_count == 1 and stream.unacked_count == 0


def test_filters_and_unfiltered_messages() -> None:
    client = _client()
    _stream(client)
    for value in ["red", None, "blue", "red"]:
        _publish(client, "s", [f"{value}".encode()], headers={"x-stream-filter-value": value} if value else None)
    client.send(commands.Basic.Qos(prefetch_count=10))
    client.received()
    got = deliveries(client.consume("s", "red", arguments={"x-stream-offset": "first", "x-stream-filter": "red"}))
    assert [d.properties.headers["x-stream-offset"] for d in got] == [0, 3]
    got = deliveries(client.consume("s", "blue+", arguments={"x-stream-offset": "first", "x-stream-filter": ["blue"],
                                                              "x-stream-match-unfiltered": True}))
    assert [d.body for d in got] == [b"None", b"blue"]


def test_retention_by_size_moves_a_consumer_behind_to_the_oldest_message() -> None:
    client = _client()
    stream = _stream(client, **{"x-max-length-bytes": 300, "x-stream-max-segment-size-bytes": 100})
    for i in range(10):  # one chunk (and batch) each: 100 bytes, a segment each
        _publish(client, "s", [bytes(100)])
    assert stream.log.nbytes <= 400 and stream.log.first >= 6
    client.send(commands.Basic.Qos(prefetch_count=50))
    client.received()
    got = deliveries(client.consume("s", "c", arguments={"x-stream-offset": 0}))
    assert got[0].properties.headers["x-stream-offset"] == stream.log.first


def test_a_stream_deleted_in_the_batch_that_appended_leaves_nothing_in_the_store() -> None:
    broker = Broker()
    broker.journal.enabled = True  # (no store writer: the operations stay in the journal to look at)
    client = FakeClient(broker)
    client.open_channel()
    stream = _stream(client)
    client.send_many(client.publish_frames(1, "", "s", b"a"), client.publish_frames(1, "", "s", b"b"),
                     (commands.Queue.Delete(queue="s"), 1))
    client.received()
    ops, _, _ = broker.journal.take()
    tags = [op[0] for op in ops if op is not None and op[0] in ("queue-", "chunk")]
    assert tags == ["queue-"] and stream.deleted
