"""The core flow (declare, publish, consume, ack) through every Python client people use.

pika (SelectConnection and BlockingConnection), py-amqp, kombu (SimpleQueue, Producer/Consumer,
Celery-style pidbox queues, QoS) and aio-pika.  Every test must pass against a real RabbitMQ
(``AMQP_URL=...``); amqpbroker has to match it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlparse

import aio_pika
import amqp
import kombu
import pika
import pytest

from kombu import Consumer, Exchange, Producer, Queue
from kombu.pidbox import Mailbox
from pika.exceptions import ChannelClosedByBroker

from interop.support import Cleanup  # the cleanup fixture is in conftest.py

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- helpers / fixtures


def amqp_connect(url: str) -> amqp.Connection:
    u = urlparse(url)
    path = u.path[1:] if u.path.startswith("/") else u.path
    conn = amqp.Connection(
        host=f"{u.hostname or 'localhost'}:{u.port or 5672}",
        userid=unquote(u.username or "guest"),
        password=unquote(u.password or "guest"),
        virtual_host=unquote(path) or "/",
        connect_timeout=5,
        read_timeout=5,
        write_timeout=5,
    )
    conn.connect()
    return conn


def kombu_drain(conn: kombu.Connection, pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with contextlib.suppress(socket.timeout, TimeoutError):
            conn.drain_events(timeout=min(0.2, remaining))
    return pred()


@pytest.fixture
def pika_check(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A pika channel for checking broker state after a client has done its work."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield conn.channel()
    if conn.is_open:
        conn.close()


def queue_is_empty(ch: Any, queue: str) -> bool:
    return ch.basic_get(queue, auto_ack=True) == (None, None, None)


# --------------------------------------------------------------------------- pika SelectConnection


def test_pika_select_connection(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    queue = cleanup.queue(f"{unique}-select")
    bodies = [b"one", b"two", b"three"]
    state: dict[str, Any] = {"received": [], "confirmed": set(), "error": None, "done": False}

    def fail(reason: Any) -> None:
        state["error"] = reason
        conn.ioloop.stop()

    def on_open(connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        ch.add_on_close_callback(lambda _ch, reason: state["done"] or fail(reason))
        ch.queue_declare(queue, callback=lambda _frame: on_declared(ch))

    def on_declared(ch: Any) -> None:
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _frame: on_confirm_mode(ch))

    def on_confirm(frame: Any) -> None:
        m = frame.method
        if m.NAME != "Basic.Ack":
            fail(f"publish nacked: {m}")
            return
        state["confirmed"].update(range(1, m.delivery_tag + 1) if m.multiple else [m.delivery_tag])

    def on_confirm_mode(ch: Any) -> None:
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(content_type="text/plain", delivery_mode=1))
        ch.basic_qos(prefetch_count=10, callback=lambda _frame: ch.basic_consume(queue, on_message))

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        state["received"].append((body, method.redelivered, props.content_type))
        ch.basic_ack(method.delivery_tag)
        if len(state["received"]) == len(bodies):
            ch.basic_cancel(method.consumer_tag, callback=lambda _frame: finish())

    def finish() -> None:
        state["done"] = True
        conn.close()

    conn = pika.SelectConnection(
        pika.URLParameters(amqp_url),
        on_open_callback=on_open,
        on_open_error_callback=lambda _c, err: fail(err),
        on_close_callback=lambda _c, _reason: conn.ioloop.stop(),
    )
    conn.ioloop.call_later(8, lambda: fail("timed out"))
    try:
        conn.ioloop.start()
    finally:
        if not conn.is_closed:
            conn.close()
            conn.ioloop.start()  # let the close finish; on_close_callback stops the loop

    assert state["error"] is None
    assert state["done"]
    assert state["received"] == [(b, False, "text/plain") for b in bodies]
    assert state["confirmed"] == {1, 2, 3}
    assert queue_is_empty(pika_check, queue)


# --------------------------------------------------------------------------- pika BlockingConnection


def test_pika_blocking_connection(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    queue = cleanup.queue(f"{unique}-blocking")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        declared = ch.queue_declare(queue)
        assert declared.method.queue == queue
        assert declared.method.message_count == 0
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", queue, f"b{i}".encode(), pika.BasicProperties(headers={"i": i}))
        ch.basic_qos(prefetch_count=10)
        got = []
        for method, props, body in ch.consume(queue, inactivity_timeout=2):
            assert method is not None, "timed out waiting for a delivery"
            got.append((body, props.headers["i"], method.redelivered))
            ch.basic_ack(method.delivery_tag)
            if len(got) == 3:
                break
        assert ch.cancel() == 0  # nothing left pending in the client
        assert got == [(b"b0", 0, False), (b"b1", 1, False), (b"b2", 2, False)]
    finally:
        conn.close()
    assert queue_is_empty(pika_check, queue)


# --------------------------------------------------------------------------- py-amqp


def test_py_amqp(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    queue = cleanup.queue(f"{unique}-pyamqp")
    conn = amqp_connect(amqp_url)
    try:
        ch = conn.channel()
        name, count, consumers = ch.queue_declare(queue, durable=False, exclusive=False, auto_delete=False)
        assert (name, count, consumers) == (queue, 0, 0)
        ch.confirm_select()
        for i in range(3):
            ch.basic_publish_confirm(
                amqp.Message(f"a{i}".encode(), content_type="text/plain", application_headers={"i": i}),
                exchange="",
                routing_key=queue,
            )
        got: list[amqp.Message] = []
        tag = ch.basic_consume(queue, callback=got.append, no_ack=False)
        assert tag.startswith("amq.ctag-")
        deadline = time.monotonic() + 3
        while len(got) < 3 and time.monotonic() < deadline:
            with contextlib.suppress(socket.timeout, TimeoutError):
                conn.drain_events(timeout=0.5)
        assert [m.body for m in got] == [b"a0", b"a1", b"a2"]
        assert [m.properties["application_headers"]["i"] for m in got] == [0, 1, 2]
        assert all(m.content_type == "text/plain" for m in got)
        assert [m.delivery_info["delivery_tag"] for m in got] == [1, 2, 3]
        assert all(m.delivery_info["consumer_tag"] == tag and not m.delivery_info["redelivered"] for m in got)
        ch.basic_ack(got[-1].delivery_tag, multiple=True)
        assert ch.basic_cancel(tag) == tag
        ch.close()
    finally:
        conn.close()
    assert queue_is_empty(pika_check, queue)


def test_py_amqp_queue_delete_of_a_queue_it_consumes(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    """queue.delete-ok comes before the basic.cancel it causes on the same channel (py-amqp
    raised ConsumerCancelled from inside queue_delete() when the cancel came first)."""
    queue = cleanup.queue(f"{unique}-consumed-then-deleted")
    conn = amqp_connect(amqp_url)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=False)
        ch.basic_consume(queue, callback=lambda message: None)
        assert ch.queue_delete(queue) == 0  # the delete-ok's message count, no ConsumerCancelled
        with pytest.raises(amqp.exceptions.ConsumerCancelled):  # the cancel comes after it
            conn.drain_events(timeout=2)
    finally:
        conn.close()


# --------------------------------------------------------------------------- kombu


def test_kombu_simple_queue(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    name = cleanup.queue(f"{unique}-simple")
    cleanup.exchange(name)  # SimpleQueue declares a direct exchange named like the queue
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        with conn.SimpleQueue(name, queue_opts={"durable": False}, exchange_opts={"durable": False}) as q:
            q.put({"hello": "world", "n": 1})
            q.put("plain text", serializer="json")
            msg = q.get(block=True, timeout=3)
            assert msg.payload == {"hello": "world", "n": 1}
            assert msg.content_type == "application/json"
            msg.ack()
            msg2 = q.get(block=True, timeout=3)
            assert msg2.payload == "plain text"
            msg2.ack()
            with pytest.raises(q.Empty):
                q.get(block=True, timeout=0.3)
            assert q.qsize() == 0
    assert queue_is_empty(pika_check, name)


def test_kombu_simple_queue_requeue(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    name = cleanup.queue(f"{unique}-simple-rq")
    cleanup.exchange(name)
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        with conn.SimpleQueue(name, queue_opts={"durable": False}, exchange_opts={"durable": False}) as q:
            q.put({"n": 1})
            first = q.get(block=True, timeout=3)
            assert first.delivery_info["redelivered"] is False
            first.requeue()
            again = q.get(block=True, timeout=3)
            assert again.payload == {"n": 1}
            assert again.delivery_info["redelivered"] is True
            again.ack()


def test_kombu_producer_consumer_with_binding(
    amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any
) -> None:
    exchange = Exchange(cleanup.exchange(f"{unique}-orders"), type="topic", durable=False)
    queue = Queue(cleanup.queue(f"{unique}-created"), exchange, routing_key="order.created.*", durable=False)
    received: list[tuple[Any, str, str]] = []
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        with conn.channel() as channel:
            producer = Producer(channel, exchange=exchange, serializer="json")
            producer.declare()
            queue(channel).declare()

            def on_message(body: Any, message: Any) -> None:
                received.append((body, message.delivery_info["routing_key"], message.content_type))
                message.ack()

            with Consumer(channel, [queue], callbacks=[on_message], accept=["json"]):
                producer.publish({"id": 1}, routing_key="order.created.eu")
                producer.publish({"id": 2}, routing_key="order.deleted.eu")  # not bound
                producer.publish({"id": 3}, routing_key="order.created.us", headers={"x-source": "test"})
                assert kombu_drain(conn, lambda: len(received) == 2)
                with contextlib.suppress(socket.timeout, TimeoutError):
                    conn.drain_events(timeout=0.3)
    assert received == [
        ({"id": 1}, "order.created.eu", "application/json"),
        ({"id": 3}, "order.created.us", "application/json"),
    ]
    assert queue_is_empty(pika_check, queue.name)


def test_kombu_consumer_prefetch(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    queue = Queue(cleanup.queue(f"{unique}-prefetch"), durable=False, auto_delete=False)
    received: list[Any] = []
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        with conn.channel() as channel:
            queue(channel).declare()
            producer = Producer(channel, routing_key=queue.name, serializer="json")
            for i in range(5):
                producer.publish({"n": i}, routing_key=queue.name)
            consumer = Consumer(
                channel, [queue], callbacks=[lambda body, msg: received.append((body, msg))], prefetch_count=2
            )
            with consumer:
                assert kombu_drain(conn, lambda: len(received) == 2)
                with contextlib.suppress(socket.timeout, TimeoutError):
                    conn.drain_events(timeout=0.3)
                assert [b for b, _m in received] == [{"n": 0}, {"n": 1}]  # prefetch holds the rest back
                received[0][1].ack()
                assert kombu_drain(conn, lambda: len(received) == 3)
                assert received[2][0] == {"n": 2}
                # Raising the limit with kombu's default (apply_global=False): kombu believes a
                # broker has the spec's semantics unless it is RabbitMQ 3.3-3.x, and the broker
                # must behave as kombu believes. RabbitMQ 3.x: per consumer, for later consumers
                # only, so nothing more arrives. A broker kombu takes for spec-compliant: one
                # channel-wide limit, raised at once, so the rest arrives.
                consumer.qos(prefetch_count=10)
                if conn.qos_semantics_matches_spec:
                    assert kombu_drain(conn, lambda: len(received) == 5)
                else:
                    with contextlib.suppress(socket.timeout, TimeoutError):
                        conn.drain_events(timeout=0.3)
                    assert len(received) == 3
                for i in range(1, 5):
                    received[i][1].ack()
                    assert kombu_drain(conn, lambda i=i: len(received) >= min(i + 3, 5))
    assert [b["n"] for b, _m in received] == [0, 1, 2, 3, 4]
    assert queue_is_empty(pika_check, queue.name)


def test_kombu_global_qos_like_celery(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    """Celery's worker sets a channel-wide prefetch and raises it while consuming (ETA tasks)."""
    queue = Queue(cleanup.queue(f"{unique}-celery-qos"), durable=False, auto_delete=False)
    received: list[Any] = []
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        conn.connect()
        # kombu (and so Celery) reads the server's product/version to pick QoS semantics:
        # for RabbitMQ 3.3-3.x it reports False and Celery then uses global QoS; for any other
        # broker True, and Celery sends apply_global=False meaning the same channel-wide limit.
        apply_global = not conn.qos_semantics_matches_spec
        with conn.channel() as channel:
            queue(channel).declare()
            producer = Producer(channel, routing_key=queue.name, serializer="json")
            for i in range(6):
                producer.publish({"n": i}, routing_key=queue.name)
            consumer = Consumer(channel, [queue], callbacks=[lambda body, msg: received.append((body, msg))])
            consumer.qos(prefetch_count=1, apply_global=apply_global)
            with consumer:
                assert kombu_drain(conn, lambda: len(received) == 1)
                with contextlib.suppress(socket.timeout, TimeoutError):
                    conn.drain_events(timeout=0.3)
                assert len(received) == 1
                # Raising a global limit takes effect for the existing consumer at once.
                consumer.qos(prefetch_count=3, apply_global=apply_global)
                assert kombu_drain(conn, lambda: len(received) == 3)
                with contextlib.suppress(socket.timeout, TimeoutError):
                    conn.drain_events(timeout=0.3)
                assert len(received) == 3
                # prefetch_count=0 means unlimited.
                consumer.qos(prefetch_count=0, apply_global=apply_global)
                assert kombu_drain(conn, lambda: len(received) == 6)
                for _b, m in received:
                    m.ack()
    assert [b["n"] for b, _m in received] == [0, 1, 2, 3, 4, 5]
    assert queue_is_empty(pika_check, queue.name)


