"""Durability through real clients: restarts, crashes (SIGKILL), a slow disk never blocks others."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pika
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import PERSISTENT, TRANSIENT, BrokerProcess, channel_of, drain


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill-9"])
def test_persistent_messages_in_durable_queues_survive_transient_ones_do_not(broker, crash) -> None:
    with channel_of(broker) as ch:
        ch.exchange_declare("orders", "topic", durable=True)
        ch.queue_declare("durable-q", durable=True)
        ch.queue_bind("durable-q", "orders", "order.#")
        ch.queue_declare("transient-q", durable=False)
        ch.queue_bind("transient-q", "orders", "order.#")
        ch.confirm_delivery()
        for index in range(5):
            ch.basic_publish("orders", "order.new", f"p{index}".encode(), PERSISTENT)
        ch.basic_publish("orders", "order.new", b"transient message", TRANSIENT)
    broker.restart(crash=crash)
    with channel_of(broker) as ch:
        assert ch.queue_declare("durable-q", durable=True).method.message_count == 5
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
            ch.queue_declare("transient-q", passive=True)
        assert raised.value.reply_code == 404
    with channel_of(broker) as ch:
        # the binding survived too: a new publish through the exchange arrives
        ch.confirm_delivery()
        ch.basic_publish("orders", "order.late", b"p5", PERSISTENT)
        assert drain(ch, "durable-q") == [(f"p{i}".encode(), False) for i in range(6)]


def test_unacked_messages_come_back_redelivered_in_order(broker) -> None:
    with channel_of(broker) as ch:
        ch.queue_declare("work", durable=True)
        ch.confirm_delivery()
        for index in range(4):
            ch.basic_publish("", "work", f"m{index}".encode(), PERSISTENT)
        first = ch.basic_get("work")  # delivered, never acked
        second = ch.basic_get("work")
        ch.basic_ack(second[0].delivery_tag)
        assert first[2] == b"m0" and second[2] == b"m1"
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        assert drain(ch, "work") == [(b"m0", True), (b"m2", False), (b"m3", False)]


def test_fan_out_to_durable_queues_with_partial_acks(broker) -> None:
    with channel_of(broker) as ch:
        ch.exchange_declare("fan", "fanout", durable=True)
        for name in ("fan-a", "fan-b", "fan-c"):
            ch.queue_declare(name, durable=True)
            ch.queue_bind(name, "fan")
        ch.confirm_delivery()
        for index in range(3):
            ch.basic_publish("fan", "", f"f{index}".encode(), PERSISTENT)
        for _ in range(3):  # queue a consumes and acks everything
            method, _, _ = ch.basic_get("fan-a")
            ch.basic_ack(method.delivery_tag)
        method, _, _ = ch.basic_get("fan-b")
        ch.basic_ack(method.delivery_tag)  # b acks one
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        assert drain(ch, "fan-a") == []
        assert [body for body, _ in drain(ch, "fan-b")] == [b"f1", b"f2"]
        assert [body for body, _ in drain(ch, "fan-c")] == [b"f0", b"f1", b"f2"]


def test_purge_and_delete_survive_restart(broker) -> None:
    with channel_of(broker) as ch:
        ch.exchange_declare("gone-x", "direct", durable=True)
        for name in ("purged", "deleted"):
            ch.queue_declare(name, durable=True)
        ch.queue_bind("deleted", "gone-x", "k")
        ch.confirm_delivery()
        for name in ("purged", "deleted"):
            ch.basic_publish("", name, b"old", PERSISTENT)
        ch.queue_purge("purged")
        ch.queue_delete("deleted")
        ch.exchange_delete("gone-x")
        ch.basic_publish("", "purged", b"new", PERSISTENT)
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        assert drain(ch, "purged") == [(b"new", False)]
        for kind, name in (("queue", "deleted"), ("exchange", "gone-x")):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
                if kind == "queue":
                    ch.queue_declare(name, passive=True)
                else:
                    ch.exchange_declare(name, passive=True)
            assert raised.value.reply_code == 404
            ch = ch.connection.channel()


def test_exclusive_and_auto_delete_queues_are_not_recovered(broker) -> None:
    connection = broker.connect()  # still open when the broker dies
    ch = connection.channel()
    ch.queue_declare("ex-q", durable=True, exclusive=True)
    ch.queue_declare("ad-q", durable=True, auto_delete=True)
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        for name in ("ex-q", "ad-q"):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare(name, passive=True)
            ch = ch.connection.channel()


def _publish_until_killed(url: str, queue: str, prefix: str, confirmed: list[str],
                          stop: threading.Event) -> None:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        index = 0
        while not stop.is_set():
            body = f"{prefix}-{index}"
            channel.basic_publish("", queue, body.encode(), PERSISTENT)
            confirmed.append(body)  # basic_publish returned: the broker acked it
            index += 1
    except (pika.exceptions.AMQPError, OSError):
        pass  # the broker died under us


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_confirmed_message_survives_sigkill_exactly_once(broker, seed) -> None:
    rng = random.Random(seed)
    with channel_of(broker) as ch:
        ch.queue_declare("crash", durable=True)
    confirmed: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()
    threads = [threading.Thread(target=_publish_until_killed,
                                args=(broker.url, "crash", f"c{n}", confirmed[n], stop), daemon=True)
               for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0.3, 1.5))
    broker.kill()
    stop.set()
    for thread in threads:
        thread.join(10)
    broker.start()
    with channel_of(broker) as ch:
        bodies = [body.decode() for body, _ in drain(ch, "crash")]
    assert len(bodies) == len(set(bodies)), "a message came back twice"
    present = set(bodies)
    total = sum(map(len, confirmed))
    assert total > 50, "the publishers hardly ran; the test proves nothing"
    lost = [body for per_connection in confirmed for body in per_connection if body not in present]
    assert lost == []
    for per_connection in confirmed:  # each connection's messages are in publish order
        prefix = per_connection[0].split("-")[0] if per_connection else None
        order = [int(b.split("-")[1]) for b in bodies if b.split("-")[0] == prefix]
        assert order == sorted(order)


def test_heartbeats_and_small_publishes_flow_while_a_large_persistent_batch_is_written(broker) -> None:
    """The store's writes never stall the event loop: another client keeps a 1 s heartbeat and
    round trips stay short while a bulk publisher pushes persistent data as fast as it can."""
    with channel_of(broker) as ch:
        ch.queue_declare("bulk", durable=True)
    stop = threading.Event()
    published = []

    def bulk() -> None:
        connection = broker.connect()
        channel = connection.channel()
        body = os.urandom(64 * 1024)
        count = 0
        while not stop.is_set() and count < 3000:
            channel.basic_publish("", "bulk", body, PERSISTENT)
            count += 1
        published.append(count)
        connection.close()

    thread = threading.Thread(target=bulk, daemon=True)
    thread.start()
    params = pika.URLParameters(broker.url + "?heartbeat=1")
    small = pika.BlockingConnection(params)
    channel = small.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.confirm_delivery()
    round_trips = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        started = time.perf_counter()
        channel.basic_publish("", queue, b"ping", PERSISTENT)
        method, _, _ = channel.basic_get(queue, auto_ack=True)
        assert method is not None
        round_trips.append(time.perf_counter() - started)
        small.sleep(0.05)
    stop.set()
    thread.join(30)
    assert small.is_open  # heartbeats kept flowing both ways
    small.close()
    round_trips.sort()
    assert published and published[0] > 100
    assert round_trips[int(len(round_trips) * 0.95)] < 0.25, round_trips[-5:]


def test_a_corrupt_data_dir_is_refused_with_a_clear_message(tmp_path) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(str(data))
    broker.start()
    broker.stop()
    current = data / "rocksdb" / "CURRENT"
    current.write_text("MANIFEST-999999\n")  # points at a manifest that does not exist
    result = subprocess.run([sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1",
                             "--port", str(free_port()), "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot open the data directory" in result.stderr
    assert "refusing to start" in result.stderr


def test_messages_consumed_at_once_are_not_written_and_do_not_come_back(broker) -> None:
    """An autoack consumer takes persistent messages before the writer does: they are confirmed
    (after a sync) without ever being written, and a crash does not bring them back."""
    consuming = broker.connect()
    consumer = consuming.channel()
    consumer.queue_declare("fast-lane", durable=True)
    got = []
    consumer.basic_consume("fast-lane", lambda ch, method, props, body: got.append(body), auto_ack=True)
    with channel_of(broker) as ch:
        ch.confirm_delivery()  # pika raises if any publish is nacked
        for index in range(300):
            ch.basic_publish("", "fast-lane", f"c{index}".encode(), PERSISTENT)
        deadline = time.monotonic() + 10
        while len(got) < 300 and time.monotonic() < deadline:
            consuming.process_data_events(time_limit=0.1)
        assert got == [f"c{index}".encode() for index in range(300)]
        consuming.close()
        for index in range(5):
            ch.basic_publish("", "fast-lane", f"kept{index}".encode(), PERSISTENT)
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        assert drain(ch, "fast-lane") == [(f"kept{index}".encode(), False) for index in range(5)]


def test_ttls_count_from_the_original_arrival_across_a_restart(broker) -> None:
    ttl = 3.0
    with channel_of(broker) as ch:
        ch.queue_declare("ttl-q", durable=True, arguments={"x-message-ttl": int(ttl * 1000)})
        ch.queue_declare("own-ttl-q", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "ttl-q", b"queue ttl", PERSISTENT)
        ch.basic_publish("", "own-ttl-q", b"own ttl",
                         pika.BasicProperties(delivery_mode=2, expiration=str(int(ttl * 1000))))
        ch.basic_publish("", "own-ttl-q", b"no ttl", PERSISTENT)
        published = time.monotonic()
    time.sleep(ttl / 2)  # half the TTL passes before the crash
    broker.restart(crash=True)
    restarted = time.monotonic()
    time.sleep(max(0.0, published + ttl + 0.3 - time.monotonic()))
    # past both TTLs counted from the publish, not yet counted from the restart
    assert time.monotonic() - restarted < ttl
    with channel_of(broker) as ch:
        assert drain(ch, "ttl-q") == []
        assert drain(ch, "own-ttl-q") == [(b"no ttl", False)]


def test_delayed_persistent_messages_survive_a_crash_and_arrive_when_due(broker) -> None:
    with channel_of(broker) as ch:
        ch.exchange_declare("later", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
        ch.queue_declare("due", durable=True)
        ch.queue_bind("due", "later", "k")
        ch.confirm_delivery()
        ch.basic_publish("later", "k", b"delayed", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500}))
        published = time.monotonic()
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        if time.monotonic() - published < 1.2:
            assert drain(ch, "due") == []  # not yet
        time.sleep(max(0.0, published + 1.8 - time.monotonic()))
        assert drain(ch, "due") == [(b"delayed", False)]


def test_an_expiring_message_with_undecodable_headers_is_dead_lettered_across_restarts(broker) -> None:
    """A persistent message whose header holds a longstr that is not UTF-8 (pamqp decodes it to
    bytes) in a durable TTL queue with a dead-letter exchange: dead-lettering it used to raise in
    the broker's timer and end the process, and again at every restart (a crash loop)."""
    with channel_of(broker) as ch:
        ch.queue_declare("dl-target", durable=True)
        ch.queue_declare("dl-source", durable=True, arguments={
            "x-message-ttl": 300, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dl-target"})
        ch.confirm_delivery()
        ch.basic_publish("", "dl-source", b"poison", pika.BasicProperties(
            delivery_mode=2, headers={"raw": b"\xff\xfe not utf-8"}))
    broker.restart()  # before it expires: it comes back from the store, then expires here
    time.sleep(1.0)
    assert broker.process.poll() is None  # still running
    with channel_of(broker) as ch:
        method, properties, body = ch.basic_get("dl-target", auto_ack=True)
        assert body == b"poison"
        assert properties.headers["raw"] == b"\xff\xfe not utf-8"
        assert properties.headers["x-death"][0]["reason"] == "expired"
    broker.restart()
    assert broker.process.poll() is None


def test_an_unreadable_definition_record_is_named_and_skipped_at_start(tmp_path) -> None:
    from rocksdict import Options, Rdict

    data = tmp_path / "data"
    broker = BrokerProcess(str(data))
    broker.start()
    with channel_of(broker) as ch:
        ch.queue_declare("kept", durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", "kept", b"still here", PERSISTENT)
    broker.stop()
    options = Options(raw_mode=True)
    db = Rdict(str(data / "rocksdb"), options)
    try:
        db[b"q/\x00broken"] = b"\x00\x00\x00\x09garbage!!"  # a queue record that is not a table
        db[b"q/\x00half"] = b"\x00\x00\x00\x00"  # a table without the fields a queue needs
    finally:
        db.close()
    broker.start(capture=True)
    output = broker.output()
    assert "skipped an unreadable definition record: queue 'broken' in vhost '/'" in output
    assert "skipped the stored queue 'half'" in output or "skipped the stored queue '?'" in output
    assert "Traceback" not in output
    with channel_of(broker) as ch:
        assert drain(ch, "kept") == [(b"still here", False)]
    broker.stop()
