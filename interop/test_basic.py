"""Basic-class, acknowledgement, QoS, confirm and tx semantics, checked against RabbitMQ 3.10.

Every test must pass against a real RabbitMQ (``AMQP_URL=...``); amqpbroker has to match it.
pika's BlockingConnection is the main client.  py-amqp is used where pika hides the wire
behaviour: pika makes its own consumer tags, refuses duplicate tags on the client side, has
no ``immediate`` flag and does not expose the delivery tags of publisher confirms.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlparse

import amqp
import pika
import pytest

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker, NackError, UnroutableError

pytestmark = pytest.mark.timeout(30)

Delivery = tuple[Any, pika.BasicProperties, bytes]


# --------------------------------------------------------------------------- helpers


def login_user(url: str) -> str:
    return unquote(urlparse(url).username or "guest")


def amqp_connect(url: str) -> amqp.Connection:
    """A py-amqp connection to the broker named by an ``amqp://`` URL."""
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


def wait_until(conn: BlockingConnection, pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Pump pika I/O until ``pred()`` holds or ``timeout`` seconds pass; returns ``pred()``."""
    deadline = time.monotonic() + timeout
    while not pred():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn.process_data_events(time_limit=min(0.05, remaining))
    return pred()


def settle(conn: BlockingConnection, seconds: float = 0.3) -> None:
    """Pump pika I/O for a short while, to observe that nothing (more) arrives."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        conn.process_data_events(time_limit=min(0.05, remaining))


def drain_amqp(conn: amqp.Connection, pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=min(0.2, remaining))
    return pred()


class ConfirmTracker:
    """Resolves py-amqp basic.ack/basic.nack (with ``multiple``) into per-tag outcomes."""

    def __init__(self, chan: amqp.Channel) -> None:
        self.outstanding: set[int] = set()
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.next_tag = 1
        chan.events["basic_ack"].add(lambda tag, multiple: self._settle(self.acked, tag, multiple))
        chan.events["basic_nack"].add(lambda tag, multiple: self._settle(self.nacked, tag, multiple))

    def published(self) -> int:
        tag = self.next_tag
        self.outstanding.add(tag)
        self.next_tag += 1
        return tag

    def _settle(self, into: set[int], tag: int, multiple: bool) -> None:
        done = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        assert done <= self.outstanding, f"confirm for unknown tag(s) {done - self.outstanding}"
        self.outstanding -= done
        into.update(done)


def ready_count(ch: BlockingChannel, queue: str, expect: int, timeout: float = 2.0) -> int:
    """The queue's ready-message count from a passive declare, polled until it equals ``expect``.

    RabbitMQ answers queue.declare-ok without ordering it after the channel's earlier
    publishes (they reach the queue through a delegate process), so a count taken right
    after basic.publish may lag.  basic.get, confirms and tx.commit are ordered.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count == expect or time.monotonic() >= deadline:
            return count
        time.sleep(0.02)


def get_all(ch: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    """Drain ``queue`` with auto-ack basic.get; (body, redelivered) in delivery order."""
    out = []
    for _ in range(1000):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered))
    raise AssertionError("queue did not drain")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def connect(amqp_url: str) -> Iterator[Callable[[], BlockingConnection]]:
    """Factory for pika connections that are closed at teardown."""
    conns: list[BlockingConnection] = []

    def _connect() -> BlockingConnection:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        conns.append(conn)
        return conn

    yield _connect
    for conn in conns:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


@pytest.fixture
def conn(connect: Callable[[], BlockingConnection]) -> BlockingConnection:
    return connect()


@pytest.fixture
def ch(conn: BlockingConnection) -> BlockingChannel:
    return conn.channel()


@pytest.fixture
def aconnect(amqp_url: str) -> Iterator[Callable[[], amqp.Connection]]:
    """Factory for py-amqp connections that are closed at teardown."""
    conns: list[amqp.Connection] = []

    def _connect() -> amqp.Connection:
        c = amqp_connect(amqp_url)
        conns.append(c)
        return c

    yield _connect
    for c in conns:
        if c.connected:
            with contextlib.suppress(Exception):
                c.close()


@pytest.fixture
def declare(amqp_url: str) -> Iterator[Callable[..., str]]:
    """Declare a queue on a private connection; every queue declared is deleted at teardown."""
    names: list[str] = []
    admin = pika.BlockingConnection(pika.URLParameters(amqp_url))

    def _declare(name: str, **kwargs: Any) -> str:
        admin.channel().queue_declare(name, **kwargs)
        names.append(name)
        return name

    yield _declare
    if not admin.is_open:
        admin = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        cleanup = admin.channel()
        for name in names:
            cleanup.queue_delete(name)
    finally:
        admin.close()


@pytest.fixture
def queue(declare: Callable[..., str], unique: str) -> str:
    return declare(f"{unique}-q")


def publish_n(ch: BlockingChannel, queue: str, n: int) -> list[bytes]:
    bodies = [f"m{i}".encode() for i in range(n)]
    for body in bodies:
        ch.basic_publish("", queue, body)
    return bodies


def fetch(ch: BlockingChannel, queue: str, n: int) -> list[Delivery]:
    out = []
    for _ in range(n):
        got = ch.basic_get(queue)
        assert got[0] is not None, "queue ran dry"
        out.append(got)
    return out


# --------------------------------------------------------------------------- publish / get roundtrip


def test_properties_roundtrip(ch: BlockingChannel, queue: str, amqp_url: str) -> None:
    headers = {
        "str": "text",
        "int": 42,
        "negative": -7,
        "long": 2**40,
        "true": True,
        "false": False,
        "bytes": b"\x00\xff\x01",
        "nested": {"a": 1, "list": [1, "two", {"deep": True}]},
        "list": [1, 2, 3],
        "decimal": decimal.Decimal("1.5"),
        "void": None,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply-queue",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="order.created",
        user_id=login_user(amqp_url),
        app_id="interop-tests",
    )
    body = bytes(range(256))
    ch.basic_publish("", queue, body, props)
    method, got, got_body = ch.basic_get(queue, auto_ack=True)
    assert method is not None
    assert got_body == body
    assert got.content_type == "application/json"
    assert got.content_encoding == "utf-8"
    assert got.delivery_mode == 2
    assert got.priority == 5
    assert got.correlation_id == "corr-1"
    assert got.reply_to == "reply-queue"
    assert got.message_id == "msg-1"
    assert got.timestamp == 1_700_000_000
    assert got.type == "order.created"
    assert got.user_id == login_user(amqp_url)
    assert got.app_id == "interop-tests"
    assert got.expiration is None
    assert got.headers == headers
    assert got.headers["bytes"] == b"\x00\xff\x01"
    assert got.headers["true"] is True and got.headers["false"] is False


def test_headers_roundtrip_py_amqp_types(aconnect: Callable[[], amqp.Connection], queue: str) -> None:
    """Field types pika cannot send (float/double, timestamp) survive the broker too."""
    conn = aconnect()
    chan = conn.channel()
    headers = {
        "double": 1.25,
        "timestamp": datetime.datetime(2020, 1, 2, 3, 4, 5),
        "nested": {"list": [1.5, "x", False]},
    }
    chan.basic_publish(amqp.Message(b"x", application_headers=headers, priority=3), routing_key=queue)
    msg = None
    deadline = time.monotonic() + 3
    while msg is None and time.monotonic() < deadline:
        msg = chan.basic_get(queue, no_ack=True)
    assert msg is not None
    assert msg.body == b"x"
    assert msg.properties["priority"] == 3
    got = msg.properties["application_headers"]
    assert got["double"] == 1.25
    assert got["timestamp"].replace(tzinfo=None) == datetime.datetime(2020, 1, 2, 3, 4, 5)
    assert got["nested"] == {"list": [1.5, "x", False]}


def test_user_id_mismatch_is_406(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_publish("", queue, b"x", pika.BasicProperties(user_id="not-the-login-user"))
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert "user_id property set to 'not-the-login-user'" in err.value.reply_text
    assert conn.is_open
    assert ready_count(conn.channel(), queue, 0) == 0


def test_empty_body(ch: BlockingChannel, queue: str) -> None:
    ch.basic_publish("", queue, b"", pika.BasicProperties(content_type="text/plain"))
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None
    assert body == b""
    assert props.content_type == "text/plain"


def test_empty_body_to_consumer(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    got: list[bytes] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", queue, b"")
    ch.basic_publish("", queue, b"after")
    assert wait_until(conn, lambda: len(got) == 2)
    assert got == [b"", b"after"]


def test_body_larger_than_frame_max(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    body = bytes(i % 251 for i in range(1024 * 1024 + 17))
    assert len(body) > conn._impl.params.frame_max
    ch.basic_publish("", queue, body)
    got: list[bytes] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 1)
    assert got[0] == body
    ch.basic_publish("", queue, body[::-1])
    assert wait_until(conn, lambda: len(got) == 2)
    assert got[1] == body[::-1]


def test_publish_to_missing_exchange_is_404(ch: BlockingChannel, conn: BlockingConnection, unique: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_publish(f"{unique}-no-such-exchange", "rk", b"x")
        ch.basic_qos(prefetch_count=1)
    assert err.value.reply_code == 404
    assert f"no exchange '{unique}-no-such-exchange'" in err.value.reply_text
    assert conn.is_open


# --------------------------------------------------------------------------- mandatory / immediate


def test_mandatory_unroutable_is_returned(ch: BlockingChannel, conn: BlockingConnection, unique: str) -> None:
    returned: list[tuple[Any, pika.BasicProperties, bytes]] = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    ch.basic_publish(
        "", f"{unique}-nowhere", b"lost", pika.BasicProperties(message_id="r1", headers={"k": "v"}), mandatory=True
    )
    assert wait_until(conn, lambda: len(returned) == 1)
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == ""
    assert method.routing_key == f"{unique}-nowhere"
    assert body == b"lost"
    assert props.message_id == "r1"
    assert props.headers == {"k": "v"}
    # Without mandatory the message is dropped silently.
    ch.basic_publish("", f"{unique}-nowhere", b"dropped")
    settle(conn, 0.2)
    assert len(returned) == 1
    assert ch.is_open


def test_mandatory_routable_is_not_returned(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    returned: list[Any] = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish("", queue, b"ok", mandatory=True)
    settle(conn, 0.2)
    assert returned == []
    assert ready_count(ch, queue, 1) == 1


def test_mandatory_to_exchange_without_bindings(
    ch: BlockingChannel, conn: BlockingConnection, unique: str
) -> None:
    exchange = f"{unique}-x"
    ch.exchange_declare(exchange, "direct", auto_delete=False)
    try:
        returned: list[Any] = []
        ch.add_on_return_callback(lambda c, m, p, b: returned.append(m))
        ch.basic_publish(exchange, "rk", b"x", mandatory=True)
        assert wait_until(conn, lambda: len(returned) == 1)
        assert (returned[0].reply_code, returned[0].reply_text) == (312, "NO_ROUTE")
        assert returned[0].exchange == exchange
        assert returned[0].routing_key == "rk"
    finally:
        ch.exchange_delete(exchange)


def test_immediate_flag_is_540_connection_close(aconnect: Callable[[], amqp.Connection], queue: str) -> None:
    conn = aconnect()
    chan = conn.channel()
    with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as err:
        chan.basic_publish(amqp.Message(b"x"), routing_key=queue, immediate=True)
        chan.queue_declare(queue, passive=True)
    assert err.value.reply_code == 540
    assert "immediate=true" in err.value.reply_text
    assert err.value.method_sig == (60, 40)  # closed because of basic.publish
    assert isinstance(err.value, amqp.exceptions.ConnectionError)
    assert not conn.connected


# --------------------------------------------------------------------------- basic.consume


def test_server_generated_consumer_tag(aconnect: Callable[[], amqp.Connection], queue: str) -> None:
    conn = aconnect()
    chan = conn.channel()
    got: list[amqp.Message] = []
    tag = chan.basic_consume(queue, consumer_tag="", callback=got.append)
    assert tag.startswith("amq.ctag-")
    assert len(tag) > len("amq.ctag-")
    tag2 = chan.basic_consume(queue, consumer_tag="", callback=got.append)
    assert tag2.startswith("amq.ctag-") and tag2 != tag
    chan.basic_publish(amqp.Message(b"x"), routing_key=queue)
    assert drain_amqp(conn, lambda: len(got) == 1)
    assert got[0].delivery_info["consumer_tag"] in (tag, tag2)
    assert chan.basic_cancel(tag) == tag


def test_client_consumer_tag_is_kept(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    got: list[Any] = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append(m), auto_ack=True, consumer_tag="my-tag")
    assert tag == "my-tag"
    ch.basic_publish("", queue, b"x")
    assert wait_until(conn, lambda: len(got) == 1)
    assert got[0].consumer_tag == "my-tag"
    assert got[0].routing_key == queue
    assert got[0].exchange == ""
    assert got[0].redelivered is False
    assert got[0].delivery_tag == 1


def test_duplicate_consumer_tag_is_530_connection_close(
    aconnect: Callable[[], amqp.Connection], queue: str
) -> None:
    # pika refuses duplicate tags on the client side, so speak through py-amqp.
    conn = aconnect()
    chan = conn.channel()
    chan.basic_consume(queue, consumer_tag="dup", callback=lambda m: None)
    with pytest.raises(amqp.exceptions.NotAllowed) as err:
        chan.basic_consume(queue, consumer_tag="dup", callback=lambda m: None)
    assert err.value.reply_code == 530
    assert "attempt to reuse consumer tag 'dup'" in err.value.reply_text
    assert err.value.method_sig == (60, 20)
    assert isinstance(err.value, amqp.exceptions.ConnectionError)
    assert not conn.connected


def test_same_consumer_tag_on_two_channels_is_allowed(
    aconnect: Callable[[], amqp.Connection], queue: str
) -> None:
    conn = aconnect()
    one, two = conn.channel(), conn.channel()
    assert one.basic_consume(queue, consumer_tag="same", callback=lambda m: None) == "same"
    assert two.basic_consume(queue, consumer_tag="same", callback=lambda m: None) == "same"
    assert one.basic_cancel("same") == "same"
    assert two.basic_cancel("same") == "same"


def test_exclusive_consume_refused_when_queue_has_consumer(
    conn: BlockingConnection, queue: str, amqp_url: str
) -> None:
    first = conn.channel()
    first.basic_consume(queue, lambda *a: None)
    second = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as err:
        second.basic_consume(queue, lambda *a: None, exclusive=True)
    assert err.value.reply_code == 403
    assert "in exclusive use" in err.value.reply_text
    assert first.is_open and conn.is_open


def test_consume_refused_when_queue_has_exclusive_consumer(
    connect: Callable[[], BlockingConnection], queue: str
) -> None:
    owner = connect().channel()
    owner.basic_consume(queue, lambda *a: None, exclusive=True)
    other_conn = connect()
    with pytest.raises(ChannelClosedByBroker) as err:
        other_conn.channel().basic_consume(queue, lambda *a: None)
    assert err.value.reply_code == 403
    assert "ACCESS_REFUSED" in err.value.reply_text
    assert "in exclusive use" in err.value.reply_text
    assert other_conn.is_open
    # A second exclusive consumer on the same channel is refused as well.
    with pytest.raises(ChannelClosedByBroker) as err2:
        owner.basic_consume(queue, lambda *a: None, exclusive=True)
    assert err2.value.reply_code == 403


def test_consume_missing_queue_is_404(ch: BlockingChannel, conn: BlockingConnection, unique: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_consume(f"{unique}-missing", lambda *a: None)
    assert err.value.reply_code == 404
    assert f"no queue '{unique}-missing'" in err.value.reply_text
    assert conn.is_open


def test_consume_or_get_another_connections_exclusive_queue_is_405(
    connect: Callable[[], BlockingConnection], unique: str
) -> None:
    owner = connect()
    owner_ch = owner.channel()
    queue = f"{unique}-excl"
    owner_ch.queue_declare(queue, exclusive=True)  # deleted when `owner` closes
    other = connect()
    with pytest.raises(ChannelClosedByBroker) as err:
        other.channel().basic_consume(queue, lambda *a: None)
    assert err.value.reply_code == 405
    assert "RESOURCE_LOCKED" in err.value.reply_text
    with pytest.raises(ChannelClosedByBroker) as err:
        other.channel().basic_get(queue)
    assert err.value.reply_code == 405
    # Publishing into someone else's exclusive queue is allowed.
    pub = other.channel()
    pub.basic_publish("", queue, b"to-exclusive")
    pub.basic_qos(prefetch_count=0)
    assert owner_ch.basic_get(queue, auto_ack=True)[2] == b"to-exclusive"
    assert other.is_open


def test_cancel_unknown_consumer_tag_is_ok(aconnect: Callable[[], amqp.Connection], queue: str) -> None:
    # pika checks tags on the client side; the broker itself just answers cancel-ok.
    chan = aconnect().channel()
    assert chan.basic_cancel("never-consumed") == "never-consumed"
    chan.basic_publish(amqp.Message(b"x"), routing_key=queue)
    msg = chan.basic_get(queue, no_ack=True)  # basic.get is ordered after the publish
    assert msg is not None and msg.body == b"x"


def test_no_ack_consumption(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    bodies = publish_n(ch, queue, 3)
    got: list[tuple[int, bytes]] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((m.delivery_tag, b)), auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 3)
    assert got == [(1, bodies[0]), (2, bodies[1]), (3, bodies[2])]
    ch.close()  # nothing was unacked, so nothing comes back
    assert ready_count(conn.channel(), queue, 0) == 0


def test_cancel_stops_deliveries(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    got: list[bytes] = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", queue, b"before")
    assert wait_until(conn, lambda: got == [b"before"])
    ch.basic_cancel(tag)
    assert tag not in ch.consumer_tags
    publish_n(ch, queue, 2)
    settle(conn, 0.3)
    assert got == [b"before"]
    assert ready_count(ch, queue, 2) == 2


def test_cancel_keeps_unacked_until_channel_closes(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    got: list[Any] = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append(m))
    publish_n(ch, queue, 2)
    assert wait_until(conn, lambda: len(got) == 2)
    ch.basic_cancel(tag)
    # Cancelling does not requeue; the deliveries remain unacked and can still be acked.
    assert ready_count(ch, queue, 0) == 0
    ch.basic_ack(got[0].delivery_tag)
    ch.close()
    check = conn.channel()
    assert get_all(check, queue) == [(b"m1", True)]


def test_consumer_cancel_notification_on_queue_delete(
    ch: BlockingChannel, conn: BlockingConnection, declare: Callable[..., str], unique: str
) -> None:
    queue = declare(f"{unique}-doomed")
    cancelled: list[Any] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(queue, lambda *a: None)
    conn.channel().queue_delete(queue)
    assert wait_until(conn, lambda: len(cancelled) == 1)
    assert cancelled[0].NAME == "Basic.Cancel"
    assert cancelled[0].consumer_tag == tag
    assert tag not in ch.consumer_tags
    assert ch.is_open and conn.is_open


def test_consume_generator_ends_when_queue_is_deleted(
    connect: Callable[[], BlockingConnection], declare: Callable[..., str], unique: str
) -> None:
    queue = declare(f"{unique}-doomed")
    conn = connect()
    ch = conn.channel()
    ch.basic_publish("", queue, b"only")
    other = connect()
    seen: list[Any] = []
    deadline = time.monotonic() + 3
    for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.2):
        seen.append(body)
        if body == b"only":
            other.channel().queue_delete(queue)
        assert time.monotonic() < deadline, "consume() did not end after the broker cancelled it"
    # The broker's basic.cancel ends pika's consume() generator.
    assert seen[0] == b"only"
    assert all(b is None for b in seen[1:])
    assert ch.is_open


def test_consumer_cancel_notification_py_amqp(
    aconnect: Callable[[], amqp.Connection], declare: Callable[..., str], unique: str
) -> None:
    queue = declare(f"{unique}-doomed")
    conn = aconnect()
    chan = conn.channel()
    cancelled: list[str] = []
    tag = chan.basic_consume(queue, callback=lambda m: None, on_cancel=cancelled.append)
    conn.channel().queue_delete(queue)
    assert drain_amqp(conn, lambda: cancelled == [tag])
    assert chan.is_open


def test_round_robin_between_two_consumers(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    got: list[tuple[str, bytes]] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(("A", b)), auto_ack=True)
    ch.basic_consume(queue, lambda c, m, p, b: got.append(("B", b)), auto_ack=True)
    bodies = publish_n(ch, queue, 6)
    assert wait_until(conn, lambda: len(got) == 6)
    a = [b for who, b in got if who == "A"]
    b = [b for who, b in got if who == "B"]
    # The first-registered consumer gets the first message, then strict alternation.
    assert a == bodies[0::2]
    assert b == bodies[1::2]


def test_round_robin_across_channels(conn: BlockingConnection, queue: str) -> None:
    one, two = conn.channel(), conn.channel()
    got: dict[str, list[bytes]] = {"A": [], "B": []}
    one.basic_consume(queue, lambda c, m, p, b: got["A"].append(b), auto_ack=True)
    two.basic_consume(queue, lambda c, m, p, b: got["B"].append(b), auto_ack=True)
    bodies = publish_n(one, queue, 6)
    assert wait_until(conn, lambda: len(got["A"]) + len(got["B"]) == 6)
    assert got["A"] == bodies[0::2]
    assert got["B"] == bodies[1::2]


def test_fifo_ordering(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    bodies = publish_n(ch, queue, 200)
    got: list[bytes] = []
    tags: list[int] = []

    def on_msg(c: Any, m: Any, p: Any, b: bytes) -> None:
        got.append(b)
        tags.append(m.delivery_tag)

    ch.basic_consume(queue, on_msg, auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 200)
    assert got == bodies
    assert tags == list(range(1, 201))


# --------------------------------------------------------------------------- basic.qos


def test_prefetch_per_consumer(conn: BlockingConnection, declare: Callable[..., str], unique: str) -> None:
    q1, q2 = declare(f"{unique}-a"), declare(f"{unique}-b")
    ch = conn.channel()
    publish_n(ch, q1, 5)
    publish_n(ch, q2, 5)
    ch.basic_qos(prefetch_count=2)  # global=False: a limit for each new consumer
    got: list[tuple[str, Any, bytes]] = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(("A", m, b)))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(("B", m, b)))
    assert wait_until(conn, lambda: len(got) == 4)
    settle(conn, 0.3)
    assert sorted((who, b) for who, _m, b in got) == [("A", b"m0"), ("A", b"m1"), ("B", b"m0"), ("B", b"m1")]
    # Acking one of A's frees exactly one slot for A.
    first_a = next(m for who, m, _b in got if who == "A")
    ch.basic_ack(first_a.delivery_tag)
    assert wait_until(conn, lambda: len(got) == 5)
    settle(conn, 0.3)
    assert len(got) == 5
    assert (got[4][0], got[4][2]) == ("A", b"m2")


def test_prefetch_global_shared_by_channel_consumers(
    conn: BlockingConnection, declare: Callable[..., str], unique: str
) -> None:
    q1, q2 = declare(f"{unique}-a"), declare(f"{unique}-b")
    ch = conn.channel()
    publish_n(ch, q1, 5)
    publish_n(ch, q2, 5)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got: list[tuple[str, Any]] = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(("A", m)))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(("B", m)))
    assert wait_until(conn, lambda: len(got) == 3)
    settle(conn, 0.3)
    assert len(got) == 3  # 3 across both consumers, not 3 each
    ch.basic_ack(got[0][1].delivery_tag)
    assert wait_until(conn, lambda: len(got) == 4)
    settle(conn, 0.3)
    assert len(got) == 4
    ch.basic_ack(0, multiple=True)
    assert wait_until(conn, lambda: len(got) == 7)
    settle(conn, 0.2)
    assert len(got) == 7


def test_prefetch_applies_to_consumers_created_after_qos(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    got: list[Any] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(m))  # unlimited
    ch.basic_qos(prefetch_count=1)
    publish_n(ch, queue, 4)
    assert wait_until(conn, lambda: len(got) == 4)


def test_changing_per_consumer_prefetch_does_not_affect_existing_consumer(
    conn: BlockingConnection, queue: str
) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 10)
    ch.basic_qos(prefetch_count=2)
    got: list[Any] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(m))
    assert wait_until(conn, lambda: len(got) == 2)
    ch.basic_qos(prefetch_count=5)
    settle(conn, 0.3)
    assert len(got) == 2  # the running consumer keeps its limit of 2
    # A global limit is enforced on top of the consumer's own limit.
    ch.basic_qos(prefetch_count=4, global_qos=True)
    ch.basic_ack(got[0].delivery_tag)
    assert wait_until(conn, lambda: len(got) == 3)
    settle(conn, 0.3)
    assert len(got) == 3
    # A consumer created now gets the new per-consumer limit (5), capped by the global 4.
    got2: list[Any] = []
    ch.basic_consume(queue, lambda c, m, p, b: got2.append(m))
    assert wait_until(conn, lambda: len(got2) == 2)
    settle(conn, 0.3)
    assert len(got2) == 2  # 2 unacked on the first consumer + 2 here = global 4


def test_raising_global_prefetch_applies_to_existing_consumer(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 6)
    ch.basic_qos(prefetch_count=1, global_qos=True)
    got: list[bytes] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b))
    assert wait_until(conn, lambda: len(got) == 1)
    settle(conn, 0.2)
    assert len(got) == 1
    ch.basic_qos(prefetch_count=3, global_qos=True)
    assert wait_until(conn, lambda: len(got) == 3)
    settle(conn, 0.2)
    assert len(got) == 3
    ch.basic_qos(prefetch_count=0, global_qos=True)  # 0 = unlimited
    assert wait_until(conn, lambda: len(got) == 6)
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]


def test_prefetch_does_not_limit_basic_get(ch: BlockingChannel, queue: str) -> None:
    publish_n(ch, queue, 3)
    ch.basic_qos(prefetch_count=1)
    got = fetch(ch, queue, 3)
    assert [b for _m, _p, b in got] == [b"m0", b"m1", b"m2"]


def test_prefetch_size_is_540_not_implemented(ch: BlockingChannel, conn: BlockingConnection) -> None:
    with pytest.raises(ConnectionClosedByBroker) as err:
        ch.basic_qos(prefetch_size=4096, prefetch_count=10)
    assert err.value.reply_code == 540
    assert "prefetch_size!=0" in err.value.reply_text
    assert not conn.is_open


# --------------------------------------------------------------------------- basic.get


def test_basic_get_and_get_empty(ch: BlockingChannel, queue: str) -> None:
    assert ch.basic_get(queue) == (None, None, None)
    publish_n(ch, queue, 3)
    counts = []
    for expected in (b"m0", b"m1", b"m2"):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        assert body == expected
        assert method.redelivered is False
        assert method.exchange == ""
        assert method.routing_key == queue
        counts.append(method.message_count)
    assert counts == [2, 1, 0]
    assert ch.basic_get(queue) == (None, None, None)


def test_basic_get_empty_py_amqp(aconnect: Callable[[], amqp.Connection], queue: str) -> None:
    chan = aconnect().channel()
    assert chan.basic_get(queue) is None


def test_basic_get_delivery_tags_increase(ch: BlockingChannel, queue: str) -> None:
    publish_n(ch, queue, 3)
    tags = [m.delivery_tag for m, _p, _b in fetch(ch, queue, 3)]
    assert tags == [1, 2, 3]


def test_basic_get_missing_queue_is_404(ch: BlockingChannel, conn: BlockingConnection, unique: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_get(f"{unique}-missing")
    assert err.value.reply_code == 404
    assert conn.is_open


# --------------------------------------------------------------------------- ack / nack / reject


def test_ack_removes_message(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 2)
    (m0, _p, _b), (m1, _p1, _b1) = fetch(ch, queue, 2)
    ch.basic_ack(m0.delivery_tag)
    ch.close()  # m1 was not acked: it alone comes back
    assert get_all(conn.channel(), queue) == [(b"m1", True)]


def test_ack_multiple(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 4)
    got = fetch(ch, queue, 4)
    ch.basic_ack(got[2][0].delivery_tag, multiple=True)  # acks tags 1..3
    ch.close()
    assert get_all(conn.channel(), queue) == [(b"m3", True)]


def test_ack_tag_zero_multiple_acks_everything(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 3)
    fetch(ch, queue, 3)
    ch.basic_ack(0, multiple=True)
    assert ready_count(ch, queue, 0) == 0
    ch.close()
    assert get_all(conn.channel(), queue) == []


def test_nack_multiple_requeue(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 4)
    got = fetch(ch, queue, 3)
    ch.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)
    assert get_all(ch, queue) == [(b"m0", True), (b"m1", True), (b"m2", True), (b"m3", False)]


def test_nack_tag_zero_multiple_requeues_everything(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 3)
    fetch(ch, queue, 3)
    ch.basic_nack(0, multiple=True, requeue=True)
    assert get_all(ch, queue) == [(b"m0", True), (b"m1", True), (b"m2", True)]


def test_reject_requeue_goes_back_to_the_head(ch: BlockingChannel, queue: str) -> None:
    publish_n(ch, queue, 3)
    (m0, _p, body) = ch.basic_get(queue)
    assert body == b"m0"
    ch.basic_reject(m0.delivery_tag, requeue=True)
    method, _p, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"m0", True)
    assert method.delivery_tag == 2  # a fresh tag for the redelivery
    assert get_all(ch, queue) == [(b"m1", False), (b"m2", False)]


def test_requeued_messages_return_to_original_positions(ch: BlockingChannel, queue: str) -> None:
    publish_n(ch, queue, 5)
    got = fetch(ch, queue, 5)
    assert got[-1][0].message_count == 0
    # Requeue out of order; the queue restores publish order, not requeue order.
    ch.basic_nack(got[3][0].delivery_tag, requeue=True)
    ch.basic_nack(got[1][0].delivery_tag, requeue=True)
    ch.basic_reject(got[4][0].delivery_tag, requeue=True)
    assert get_all(ch, queue) == [(b"m1", True), (b"m3", True), (b"m4", True)]
    ch.basic_ack(0, multiple=True)


def test_requeued_message_is_redelivered_to_consumer_first(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 3)
    method, _p, body = ch.basic_get(queue)
    assert body == b"m0"
    ch.basic_reject(method.delivery_tag, requeue=True)
    got: list[tuple[bytes, bool]] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((b, m.redelivered)), auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 3)
    assert got == [(b"m0", True), (b"m1", False), (b"m2", False)]


def test_nack_and_reject_without_requeue_drop(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    publish_n(ch, queue, 4)
    got = fetch(ch, queue, 4)
    ch.basic_reject(got[0][0].delivery_tag, requeue=False)
    ch.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=False)  # tags 2 and 3
    ch.close()
    assert get_all(conn.channel(), queue) == [(b"m3", True)]


def test_unknown_delivery_tag_is_406(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_ack(99)
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert "unknown delivery tag 99" in err.value.reply_text
    assert conn.is_open
    # The connection stays usable.
    again = conn.channel()
    again.basic_publish("", queue, b"still works")
    assert again.basic_get(queue, auto_ack=True)[2] == b"still works"


@pytest.mark.parametrize("how", ["reject", "nack", "ack_multiple"])
def test_unknown_delivery_tag_other_methods_are_406(conn: BlockingConnection, queue: str, how: str) -> None:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as err:
        if how == "reject":
            ch.basic_reject(7)
        elif how == "nack":
            ch.basic_nack(7)
        else:
            ch.basic_ack(7, multiple=True)
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert "unknown delivery tag 7" in err.value.reply_text
    assert conn.is_open


def test_ack_tag_zero_without_multiple_is_406(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    ch.basic_get(queue)
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_ack(0)
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert "unknown delivery tag 0" in err.value.reply_text


def test_ack_tag_zero_multiple_with_nothing_unacked_is_ok(ch: BlockingChannel, queue: str) -> None:
    ch.basic_ack(0, multiple=True)
    ch.basic_nack(0, multiple=True)
    assert ready_count(ch, queue, 0) == 0
    assert ch.is_open


def test_delivery_tags_are_per_channel(conn: BlockingConnection, queue: str) -> None:
    one, two = conn.channel(), conn.channel()
    one.basic_publish("", queue, b"x")
    method, _p, _b = one.basic_get(queue)
    with pytest.raises(ChannelClosedByBroker) as err:
        two.basic_ack(method.delivery_tag)
        two.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert one.is_open
    one.basic_ack(method.delivery_tag)
    assert ready_count(one, queue, 0) == 0


def test_ack_after_queue_deleted_is_ok(
    ch: BlockingChannel, conn: BlockingConnection, declare: Callable[..., str], unique: str
) -> None:
    queue = declare(f"{unique}-gone")
    ch.basic_publish("", queue, b"x")
    got: list[Any] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(m))
    assert wait_until(conn, lambda: len(got) == 1)
    conn.channel().queue_delete(queue)
    ch.basic_ack(got[0].delivery_tag)  # the channel still knows the tag
    ch.basic_qos(prefetch_count=0)
    assert ch.is_open


def test_double_ack_is_406(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    method, _p, _b = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_ack(method.delivery_tag)
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert f"unknown delivery tag {method.delivery_tag}" in err.value.reply_text
    assert conn.is_open
    assert ready_count(conn.channel(), queue, 0) == 0  # the first ack stood


def test_ack_of_auto_ack_delivery_is_406(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    method, _p, _b = ch.basic_get(queue, auto_ack=True)
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_ack(method.delivery_tag)
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406
    assert "unknown delivery tag" in err.value.reply_text


def test_unacked_deliveries_close_with_406_requeue(connect: Callable[[], BlockingConnection], queue: str) -> None:
    """A channel closed by a 406 still requeues what it had unacked."""
    conn = connect()
    ch = conn.channel()
    publish_n(ch, queue, 2)
    fetch(ch, queue, 2)
    with pytest.raises(ChannelClosedByBroker):
        ch.basic_ack(42)
        ch.queue_declare(queue, passive=True)
    assert get_all(conn.channel(), queue) == [(b"m0", True), (b"m1", True)]


# --------------------------------------------------------------------------- requeue on close


def test_channel_close_requeues_unacked_to_other_consumer(
    connect: Callable[[], BlockingConnection], queue: str
) -> None:
    conn = connect()
    worker = conn.channel()
    publish_n(worker, queue, 3)
    got: list[Any] = []
    worker.basic_consume(queue, lambda c, m, p, b: got.append((m, b)))
    assert wait_until(conn, lambda: len(got) == 3)
    assert all(m.redelivered is False for m, _b in got)
    worker.basic_ack(got[1][0].delivery_tag)

    other_conn = connect()
    other = other_conn.channel()
    seen: list[tuple[bytes, bool]] = []
    other.basic_consume(queue, lambda c, m, p, b: seen.append((b, m.redelivered)), auto_ack=True)
    settle(other_conn, 0.2)
    assert seen == []
    worker.close()
    assert wait_until(other_conn, lambda: len(seen) == 2)
    assert seen == [(b"m0", True), (b"m2", True)]


def test_connection_close_requeues_unacked(connect: Callable[[], BlockingConnection], queue: str) -> None:
    conn = connect()
    ch = conn.channel()
    publish_n(ch, queue, 3)
    got: list[Any] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(m))
    assert wait_until(conn, lambda: len(got) == 3)
    conn.close()

    other_conn = connect()
    other = other_conn.channel()
    seen: list[tuple[bytes, bool]] = []
    other.basic_consume(queue, lambda c, m, p, b: seen.append((b, m.redelivered)), auto_ack=True)
    assert wait_until(other_conn, lambda: len(seen) == 3)
    assert seen == [(b"m0", True), (b"m1", True), (b"m2", True)]


def test_requeued_on_close_keep_place_ahead_of_newer(
    connect: Callable[[], BlockingConnection], queue: str
) -> None:
    conn = connect()
    ch = conn.channel()
    publish_n(ch, queue, 2)
    fetch(ch, queue, 2)
    ch.basic_publish("", queue, b"later")
    ch.close()
    assert get_all(conn.channel(), queue) == [(b"m0", True), (b"m1", True), (b"later", False)]


# --------------------------------------------------------------------------- basic.recover


def test_recover_requeue_redelivers_unacked(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    publish_n(ch, queue, 2)
    got: list[tuple[int, bytes, bool]] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((m.delivery_tag, b, m.redelivered)))
    assert wait_until(conn, lambda: len(got) == 2)
    assert got == [(1, b"m0", False), (2, b"m1", False)]
    ch.basic_ack(1)
    ch.basic_recover(requeue=True)
    assert wait_until(conn, lambda: len(got) == 3)
    settle(conn, 0.2)
    assert got[2] == (3, b"m1", True)  # new tag, redelivered flag set
    ch.basic_ack(3)
    # The old tag died with the recover.
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_ack(2)
        ch.queue_declare(queue, passive=True)
    assert err.value.reply_code == 406


def test_recover_requeue_after_basic_get(ch: BlockingChannel, queue: str) -> None:
    publish_n(ch, queue, 3)
    fetch(ch, queue, 2)
    ch.basic_recover(requeue=True)
    assert get_all(ch, queue) == [(b"m0", True), (b"m1", True), (b"m2", False)]


def test_recover_without_requeue_is_540(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    ch.basic_publish("", queue, b"x")
    ch.basic_get(queue)
    with pytest.raises(ConnectionClosedByBroker) as err:
        ch.basic_recover(requeue=False)
    assert err.value.reply_code == 540
    assert "requeue=false" in err.value.reply_text
    assert not conn.is_open


# --------------------------------------------------------------------------- publisher confirms


def test_confirm_mode_publishes_are_acked(ch: BlockingChannel, queue: str) -> None:
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", queue, f"c{i}".encode())  # raises on nack or return
    assert ready_count(ch, queue, 5) == 5


def test_confirm_select_is_idempotent(aconnect: Callable[[], amqp.Connection], queue: str) -> None:
    chan = aconnect().channel()
    chan.confirm_select()
    chan.confirm_select()
    chan.basic_publish_confirm(amqp.Message(b"x"), routing_key=queue)


def test_confirm_delivery_tags(aconnect: Callable[[], amqp.Connection], queue: str, unique: str) -> None:
    conn = aconnect()
    chan = conn.channel()
    confirms = ConfirmTracker(chan)
    chan.confirm_select()
    for i in range(10):
        # Unroutable (non-mandatory) publishes are confirmed too, and take a tag.
        rk = queue if i % 3 else f"{unique}-nowhere"
        chan.basic_publish(amqp.Message(f"c{i}".encode()), routing_key=rk)
        confirms.published()
    assert drain_amqp(conn, lambda: not confirms.outstanding)
    assert confirms.acked == set(range(1, 11))
    assert confirms.nacked == set()


def test_confirm_unroutable_mandatory_returns_then_acks(
    aconnect: Callable[[], amqp.Connection], unique: str
) -> None:
    conn = aconnect()
    chan = conn.channel()
    events: list[tuple[Any, ...]] = []
    chan.events["basic_return"].add(
        lambda exc, exchange, rk, msg: events.append(("return", exc.reply_code, exc.reply_text, rk, msg.body))
    )
    chan.events["basic_ack"].add(lambda tag, multiple: events.append(("ack", tag)))
    chan.confirm_select()
    chan.basic_publish(amqp.Message(b"lost"), routing_key=f"{unique}-nowhere", mandatory=True)
    assert drain_amqp(conn, lambda: len(events) == 2)
    assert events == [("return", 312, "NO_ROUTE", f"{unique}-nowhere", b"lost"), ("ack", 1)]


def test_confirm_unroutable_mandatory_pika_raises(ch: BlockingChannel, unique: str, queue: str) -> None:
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as err:
        ch.basic_publish("", f"{unique}-nowhere", b"lost", mandatory=True)
    assert len(err.value.messages) == 1
    assert err.value.messages[0].body == b"lost"
    assert err.value.messages[0].method.reply_code == 312
    # The channel stays usable; non-mandatory unroutable publishes are just acked.
    ch.basic_publish("", f"{unique}-nowhere", b"dropped")
    ch.basic_publish("", queue, b"kept", mandatory=True)
    assert ready_count(ch, queue, 1) == 1


def test_confirm_nack_when_queue_rejects_publish(
    aconnect: Callable[[], amqp.Connection], declare: Callable[..., str], unique: str
) -> None:
    queue = declare(f"{unique}-full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    conn = aconnect()
    chan = conn.channel()
    confirms = ConfirmTracker(chan)
    chan.confirm_select()
    chan.basic_publish(amqp.Message(b"fits"), routing_key=queue)  # enqueued
    confirms.published()
    for _ in range(2):
        chan.basic_publish(amqp.Message(b"full"), routing_key=queue)  # refused by the full queue
        confirms.published()
    assert drain_amqp(conn, lambda: not confirms.outstanding)
    assert confirms.acked == {1}
    assert confirms.nacked == {2, 3}
    assert chan.basic_get(queue, no_ack=True).body == b"fits"


def test_confirm_nack_pika_raises(ch: BlockingChannel, declare: Callable[..., str], unique: str) -> None:
    queue = declare(f"{unique}-full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"fits")
    with pytest.raises(NackError):
        ch.basic_publish("", queue, b"full")
    assert ch.is_open
    assert ch.basic_get(queue, auto_ack=True)[2] == b"fits"


def test_confirm_on_tx_channel_is_406(ch: BlockingChannel, conn: BlockingConnection) -> None:
    ch.tx_select()
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.confirm_delivery()
    assert err.value.reply_code == 406
    assert "cannot switch from tx to confirm mode" in err.value.reply_text
    assert conn.is_open


def test_tx_on_confirm_channel_is_406(ch: BlockingChannel, conn: BlockingConnection) -> None:
    ch.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.tx_select()
    assert err.value.reply_code == 406
    assert "cannot switch from confirm to tx mode" in err.value.reply_text
    assert conn.is_open


# --------------------------------------------------------------------------- tx


def test_tx_rollback_discards_publishes(ch: BlockingChannel, queue: str) -> None:
    ch.tx_select()
    publish_n(ch, queue, 3)
    assert ready_count(ch, queue, 0) == 0  # nothing is enqueued before commit
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)
    ch.tx_rollback()
    assert ready_count(ch, queue, 0) == 0
    ch.tx_commit()  # the rolled-back publishes stay gone
    assert ready_count(ch, queue, 0) == 0


def test_tx_commit_delivers(ch: BlockingChannel, conn: BlockingConnection, queue: str) -> None:
    ch.tx_select()
    bodies = publish_n(ch, queue, 3)
    ch.tx_commit()
    assert ready_count(ch, queue, 3) == 3
    # The channel stays transactional: the next batch again waits for commit.
    ch.basic_publish("", queue, b"second")
    time.sleep(0.1)
    assert ready_count(ch, queue, 3) == 3
    ch.tx_commit()
    assert [b for b, _r in get_all(conn.channel(), queue)] == [*bodies, b"second"]


def test_tx_select_twice_is_fine(ch: BlockingChannel, queue: str) -> None:
    ch.tx_select()
    ch.tx_select()
    ch.basic_publish("", queue, b"x")
    ch.tx_commit()
    assert ready_count(ch, queue, 1) == 1


def test_tx_uncommitted_publishes_vanish_on_close(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.tx_select()
    publish_n(ch, queue, 2)
    ch.close()
    assert ready_count(conn.channel(), queue, 0) == 0


def test_tx_rollback_undoes_ack(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    ch.tx_select()
    method, _p, _b = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    # The ack is forgotten: the message is still unacked (not ready) ...
    assert ready_count(ch, queue, 0) == 0
    ch.close()
    # ... so closing the channel requeues it.
    assert get_all(conn.channel(), queue) == [(b"x", True)]


def test_tx_rollback_then_ack_again_and_commit(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    ch.tx_select()
    method, _p, _b = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()
    ch.basic_ack(method.delivery_tag)  # the tag is still valid after the rollback
    ch.tx_commit()
    ch.close()
    assert ready_count(conn.channel(), queue, 0) == 0


def test_tx_uncommitted_ack_is_undone_on_close(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    ch.tx_select()
    method, _p, _b = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    ch.close()
    assert get_all(conn.channel(), queue) == [(b"x", True)]


def test_tx_rollback_undoes_reject(conn: BlockingConnection, queue: str) -> None:
    ch = conn.channel()
    ch.basic_publish("", queue, b"x")
    ch.tx_select()
    method, _p, _b = ch.basic_get(queue)
    ch.basic_reject(method.delivery_tag, requeue=True)
    ch.tx_rollback()
    assert ready_count(ch, queue, 0) == 0  # not requeued
    ch.basic_reject(method.delivery_tag, requeue=True)
    ch.tx_commit()
    assert get_all(ch, queue) == [(b"x", True)]


@pytest.mark.parametrize("method", ["tx_commit", "tx_rollback"])
def test_tx_without_select_is_406(conn: BlockingConnection, method: str) -> None:
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as err:
        getattr(ch, method)()
    assert err.value.reply_code == 406
    assert "channel is not transactional" in err.value.reply_text
    assert conn.is_open
