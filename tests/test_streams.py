"""Streams against a broker process with a data dir: reads from the store for consumers far
behind the tail, retention by size and age, and recovery after a kill -9."""

from __future__ import annotations

import time
import urllib.request

import pika
import pika.exceptions
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess, channel_of
from tests.test_management import call

pytestmark = pytest.mark.timeout(120)

STREAM = {"x-queue-type": "stream"}


def _publish(channel, queue: str, count: int, size: int = 100, start: int = 0) -> None:
    """Publish ``count`` messages; the last ten with a confirm each (pika's blocking confirms cost
    a sync apiece): once the last is confirmed, every earlier append is synced too (the store
    writes in order and a sync covers everything written before it)."""
    for i in range(start, start + count - 10):
        channel.basic_publish("", queue, f"{i:08d}".encode().ljust(size, b"."))
    channel.confirm_delivery()
    for i in range(max(start + count - 10, start), start + count):
        channel.basic_publish("", queue, f"{i:08d}".encode().ljust(size, b"."))


def _read(broker: BrokerProcess, queue: str, count: int, offset="first", prefetch: int = 500,
          timeout: float = 60.0, arguments=None) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    connection = broker.connect()
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)

        def on_message(ch, method, properties, body):
            got.append((properties.headers["x-stream-offset"], body[:8]))
            if len(got) % 50 == 0 or len(got) == count:
                ch.basic_ack(method.delivery_tag, multiple=True)

        channel.basic_consume(queue, on_message, arguments={"x-stream-offset": offset, **(arguments or {})})
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            connection.process_data_events(0.1)
        connection.process_data_events(0.3)  # (nothing more should come)
    finally:
        try:
            connection.close()
        except pika.exceptions.ConnectionClosedByBroker as exc:  # pika rejects what it had not
            assert exc.reply_code == 540  # handed out yet, which a stream refuses (as RabbitMQ)
    return got[:count]


