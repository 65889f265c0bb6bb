"""``Channel.deliver_stream`` hands a stream consumer many messages at once; it must write byte
for byte what :meth:`Channel.deliver` writes one message at a time, record the same unacked
deliveries and counts, and stop where ``can_send`` would have stopped (hypothesis, sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import commands

from amqpbroker.broker import channel as channel_module
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.channel import Channel
from amqpbroker.broker.message import Message
from amqpbroker.broker.stream_reads import Run, SharedRead
from amqpbroker.codec.content import encode_content_header
from amqpbroker.codec.methods import shortstr
from tests.helpers import FakeClient, deliveries

FRAME_MAX = 4096


def _consumer(frame_max: int = FRAME_MAX):
    client = FakeClient(Broker(), frame_max=frame_max)
    client.open_channel()
    client.declare_queue("s", durable=True, arguments={"x-queue-type": "stream"})
    client.send(commands.Basic.Qos(prefetch_count=1000))
    client.received_bytes()
    client.consume("s", "reader")
    client.received_bytes()
    channel = client.session.channels[1]
    return client, channel, channel.consumers["reader"], client.broker.vhosts["/"].queues["s"]


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, bytes]:
    """A message as the store gives it back (``Message``) and a header with its offset; bodies
    around the one-frame limit, sometimes empty, two routings."""
    size = draw(st.sampled_from([1, 1, 5, 0, FRAME_MAX - 8, FRAME_MAX - 7, 2 * FRAME_MAX]))
    key = draw(st.sampled_from(["k", "k", "other-key"]))
    header = encode_content_header(size, commands.Basic.Properties(
        headers={"x-stream-offset": draw(st.integers(0, 10**6))}))
    routing_raw = shortstr("ex") + shortstr(key)
    return Message("ex", key, routing_raw, encode_content_header(size), bytes(size)), header


def _one_by_one(channel, consumer, queue, offset: int, items, tailed: bool) -> int:
    """The reference: ``deliver`` per message, ``can_send`` after each."""
    sent = 0
    for item in items:
        message, header = (item[0], item[1]) if tailed else (item, item.header)
        channel.deliver(consumer, queue, (offset + sent, message, False), header if tailed else None)
        sent += 1
        if not channel.can_send():
            break
    return sent


def _run(deliver, items, tailed: bool, high_water: int, bytes_high_water: int) -> tuple:
    client, channel, consumer, queue = _consumer()
    original = channel_module.OUTPUT_HIGH_WATER, channel_module.OUTPUT_BYTES_HIGH_WATER
    channel_module.OUTPUT_HIGH_WATER, channel_module.OUTPUT_BYTES_HIGH_WATER = high_water, bytes_high_water
    try:
        sent = deliver(channel, consumer, queue, 7, items, tailed)
        can_send = channel.can_send()
    finally:
        channel_module.OUTPUT_HIGH_WATER, channel_module.OUTPUT_BYTES_HIGH_WATER = original
    unacked = [(tag, queue_ is queue, entry[0], entry[1], entry[2], owner is consumer)
               for tag, (queue_, entry, owner, _) in channel.unacked.items()]
    return (sent, client.received_bytes(), unacked, channel.next_tag, consumer.unacked, queue.unacked_count,
            client.session.out_bytes, client.session.output_saturated, can_send)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(messages(), min_size=1, max_size=40), tailed=st.booleans(),
       bytes_high_water=st.sampled_from([channel_module.OUTPUT_BYTES_HIGH_WATER, 4000, 20000]))
def test_many_at_once_writes_and_records_what_one_at_a_time_does(items, tailed, bytes_high_water) -> None:
    if tailed:
        given_items = [(message, header, None) for message, header in items]
    else:  # (a message read back from the store carries its offset in its own header)
        given_items = [Message("ex", m.routing_key, m.routing_raw, header, m.body) for m, header in items]
    high_water = channel_module.OUTPUT_HIGH_WATER
    one_by_one = _run(_one_by_one, given_items, tailed, high_water, bytes_high_water)
    at_once = _run(Channel.deliver_stream, given_items, tailed, high_water, bytes_high_water)
    assert at_once == one_by_one
    assert at_once[0] >= 1


@settings(max_examples=100, deadline=None)
@given(items=st.lists(messages(), min_size=1, max_size=40), tailed=st.booleans(), high_water=st.integers(1, 200))
def test_it_stops_once_the_output_is_full_and_not_before(items, tailed, high_water) -> None:
    """(Output pieces per delivery differ from ``deliver``'s: the limit is checked on its own.)"""
    given_items = [(message, header, None) for message, header in items] if tailed else [m for m, _ in items]
    sent, *_, can_send = _run(Channel.deliver_stream, given_items, tailed, high_water, 1 << 30)
    assert sent == len(given_items) or not can_send
    if sent > 1:
        *_, could_send = _run(Channel.deliver_stream, given_items[:sent - 1], tailed, high_water, 1 << 30)
        assert could_send


def test_a_consumer_reads_what_was_published_in_order_with_offsets() -> None:
    client, channel, consumer, queue = _consumer()
    bodies = [b"x" * size for size in (1, 2, FRAME_MAX, 3, 0, 4)]
    for body in bodies:
        client.publish(1, "", "s", body)
    client.send(commands.Basic.Consume(queue="s", consumer_tag="all", arguments={"x-stream-offset": "first"}))
    got = [d for d in deliveries(client.received()) if d.method.consumer_tag == "all"]
    assert [(d.body, d.properties.headers["x-stream-offset"]) for d in got] == \
        [(body, offset) for offset, body in enumerate(bodies)]


def test_delivering_a_message_shared_with_classic_queues_writes_nothing_for_the_stream() -> None:
    """A persistent message a fanout put in two durable classic queues (stored once, with an id)
    and a stream: its deliveries from the stream, to a filtered consumer and a plain one, are no
    entries of the stream's (a stream keeps no per-message records; such a record would stay in
    the store for as long as the stream)."""
    broker = Broker()
    broker.journal.enabled = True
    client = FakeClient(broker)
    client.open_channel()
    client.send(commands.Exchange.Declare(exchange="feed", exchange_type="fanout", durable=True))
    client.received_bytes()
    for name, arguments in (("a", None), ("b", None), ("s", {"x-queue-type": "stream"})):
        client.declare_queue(name, durable=True, arguments=arguments)
        client.send(commands.Queue.Bind(queue=name, exchange="feed"))
        client.received_bytes()
    client.send(commands.Basic.Qos(prefetch_count=10))
    client.received_bytes()
    stream = broker.vhosts["/"].queues["s"]
    client.publish(1, "feed", "", b"shared", commands.Basic.Properties(
        delivery_mode=2, headers={"x-stream-filter-value": "v"}))
    client.send(commands.Basic.Consume(queue="s", consumer_tag="filtered",
                                       arguments={"x-stream-offset": "first", "x-stream-filter": "v"}))
    client.send(commands.Basic.Consume(queue="s", consumer_tag="plain", arguments={"x-stream-offset": "first"}))
    got = deliveries(client.received())
    assert sorted(d.method.consumer_tag for d in got) == ["filtered", "plain"]
    for delivery in got:
        client.ack(delivery.tag)
    assert [op for op in broker.journal.ops if op is not None and op[0] in ("entry", "delivered")
            and op[1] == stream.queue_id] == []


def test_messages_read_back_decode_a_repeated_routing_once_and_take_any_routing_key_bytes() -> None:
    plain = shortstr("ex") + shortstr("key")
    odd = shortstr("ex") + b"\x02\xff\xfe"  # a routing key that is not UTF-8 (publishes take any bytes)
    header = encode_content_header(1)
    stored = [(offset, (routing, header, b"x", None)) for offset, routing in enumerate([plain, plain, odd, plain])]
    messages = Message.many_from_store(stored)
    assert [(m.exchange, m.routing_key, m.routing_raw) for m in messages] == \
        [("ex", "key", plain), ("ex", "key", plain), ("ex", "\udcff\udcfe", odd), ("ex", "key", plain)]
    assert messages[1].routing_key is messages[0].routing_key
    single = Message.from_store(odd, header, b"x", 5.0)
    assert (single.routing_key, single.arrived, single.deaths) == ("\udcff\udcfe", 5.0, "x-death")
    expiring = encode_content_header(1, commands.Basic.Properties(expiration="1500"))
    assert Message.many_from_store([(0, (plain, expiring, b"x", None))])[0].ttl == 1.5


@pytest.mark.timeout(20)
def test_a_run_short_of_its_offsets_stops_serving_instead_of_spinning() -> None:
    """(Runs are built whole; were one not, the consumer must not loop on the event loop.)"""
    client = FakeClient(Broker(), frame_max=FRAME_MAX)
    client.open_channel(1)
    client.declare_queue("s", 1, durable=True, arguments={"x-queue-type": "stream"})
    for _ in range(10):
        client.publish(1, "", "s", b"abc")
    queue = client.broker.vhosts["/"].queues["s"]
    messages = [entry[0] for entry in queue.log.tail[:5]]
    queue.log.clear_tail()  # everything is in the store now
    queue.reads.add(Run(0, messages, 10))  # five messages for offsets 0..9
    client.send(commands.Basic.Qos(prefetch_count=100))
    client.received_bytes()
    client.send(commands.Basic.Consume(queue="s", consumer_tag="c", arguments={"x-stream-offset": "first"}))
    assert len(deliveries(client.received())) == 5


def test_a_store_read_that_skipped_offsets_is_not_taken_as_a_run() -> None:
    client = FakeClient(Broker())
    client.open_channel(1)
    client.declare_queue("s", 1, durable=True, arguments={"x-queue-type": "stream"})
    queue = client.broker.vhosts["/"].queues["s"]
    stored = (shortstr("") + shortstr("s"), encode_content_header(1), b"x", None)
    SharedRead(queue.reads, 0).read_done([(0, stored), (1, stored), (3, stored)], 4)
    assert queue.reads.at(0) is None and queue.read_retry_at  # asked again later, as after a failed read
    SharedRead(queue.reads, 0).read_done([(0, stored), (1, stored)], 2)
    assert queue.reads.at(1) is not None  # (a later read, once the wait is over, is taken)
