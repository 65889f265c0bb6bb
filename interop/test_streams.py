"""Streams (``x-queue-type: stream``) over AMQP 0-9-1, with pika and aio-pika.

Every expectation here holds on RabbitMQ 3.10 (the reference) and on amqpbroker, unless a test says
it is about one of amqpbroker's extensions. RabbitMQ's texts were read off the reference.
"""

from __future__ import annotations

import asyncio
import datetime
import time

import aio_pika
import pika
import pika.exceptions
import pytest

from interop.support import Management, channel_error, connect

pytestmark = pytest.mark.timeout(60)

STREAM = {"x-queue-type": "stream"}


def _declare(channel, name: str, cleanup, **arguments) -> None:
    channel.queue_declare(cleanup.queue(name), durable=True, arguments={**STREAM, **arguments})


def _publish(channel, queue: str, bodies, headers=None) -> None:
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(headers=headers))


def _read(url: str, queue: str, count: int, arguments=None, prefetch: int = 100,
          timeout: float = 10.0) -> list[tuple[bytes, int, bool]]:
    """``count`` deliveries from ``queue`` (fewer if none come for a while): body, the
    ``x-stream-offset`` header, redelivered."""
    got: list[tuple[bytes, int, bool]] = []
    with connect(url) as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)

        def on_message(ch, method, properties, body):
            got.append((body, properties.headers["x-stream-offset"], method.redelivered))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message, arguments=arguments or {})
        deadline = time.monotonic() + timeout
        quiet_until = None
        while len(got) < count and time.monotonic() < deadline:
            before = len(got)
            connection.process_data_events(0.1)
            if count == 0 or (len(got) == before and quiet_until is not None and time.monotonic() > quiet_until):
                break
            if len(got) != before or quiet_until is None:
                quiet_until = time.monotonic() + (1.0 if count == 0 else 3.0)
    return got


# ---------------------------------------------------------------------------- declare


@pytest.mark.parametrize("flags, invalid", [
    ({"durable": False}, "non-durable"),
    ({"durable": True, "exclusive": True}, "exclusive-owner"),
    ({"durable": True, "auto_delete": True}, "auto-delete"),
])
def test_a_stream_is_durable_shared_and_not_auto_delete(conn, unique, cleanup, flags, invalid) -> None:
    channel = conn.channel()
    name = cleanup.queue(f"{unique}-s")
    error = channel_error(channel, lambda: channel.queue_declare(name, arguments=STREAM, **flags))
    assert error.reply_code == 406
    assert f"invalid property '{invalid}' for queue '{name}'" in error.reply_text


@pytest.mark.parametrize("argument, value", [
    ("x-max-priority", 5), ("x-message-ttl", 1000), ("x-dead-letter-exchange", "dlx"),
    ("x-overflow", "reject-publish"), ("x-overflow", "drop-head"), ("x-single-active-consumer", True),
    ("x-max-length", 10), ("x-expires", 5000), ("x-delivery-limit", 3), ("x-queue-mode", "lazy"),
])
def test_arguments_streams_do_not_take_are_refused(conn, unique, cleanup, argument, value) -> None:
    channel = conn.channel()
    name = cleanup.queue(f"{unique}-s")
    error = channel_error(channel, lambda: channel.queue_declare(name, durable=True,
                                                                 arguments={**STREAM, argument: value}))
    assert error.reply_code == 406
    assert error.reply_text == (f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{name}' "
                                "in vhost '/' of queue type rabbit_stream_queue")


@pytest.mark.parametrize("arguments", [
    {"x-max-age": "7D"}, {"x-max-age": "12h"}, {"x-max-age": "30m"}, {"x-max-age": "10s"}, {"x-max-age": "1Y"},
    {"x-max-length-bytes": 10_000_000}, {"x-stream-max-segment-size-bytes": 1_000_000},
    {"x-queue-leader-locator": "balanced"}, {"x-initial-cluster-size": 1},
])
def test_stream_arguments_are_taken(conn, unique, cleanup, arguments) -> None:
    channel = conn.channel()
    _declare(channel, f"{unique}-s", cleanup, **arguments)
    assert channel.queue_declare(f"{unique}-s", passive=True).method.message_count == 0