def test_consumers_far_behind_the_tail_read_everything_in_order_from_the_store(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("deep", durable=True, arguments=STREAM)
        _publish(channel, "deep", 12_000)  # several times the tail the stream keeps in memory
    got = _read(broker, "deep", 12_000)
    assert [offset for offset, _ in got] == list(range(12_000))
    assert [body for _, body in got] == [f"{i:08d}".encode() for i in range(12_000)]
    middle = _read(broker, "deep", 3_000, offset=5_000)
    assert [offset for offset, _ in middle] == list(range(5_000, 8_000))


def test_a_filtered_consumer_far_behind_skips_in_the_store(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("filtered", durable=True, arguments=STREAM)
        for i in range(9_000):
            value = "rare" if i % 1000 == 7 else "common"
            channel.basic_publish("", "filtered", f"{i:08d}".encode(),
                                  pika.BasicProperties(headers={"x-stream-filter-value": value}))
        channel.queue_declare("filtered", passive=True)  # (a round trip: every publish is in)
    got = _read(broker, "filtered", 9, arguments={"x-stream-filter": "rare"})
    assert [offset for offset, _ in got] == [i for i in range(9_000) if i % 1000 == 7]


def test_confirmed_messages_and_offsets_survive_a_kill_9(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("crash", durable=True, arguments=STREAM)
        _publish(channel, "crash", 3_000)
    broker.restart(crash=True)
    got = _read(broker, "crash", 3_000)
    assert [offset for offset, _ in got] == list(range(3_000))
    with channel_of(broker) as channel:  # appends go on after the last offset
        _publish(channel, "crash", 10, start=3_000)
    got = _read(broker, "crash", 10, offset=3_000)
    assert [(offset, body) for offset, body in got] == [(i, f"{i:08d}".encode()) for i in range(3_000, 3_010)]
    assert _read(broker, "crash", 1, offset="last")[-1][0] == 3_009


def test_every_confirmed_message_survives_kill_9s_in_the_middle_of_publishing(broker) -> None:
    """A publisher with confirms is cut off by a kill -9, three times: after each restart the
    stream holds every message that was confirmed, once, at consecutive offsets (a message that
    was not confirmed may be there or not), and appends go on after them."""
    import threading

    with channel_of(broker) as channel:
        channel.queue_declare("cut", durable=True, arguments=STREAM)
    confirmed: list[bytes] = []
    for round_ in range(3):
        stop = threading.Event()

        def publish() -> None:
            try:
                with channel_of(broker) as channel:
                    channel.confirm_delivery()
                    index = 0
                    while not stop.is_set():
                        body = f"{round_}-{index:06d}".encode()
                        channel.basic_publish("", "cut", body.ljust(1000, b"."))
                        confirmed.append(body)  # (basic_publish returned: the broker confirmed it)
                        index += 1
            except (pika.exceptions.AMQPError, OSError):
                pass  # the broker was killed

        publisher = threading.Thread(target=publish)
        publisher.start()
        time.sleep(0.6 + 0.3 * round_)
        broker.restart(crash=True)
        stop.set()
        publisher.join(10)
        assert not publisher.is_alive()
    with channel_of(broker) as channel:
        held = channel.queue_declare("cut", passive=True).method.message_count
    assert held >= len(confirmed) > 0
    got = _read(broker, "cut", held)
    assert [offset for offset, _ in got] == list(range(held))
    bodies = [body for _, body in got]  # (their first 8 bytes: round and index)
    assert len(bodies) == len(set(bodies))  # none twice
    assert {body[:8] for body in confirmed} <= set(bodies)  # none confirmed is lost


def test_retention_by_size_drops_whole_old_segments_and_behind_consumers_skip_ahead(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("sized", durable=True, arguments={
            **STREAM, "x-max-length-bytes": 200_000, "x-stream-max-segment-size-bytes": 50_000})
        _publish(channel, "sized", 5_000, size=100)  # 500 KB published
        declared = channel.queue_declare("sized", passive=True).method.message_count
    assert 1_500 <= declared <= 2_600  # about 200 KB kept, in whole segments of about 50 KB
    got = _read(broker, "sized", declared)
    assert len(got) == declared
    assert got[-1][0] == 4_999 and got[0][0] == 5_000 - declared
    broker.restart(crash=True)
    with channel_of(broker) as channel:
        assert channel.queue_declare("sized", passive=True).method.message_count == declared


def test_retention_by_age_drops_segments_older_than_max_age(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("aged", durable=True, arguments={
            **STREAM, "x-max-age": "2s", "x-stream-max-segment-size-bytes": 1_000})
        _publish(channel, "aged", 30, size=100)
        time.sleep(3.5)  # old enough, and a tick passed
        _publish(channel, "aged", 30, size=100, start=30)
        deadline = time.monotonic() + 10
        while channel.queue_declare("aged", passive=True).method.message_count > 40 and time.monotonic() < deadline:
            time.sleep(0.2)
        count = channel.queue_declare("aged", passive=True).method.message_count
    assert 30 <= count <= 40
    got = _read(broker, "aged", count)
    assert got[0][0] >= 20 and got[-1][0] == 59


def test_the_management_api_and_metrics_show_a_stream_and_its_consumers_offsets(start_broker) -> None:
    managed = start_broker(management_port=free_port(), prometheus_port=free_port())
    connection = managed.connect()
    try:
        channel = connection.channel()
        channel.queue_declare("shown", durable=True, arguments={**STREAM, "x-max-age": "1D"})
        _publish(channel, "shown", 40, size=100)
        reader = connection.channel()
        reader.basic_qos(prefetch_count=15)
        reader.basic_consume("shown", lambda *args: None, consumer_tag="behind",
                             arguments={"x-stream-offset": 10})
        connection.process_data_events(1.0)
        status, queue = call(managed, "GET", "/api/queues/%2F/shown")
        assert status == 200
        assert (queue["type"], queue["messages"], queue["messages_ready"], queue["messages_unacknowledged"]) == \
            ("stream", 40, 40, 15)
        stream = queue["stream"]
        assert (stream["first_offset"], stream["last_offset"], stream["bytes"], stream["max_age_seconds"]) == \
            (0, 39, 4_000, 86_400)
        assert stream["segments"] == 1 and stream["chunks"] >= 2 and stream["first_timestamp"] <= stream["last_timestamp"]
        consumers = [c for c in call(managed, "GET", "/api/consumers")[1] if c["consumer_tag"] == "behind"]
        assert consumers[0]["stream_offset"] == 25 and consumers[0]["messages_unacknowledged"] == 15
        listed = [q for q in call(managed, "GET", "/api/queues")[1] if q["name"] == "shown"]
        assert listed[0]["type"] == "stream"
        with urllib.request.urlopen(f"http://127.0.0.1:{managed.prometheus_port}/metrics/per-object", timeout=5) as response:
            metrics = response.read().decode()
        assert 'amqpbroker_stream_next_offset{queue="shown",vhost="/"} 40.0' in metrics
        assert 'amqpbroker_stream_bytes{queue="shown",vhost="/"} 4000.0' in metrics
        assert 'rabbitmq_queue_messages{queue="shown",vhost="/"} 40.0' in metrics
    finally:
        connection.close()


def _consume_some(broker: BrokerProcess, queue: str, count: int, arguments: dict, tag: str) -> list[int]:
    """Take ``count`` messages, acking each, then cancel and close: their offsets."""
    got: list[int] = []
    connection = broker.connect()
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)  # (nothing delivered beyond what is acked)

        def on_message(ch, method, properties, body):
            if len(got) < count:
                got.append(properties.headers["x-stream-offset"])
                ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message, consumer_tag=tag, arguments=arguments)
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            connection.process_data_events(0.05)
        connection.process_data_events(0.2)
    finally:
        try:
            connection.close()
        except pika.exceptions.ConnectionClosedByBroker:
            pass
    return got


def test_automatic_offset_tracking_resumes_a_named_consumer_even_after_a_kill_9(broker) -> None:
    """LavinMQ's extension: x-stream-automatic-offset-tracking (or a void x-stream-offset)."""
    with channel_of(broker) as channel:
        channel.queue_declare("tracked", durable=True, arguments=STREAM)
        _publish(channel, "tracked", 100)
    tracking = {"x-stream-offset": "first", "x-stream-automatic-offset-tracking": True}
    assert _consume_some(broker, "tracked", 30, tracking, "billing") == list(range(30))
    assert _consume_some(broker, "tracked", 5, tracking, "billing") == list(range(30, 35))
    assert _consume_some(broker, "tracked", 3, tracking, "audit") == [0, 1, 2]  # its own position
    # an explicit offset without tracking starts where it says (and stores nothing)
    assert _consume_some(broker, "tracked", 2, {"x-stream-offset": 10}, "billing") == [10, 11]
    broker.restart(crash=True)
    assert _consume_some(broker, "tracked", 5, tracking, "billing") == list(range(35, 40))
    assert _consume_some(broker, "tracked", 2, {"x-stream-offset": None}, "audit") == [3, 4]  # a void offset tracks too
    assert _consume_some(broker, "tracked", 2, {"x-stream-offset": None}, "newcomer") == [0, 1]  # from first


def test_a_negative_offset_counts_from_the_end_as_lavinmq(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("tail", durable=True, arguments=STREAM)
        _publish(channel, "tail", 20)
    assert _consume_some(broker, "tail", 3, {"x-stream-offset": -3}, "t1") == [17, 18, 19]
    assert _consume_some(broker, "tail", 1, {"x-stream-offset": -1}, "t2") == [19]


def test_a_streams_policy_sets_max_age_and_size_on_a_live_stream(start_broker) -> None:
    managed = start_broker(management_port=free_port())
    with channel_of(managed) as channel:
        channel.queue_declare("ruled", durable=True, arguments={**STREAM, "x-stream-max-segment-size-bytes": 2_000})
        channel.confirm_delivery()  # one at a time: a chunk of 100 B each, segments of 20 chunks
        for i in range(200):
            channel.basic_publish("", "ruled", f"{i:08d}".encode().ljust(100, b"."))
    status, _ = call(managed, "PUT", "/api/policies/%2F/retention", {
        "pattern": "^ruled$", "apply-to": "streams", "definition": {"max-length-bytes": 5_000, "max-age": "1D"}})
    assert status == 201
    status, queue = call(managed, "GET", "/api/queues/%2F/ruled")
    assert queue["policy"] == "retention"
    assert queue["stream"]["max_length_bytes"] == 5_000 and queue["stream"]["max_age_seconds"] == 86_400
    assert (queue["stream"]["bytes"], queue["stream"]["first_offset"]) == (4_000, 160)  # whole segments went
    status, text = call(managed, "PUT", "/api/policies/%2F/bad", {"pattern": "x", "definition": {"max-age": "7X"}})
    assert status == 400


def test_a_filter_value_too_long_to_store_is_taken_as_none(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("long-filter", durable=True, arguments=STREAM)
        channel.confirm_delivery()
        channel.basic_publish("", "long-filter", b"long", pika.BasicProperties(headers={"x-stream-filter-value": "é" * 200}))
        channel.basic_publish("", "long-filter", b"short", pika.BasicProperties(headers={"x-stream-filter-value": "a"}))
    got = _read(broker, "long-filter", 2, arguments={"x-stream-filter": "a", "x-stream-match-unfiltered": True})
    assert [offset for offset, _ in got] == [0, 1]  # stored (no store alarm), the long one as unfiltered


def test_consumers_that_vanish_mid_read_and_a_delete_during_reads_harm_no_one(broker) -> None:
    with channel_of(broker) as channel:
        channel.queue_declare("churn", durable=True, arguments=STREAM)
        channel.queue_declare("other", durable=True, arguments=STREAM)
        _publish(channel, "churn", 8_000)  # (four times the tail kept in memory)
        _publish(channel, "other", 3_000)
    for _ in range(3):  # consumers far behind the tail, their connections dropped mid-read
        connection = broker.connect()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        channel.basic_consume("churn", lambda *args: None, arguments={"x-stream-offset": "first"})
        connection.process_data_events(0.2)
        connection._impl._transport._sock.close()  # (gone without a close)
    reading = broker.connect()
    reader = reading.channel()
    reader.basic_qos(prefetch_count=500)
    reader.basic_consume("churn", lambda ch, m, p, b: ch.basic_ack(m.delivery_tag), arguments={"x-stream-offset": "first"})
    reading.process_data_events(0.1)
    with channel_of(broker) as channel:
        channel.queue_delete("churn")  # while its consumer's reads are under way
    reading.process_data_events(0.3)  # (its consumer is cancelled by the broker)
    reading._impl._transport._sock.close()
    got = _read(broker, "other", 3_000)  # the broker serves everyone else as before
    assert [offset for offset, _ in got] == list(range(3_000))
    with channel_of(broker) as channel:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("churn", passive=True)


def test_a_message_shared_with_a_classic_queue_leaves_no_record_of_a_stream_delivery(broker) -> None:
    """A fanout feeds a durable classic queue and a stream with the same persistent messages;
    delivering them from the stream (to a filtered consumer and to a plain one) writes nothing
    about the stream in the store's entries: after the classic queue's copies are acked and a
    restart, the classic queue is empty, the stream whole."""
    with channel_of(broker) as channel:
        channel.exchange_declare("feed", "fanout", durable=True)
        channel.queue_declare("feed-classic", durable=True)
        channel.queue_declare("feed-stream", durable=True, arguments=STREAM)
        channel.queue_bind("feed-classic", "feed")
        channel.queue_bind("feed-stream", "feed")
        channel.confirm_delivery()
        for i in range(20):
            channel.basic_publish("feed", "", f"{i:08d}".encode(),
                                  pika.BasicProperties(delivery_mode=2, headers={"x-stream-filter-value": "v"}))
    assert len(_read(broker, "feed-stream", 20, arguments={"x-stream-filter": "v"})) == 20
    assert len(_read(broker, "feed-stream", 20)) == 20
    with channel_of(broker) as channel:
        for _ in range(20):
            method, _, _ = channel.basic_get("feed-classic", auto_ack=True)
            assert method is not None
    broker.kill()
    broker.start(capture=True)
    with channel_of(broker) as channel:
        assert channel.queue_declare("feed-classic", passive=True).method.message_count == 0
    got = _read(broker, "feed-stream", 20)
    assert [offset for offset, _ in got] == list(range(20))
    assert "Traceback" not in broker.output()