def test_kombu_pidbox_style_queue_arguments(
    amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any
) -> None:
    """Queues declared the way Celery's remote-control mailbox declares them."""
    exchange = Exchange(
        cleanup.exchange(f"{unique}.pidbox"), type="fanout", durable=False, delivery_mode="transient"
    )
    queue = Queue(
        cleanup.queue(f"worker1@host.{unique}.pidbox"),
        exchange=exchange,
        durable=False,
        exclusive=False,
        auto_delete=True,
        expires=10.0,  # x-expires 10000 ms
        message_ttl=300.0,  # x-message-ttl 300000 ms
    )
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        bound = queue(channel)
        bound.declare()
        bound.declare()  # an identical redeclare is fine
        Producer(channel, exchange=exchange, serializer="json").publish(
            {"method": "ping", "arguments": {}}, routing_key="", headers={"clock": 1, "expires": 0}
        )
        msg = None
        deadline = time.monotonic() + 3
        while msg is None and time.monotonic() < deadline:
            msg = bound.get(no_ack=True, accept=["json"])
        assert msg is not None
        assert msg.payload == {"method": "ping", "arguments": {}}
        assert msg.headers == {"clock": 1, "expires": 0}
        assert msg.properties["delivery_mode"] == 1
        channel.close()

    # kombu sent exactly these arguments: an identical pika redeclare is accepted ...
    pika_check.queue_declare(queue.name, auto_delete=True, arguments={"x-expires": 10000, "x-message-ttl": 300000})
    # ... while a different x-expires is refused (what Celery hits after a config change).
    with pytest.raises(ChannelClosedByBroker) as err:
        pika_check.queue_declare(
            queue.name, auto_delete=True, arguments={"x-expires": 20000, "x-message-ttl": 300000}
        )
    assert err.value.reply_code == 406
    assert "inequivalent arg 'x-expires'" in err.value.reply_text