@pytest.mark.parametrize("value, reason", [("7X", "invalid_max_age"), (7, "{unacceptable_type,signedint}")])
def test_a_bad_max_age_is_refused(conn, unique, cleanup, value, reason) -> None:
    channel = conn.channel()
    name = cleanup.queue(f"{unique}-s")
    error = channel_error(channel, lambda: channel.queue_declare(name, durable=True,
                                                                 arguments={**STREAM, "x-max-age": value}))
    assert error.reply_code == 406
    assert error.reply_text == (f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{name}' "
                                f"in vhost '/': {reason}")


# ---------------------------------------------------------------------------- consume


def test_every_consumer_reads_the_whole_stream_from_first_and_nothing_is_removed(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    bodies = [f"m{i}".encode() for i in range(50)]
    _publish(channel, name, bodies)
    for _ in range(2):  # read twice: reading destroys nothing
        got = _read(amqp_url, name, 50, {"x-stream-offset": "first"})
        assert [body for body, _, _ in got] == bodies
        assert [offset for _, offset, _ in got] == list(range(got[0][1], got[0][1] + 50))
        assert not any(redelivered for _, _, redelivered in got)
    # (RabbitMQ's declare-ok counts a stream's messages from sampled metrics: not asserted here)


def test_the_offset_header_is_a_long_and_a_numeric_offset_starts_there(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [f"m{i}".encode() for i in range(10)])
    first = _read(amqp_url, name, 10, {"x-stream-offset": "first"})
    start = first[0][1]
    got = _read(amqp_url, name, 7, {"x-stream-offset": start + 3})
    assert [body for body, _, _ in got] == [f"m{i}".encode() for i in range(3, 10)]
    beyond = _read(amqp_url, name, 0, {"x-stream-offset": start + 1000})
    assert beyond == []


def test_next_is_the_default_and_gets_only_what_arrives_after(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [b"old"])
    got: list[bytes] = []
    with connect(amqp_url) as consumer_connection:
        consumer = consumer_connection.channel()
        consumer.basic_qos(prefetch_count=10)
        consumer.basic_consume(name, lambda ch, m, p, body: (got.append(body), ch.basic_ack(m.delivery_tag)))
        consumer_connection.process_data_events(0.5)
        _publish(channel, name, [b"new1", b"new2"])
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            consumer_connection.process_data_events(0.1)
    assert got == [b"new1", b"new2"]


def test_last_starts_at_the_newest_chunk(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [f"m{i}".encode() for i in range(5)])  # one confirm at a time: a chunk each
    got = _read(amqp_url, name, 5, {"x-stream-offset": "last"})
    assert got and got[-1][0] == b"m4"
    assert len(got) < 5


def test_a_timestamp_or_an_interval_starts_at_the_first_chunk_since(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [b"before"])
    time.sleep(2.2)
    since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    time.sleep(1.1)
    _publish(channel, name, [b"after1", b"after2"])
    got = _read(amqp_url, name, 2, {"x-stream-offset": since})
    assert [body for body, _, _ in got] == [b"after1", b"after2"]
    got = _read(amqp_url, name, 3, {"x-stream-offset": "1h"})
    assert [body for body, _, _ in got] == [b"before", b"after1", b"after2"]


def test_a_consumer_at_the_end_waits_and_consumers_move_independently(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [b"a", b"b"])
    got: dict[str, list[bytes]] = {"first": [], "next": []}
    with connect(amqp_url) as consumer_connection:
        consumer = consumer_connection.channel()
        consumer.basic_qos(prefetch_count=1)
        for start in got:
            consumer.basic_consume(name, lambda ch, m, p, body, start=start: (got[start].append(body),
                                                                             ch.basic_ack(m.delivery_tag)),
                                   arguments={"x-stream-offset": start})
        consumer_connection.process_data_events(1.0)
        _publish(channel, name, [b"c"])
        deadline = time.monotonic() + 10
        while (len(got["first"]) < 3 or len(got["next"]) < 1) and time.monotonic() < deadline:
            consumer_connection.process_data_events(0.1)
    assert got == {"first": [b"a", b"b", b"c"], "next": [b"c"]}


def test_prefetch_bounds_what_is_outstanding_and_acks_return_credit(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [f"m{i}".encode() for i in range(20)])
    with connect(amqp_url) as consumer_connection:
        consumer = consumer_connection.channel()
        consumer.basic_qos(prefetch_count=5)
        held: list[int] = []
        consumer.basic_consume(name, lambda ch, m, p, body: held.append(m.delivery_tag),
                               arguments={"x-stream-offset": "first"})
        consumer_connection.process_data_events(1.0)
        assert len(held) == 5
        consumer.basic_ack(held[-1], multiple=True)
        consumer_connection.process_data_events(1.0)
        assert len(held) == 10


# ---------------------------------------------------------------------------- what streams refuse


def test_consume_without_a_prefetch_is_refused_with_406(conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    error = channel_error(channel, lambda: channel.basic_consume(name, lambda *a: None))
    assert error.reply_code == 406
    assert error.reply_text == f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{name}' in vhost '/''"


def _connection_error(amqp_url: str, action) -> pika.exceptions.ConnectionClosedByBroker:
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        connection = connect(amqp_url)
        try:
            action(connection.channel())
            connection.process_data_events(1.0)
        finally:
            if connection.is_open:
                connection.close()
    return info.value


def test_automatic_acknowledgement_is_refused_with_540(amqp_url, conn, unique, cleanup) -> None:
    name = f"{unique}-s"
    _declare(conn.channel(), name, cleanup)

    def consume(channel):
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(name, lambda *a: None, auto_ack=True)

    error = _connection_error(amqp_url, consume)
    assert error.reply_code == 540
    assert error.reply_text == (f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues "
                                f"queue '{name}' in vhost '/'")


def test_basic_get_and_purge_are_refused_with_540(amqp_url, conn, unique, cleanup) -> None:
    name = f"{unique}-s"
    _declare(conn.channel(), name, cleanup)
    error = _connection_error(amqp_url, lambda channel: channel.basic_get(name))
    assert (error.reply_code, error.reply_text) == (
        540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{name}' in vhost '/'")
    error = _connection_error(amqp_url, lambda channel: channel.queue_purge(name))
    assert (error.reply_code, error.reply_text) == (
        540, f"NOT_IMPLEMENTED - queue.purge not supported by stream queues queue '{name}' in vhost '/'")


def test_nack_of_a_stream_delivery_is_refused_with_540(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    _publish(channel, name, [b"x"])

    def nack(consumer):
        consumer.basic_qos(prefetch_count=10)
        consumer.basic_consume(name, lambda ch, m, p, body: ch.basic_nack(m.delivery_tag, requeue=True),
                               arguments={"x-stream-offset": "first"})

    error = _connection_error(amqp_url, nack)
    assert (error.reply_code, error.reply_text) == (
        540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues queue '{name}' in vhost '/'")
    assert [body for body, _, _ in _read(amqp_url, name, 1, {"x-stream-offset": "first"})] == [b"x"]


# ---------------------------------------------------------------------------- routing


def test_a_fanout_feeds_a_stream_and_a_classic_queue_at_once(amqp_url, conn, unique, cleanup) -> None:
    channel = conn.channel()
    exchange = cleanup.exchange(f"{unique}-fan")
    channel.exchange_declare(exchange, "fanout")
    stream, classic = f"{unique}-s", cleanup.queue(f"{unique}-q")
    _declare(channel, stream, cleanup)
    channel.queue_declare(classic)
    channel.queue_bind(stream, exchange)
    channel.queue_bind(classic, exchange)
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish(exchange, "", f"e{i}".encode(), pika.BasicProperties(delivery_mode=2))
    assert [body for body, _, _ in _read(amqp_url, stream, 3, {"x-stream-offset": "first"})] == [b"e0", b"e1", b"e2"]
    assert channel.queue_declare(classic, passive=True).method.message_count == 3
    method, properties, body = channel.basic_get(classic, auto_ack=True)
    assert body == b"e0" and "x-stream-offset" not in (properties.headers or {})


# ---------------------------------------------------------------------------- aio-pika


def test_aio_pika_reads_a_stream_from_first_with_the_offset_header(amqp_url, unique, cleanup) -> None:
    name = cleanup.queue(f"{unique}-s")

    async def scenario() -> list[tuple[bytes, int]]:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=10)
            queue = await channel.declare_queue(name, durable=True, arguments=STREAM)
            for i in range(25):
                await channel.default_exchange.publish(aio_pika.Message(f"a{i}".encode()), routing_key=name)
            got: list[tuple[bytes, int]] = []
            async with queue.iterator(arguments={"x-stream-offset": "first"}) as messages:
                async for message in messages:
                    await message.ack()
                    got.append((message.body, message.headers["x-stream-offset"]))
                    if len(got) == 25:
                        break
            return got

    got = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [body for body, _ in got] == [f"a{i}".encode() for i in range(25)]
    assert [offset for _, offset in got] == list(range(got[0][1], got[0][1] + 25))


# ---------------------------------------------------------------------------- filtering (RabbitMQ 3.13+)


def test_a_filtered_consumer_gets_only_its_values(amqp_url, conn, unique, cleanup, request) -> None:
    """Server-side filtering (``x-stream-filter``): exact here; RabbitMQ 3.13+ filters per chunk
    and may deliver more (3.10, the reference here, ignores the filter: skipped there)."""
    if conn._impl.server_properties.get("product") == "RabbitMQ":
        pytest.skip("RabbitMQ 3.10 has no stream filtering (3.13+)")
    channel = conn.channel()
    name = f"{unique}-s"
    _declare(channel, name, cleanup)
    channel.confirm_delivery()
    for i, value in enumerate(["red", "blue", None, "red", "green", None]):
        headers = {"x-stream-filter-value": value} if value else None
        channel.basic_publish("", name, f"{value}{i}".encode(), pika.BasicProperties(headers=headers))
    red = _read(amqp_url, name, 2, {"x-stream-offset": "first", "x-stream-filter": "red"})
    assert [body for body, _, _ in red] == [b"red0", b"red3"]
    several = _read(amqp_url, name, 5, {"x-stream-offset": "first", "x-stream-filter": ["blue", "green"],
                                        "x-stream-match-unfiltered": True})
    assert [body for body, _, _ in several] == [b"blue1", b"None2", b"green4", b"None5"]


# ---------------------------------------------------------------------------- management API


def test_the_management_api_lists_a_stream_and_refuses_to_purge_or_get_it(management_url, conn, unique, cleanup) -> None:
    api = Management(management_url)
    name = f"{unique}-s"
    _declare(conn.channel(), name, cleanup, **{"x-max-age": "1h"})
    deadline = time.monotonic() + 10
    while True:  # (RabbitMQ's management database may list a new queue a moment later, under load)
        status, queue = api.request("GET", f"/api/queues/%2F/{name}")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200 and queue["type"] == "stream" and queue["arguments"]["x-max-age"] == "1h"
    status, text = api.request("DELETE", f"/api/queues/%2F/{name}/contents")
    assert status == 400 and f"queue.purge not supported by stream queues queue '{name}' in vhost '/'" in text
    status, text = api.request("POST", f"/api/queues/%2F/{name}/get",
                               {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert status == 400 and f"540 basic.get not supported by stream queues queue '{name}' in vhost '/'" in text


# ---------------------------------------------------------------------------- kombu


def test_kombu_declares_writes_and_replays_a_stream(amqp_url, unique, cleanup) -> None:
    import kombu

    name = cleanup.queue(f"{unique}-s")
    with kombu.Connection(amqp_url) as connection:
        queue = kombu.Queue(name, routing_key=name, durable=True, queue_arguments=STREAM,
                            consumer_arguments={"x-stream-offset": "first"})
        with connection.Producer() as producer:
            for i in range(10):
                producer.publish({"n": i}, routing_key=name, declare=[queue], serializer="json")
        for _ in range(2):  # replayed from the start each time
            got: list[tuple[int, int]] = []

            def on_message(body, message):
                got.append((body["n"], message.headers["x-stream-offset"]))
                message.ack()

            with connection.Consumer(queue, callbacks=[on_message], prefetch_count=5):
                deadline = time.monotonic() + 10
                while len(got) < 10 and time.monotonic() < deadline:
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass
            assert [n for n, _ in got] == list(range(10))
            assert [offset for _, offset in got] == list(range(got[0][1], got[0][1] + 10))