def test_kombu_queue_arguments_take_effect(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    ttl_queue = Queue(cleanup.queue(f"{unique}-ttl"), durable=False, message_ttl=0.2)
    expiring = Queue(cleanup.queue(f"{unique}-expiring"), durable=False, expires=0.4)
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        ttl_queue(channel).declare()
        expiring(channel).declare()
        Producer(channel, serializer="json").publish({"n": 1}, routing_key=ttl_queue.name)
        Producer(channel, serializer="json").publish({"n": 2}, routing_key=ttl_queue.name)
        first = ttl_queue(channel).get(no_ack=True)
        assert first is not None and first.payload == {"n": 1}
        time.sleep(0.5)
        assert ttl_queue(channel).get(no_ack=True) is None  # x-message-ttl dropped it

        # x-expires deletes the unused queue.
        deadline = time.monotonic() + 4
        gone = False
        while not gone and time.monotonic() < deadline:
            time.sleep(0.2)
            probe = conn.channel()
            try:
                probe.queue_declare(expiring.name, passive=True)
            except conn.channel_errors as exc:
                assert exc.reply_code == 404
                gone = True
            else:
                probe.close()
        assert gone, "queue with x-expires was not deleted"


def test_kombu_pidbox_mailbox_call(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    """A Celery-style remote-control round trip (like ``celery inspect ping``) through kombu.pidbox."""
    namespace = unique
    cleanup.exchange(f"{namespace}.pidbox")
    cleanup.exchange(f"reply.{namespace}.pidbox")
    mailbox = Mailbox(
        namespace,
        type="fanout",
        accept=["json"],
        serializer="json",
        queue_ttl=300.0,
        queue_expires=10.0,
        reply_queue_ttl=300.0,
        reply_queue_expires=10.0,
    )
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with kombu.Connection(amqp_url, connect_timeout=5) as worker_conn:
                node = mailbox(worker_conn).Node(
                    "worker1@host", state={"pings": 0}, handlers={"ping": lambda state: {"ok": "pong"}}
                )
                node.channel = worker_conn.channel()
                consumer = node.listen()
                ready.set()
                try:
                    while not stop.is_set():
                        with contextlib.suppress(socket.timeout, TimeoutError):
                            worker_conn.drain_events(timeout=0.1)
                finally:
                    consumer.cancel()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
            ready.set()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        assert ready.wait(5)
        assert errors == []
        with kombu.Connection(amqp_url, connect_timeout=5) as client_conn:
            replies = mailbox(client_conn)._broadcast("ping", reply=True, timeout=2, limit=1)
    finally:
        stop.set()
        worker.join(5)
    assert not worker.is_alive()
    assert errors == []
    assert replies == [{"worker1@host": {"ok": "pong"}}]


# --------------------------------------------------------------------------- aio-pika


def test_aio_pika(amqp_url: str, unique: str, cleanup: Cleanup, pika_check: Any) -> None:
    queue_name = cleanup.queue(f"{unique}-aio")
    exchange_name = cleanup.exchange(f"{unique}-aio-x")

    async def flow() -> list[tuple[bytes, str | None, dict[str, Any], str, bool]]:
        connection = await aio_pika.connect_robust(amqp_url, timeout=5)
        async with connection:
            channel = await connection.channel()  # publisher confirms on by default
            await channel.set_qos(prefetch_count=5)
            exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.DIRECT)
            queue = await channel.declare_queue(queue_name, durable=False, auto_delete=False)
            await queue.bind(exchange, routing_key="rk")
            for i in range(3):
                await exchange.publish(
                    aio_pika.Message(
                        f"aio{i}".encode(),
                        content_type="text/plain",
                        correlation_id=f"c{i}",
                        headers={"i": i},
                    ),
                    routing_key="rk",
                )
            await channel.default_exchange.publish(aio_pika.Message(b"direct"), routing_key=queue_name)
            got = []
            async with queue.iterator() as it:
                async for message in it:
                    got.append(
                        (
                            message.body,
                            message.correlation_id,
                            dict(message.headers),
                            message.routing_key,
                            message.redelivered,
                        )
                    )
                    await message.ack()
                    if len(got) == 4:
                        break
            await queue.unbind(exchange, routing_key="rk")
        return got

    got = asyncio.run(asyncio.wait_for(flow(), timeout=10))
    assert got == [
        (b"aio0", "c0", {"i": 0}, "rk", False),
        (b"aio1", "c1", {"i": 1}, "rk", False),
        (b"aio2", "c2", {"i": 2}, "rk", False),
        (b"direct", None, {}, queue_name, False),
    ]
    assert queue_is_empty(pika_check, queue_name)


def test_aio_pika_reject_requeue_and_get(amqp_url: str, unique: str, cleanup: Cleanup) -> None:
    queue_name = cleanup.queue(f"{unique}-aio-rq")

    async def flow() -> tuple[bool, bool, bytes]:
        connection = await aio_pika.connect_robust(amqp_url, timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=False)
            await channel.default_exchange.publish(aio_pika.Message(b"again"), routing_key=queue_name)
            first = None
            for _ in range(50):
                first = await queue.get(no_ack=False, fail=False)
                if first is not None:
                    break
                await asyncio.sleep(0.05)
            assert first is not None
            await first.reject(requeue=True)
            second = await queue.get(no_ack=False, timeout=3)
            await second.ack()
            assert await queue.get(fail=False) is None
            return first.redelivered, second.redelivered, second.body

    first_redelivered, second_redelivered, body = asyncio.run(asyncio.wait_for(flow(), timeout=10))
    assert (first_redelivered, second_redelivered, body) == (False, True, b"again")
