"""Queue interop: naming, declare-ok counts, equivalence, exclusivity, auto-delete,
bind/unbind, purge/delete and x-argument validation, plus kombu/Celery style declares.

Every expectation here was checked against RabbitMQ 3.10.8.
"""

from __future__ import annotations

import time

import kombu
import pika
import pika.exceptions
import pytest

from kombu import Exchange, Queue
from kombu.pidbox import Mailbox

from interop.support import channel_error as _channel_error
from interop.support import connect as _connect
from interop.support import drain as _drain
from interop.support import exists as _exists

pytestmark = pytest.mark.timeout(30)


def _publish(ch, queue: str, bodies) -> None:
    if not getattr(ch, "_delivery_confirmation", False):
        ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", queue, b)


def _wait_gone(url: str, queue: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _exists(url, queue):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- naming and declare-ok


def test_server_named_queue(ch):
    first = ch.queue_declare("", exclusive=True).method
    second = ch.queue_declare("", exclusive=True).method
    assert first.queue.startswith("amq.gen-")
    assert second.queue.startswith("amq.gen-")
    assert first.queue != second.queue
    assert (first.message_count, first.consumer_count) == (0, 0)
    # the generated name is a normal name afterwards
    assert ch.queue_declare(first.queue, passive=True).method.queue == first.queue


def test_passive_declare_missing_queue_is_404(conn, ch, unique):
    name = f"{unique}-missing"
    err = _channel_error(ch, lambda: ch.queue_declare(name, passive=True))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")
    assert f"no queue '{name}'" in err.reply_text
    assert conn.is_open
    assert conn.channel().queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")


def test_declare_ok_counts_ready_messages_and_consumers(conn, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ok = ch.queue_declare(q).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)
    _publish(ch, q, [b"1", b"2", b"3"])
    ok = ch.queue_declare(q).method
    assert (ok.message_count, ok.consumer_count) == (3, 0)
    # a consumer with prefetch 1 holds one unacked message: it no longer counts as ready
    consumer_ch = conn.channel()
    consumer_ch.basic_qos(prefetch_count=1)
    seen = []
    consumer_ch.basic_consume(q, lambda c, m, p, b: seen.append(b))
    deadline = time.monotonic() + 3
    while not seen and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert seen == [b"1"]
    ok = ch.queue_declare(q, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (2, 1)
    # closing the consumer's channel requeues the unacked message
    consumer_ch.close()
    deadline = time.monotonic() + 2
    while True:
        ok = ch.queue_declare(q, passive=True).method
        if ok.message_count == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert (ok.message_count, ok.consumer_count) == (3, 0)


def test_passive_declare_ignores_flags_and_arguments(ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q)
    ok = ch.queue_declare(
        q, passive=True, durable=True, auto_delete=True, arguments={"x-message-ttl": 5}
    )
    assert ok.method.queue == q


@pytest.mark.parametrize("prefix", ["amq.", "amq.gen-"])
def test_declare_reserved_amq_prefix_is_403(conn, ch, unique, prefix):
    name = f"{prefix}{unique}"
    err = _channel_error(ch, lambda: ch.queue_declare(name))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    assert name in err.reply_text
    ch = conn.channel()
    err = _channel_error(ch, lambda: ch.queue_declare(name, passive=True))
    assert err.reply_code == 404


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "first,second,field",
    [
        ({}, {"durable": True}, "durable"),
        ({"durable": True}, {"durable": False}, "durable"),
        ({}, {"auto_delete": True}, "auto_delete"),
    ],
)
def test_inequivalent_flags_are_406(conn, ch, cleanup, unique, first, second, field):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q, **first)
    err = _channel_error(ch, lambda: ch.queue_declare(q, **second))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert f"inequivalent arg '{field}'" in err.reply_text
    assert q in err.reply_text
    assert conn.channel().queue_declare(q, **first).method.queue == q


def test_exclusive_mismatch_is_405_resource_locked(conn, ch, cleanup, unique):
    shared = cleanup.queue(f"{unique}-shared")
    ch.queue_declare(shared)
    err = _channel_error(ch, lambda: ch.queue_declare(shared, exclusive=True))
    assert err.reply_code == 405
    assert err.reply_text.startswith("RESOURCE_LOCKED")
    assert shared in err.reply_text
    # and the other way round on the owning connection
    ch = conn.channel()
    own = ch.queue_declare(f"{unique}-own", exclusive=True).method.queue
    err = _channel_error(ch, lambda: ch.queue_declare(own))
    assert err.reply_code == 405


@pytest.mark.parametrize(
    "args,redeclare,field",
    [
        ({"x-message-ttl": 1000}, {"x-message-ttl": 2000}, "x-message-ttl"),
        ({"x-message-ttl": 1000}, {"x-message-ttl": "1000"}, "x-message-ttl"),
        ({"x-message-ttl": 1000}, {}, "x-message-ttl"),
        ({}, {"x-message-ttl": 1000}, "x-message-ttl"),
        ({"x-expires": 60000}, {"x-expires": 30000}, "x-expires"),
        ({}, {"x-max-length": 5}, "x-max-length"),
        ({}, {"x-max-priority": 5}, "x-max-priority"),
        ({}, {"x-dead-letter-exchange": "dlx"}, "x-dead-letter-exchange"),
        ({}, {"x-overflow": "drop-head"}, "x-overflow"),
        ({}, {"x-queue-mode": "lazy"}, "x-queue-mode"),
        ({}, {"x-single-active-consumer": False}, "x-single-active-consumer"),
        ({}, {"x-queue-type": "quorum"}, "x-queue-type"),
    ],
)
def test_inequivalent_arguments_are_406(conn, ch, cleanup, unique, args, redeclare, field):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q, arguments=args)
    err = _channel_error(ch, lambda: ch.queue_declare(q, arguments=redeclare))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert f"inequivalent arg '{field}'" in err.reply_text
    assert q in err.reply_text
    assert conn.is_open


def test_equivalent_arguments_and_unknown_arguments_are_accepted(ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    args = {"x-message-ttl": 1000, "x-expires": 60000}
    ch.queue_declare(q, arguments=args)
    ch.queue_declare(q, arguments=dict(args))
    # arguments the broker does not know are neither validated nor compared
    ch.queue_declare(q, arguments={**args, "x-foo": 1, "foo": "bar"})
    # classic is the implicit queue type
    ch.queue_declare(q, arguments={**args, "x-queue-type": "classic"})


# --------------------------------------------------------------------------- exclusive / auto-delete


@pytest.mark.parametrize("op", ["passive", "declare", "declare-exclusive", "consume", "get", "bind", "purge", "delete"])
def test_exclusive_queue_from_other_connection_is_405(amqp_url, conn, ch, unique, op):
    q = ch.queue_declare(f"{unique}-excl", exclusive=True).method.queue
    with _connect(amqp_url) as other:
        och = other.channel()
        fns = {
            "passive": lambda: och.queue_declare(q, passive=True),
            "declare": lambda: och.queue_declare(q),
            "declare-exclusive": lambda: och.queue_declare(q, exclusive=True),
            "consume": lambda: och.basic_consume(q, lambda *a: None),
            "get": lambda: och.basic_get(q),
            "bind": lambda: och.queue_bind(q, "amq.direct", unique),
            "purge": lambda: och.queue_purge(q),
            "delete": lambda: och.queue_delete(q),
        }
        err = _channel_error(och, fns[op])
        assert err.reply_code == 405
        assert err.reply_text.startswith("RESOURCE_LOCKED")
        assert q in err.reply_text
        assert other.is_open
    # the owner is unaffected
    assert ch.queue_declare(q, passive=True).method.queue == q


def test_exclusive_queue_accepts_publishes_from_other_connections(amqp_url, conn, ch, unique):
    q = ch.queue_declare(f"{unique}-excl", exclusive=True).method.queue
    with _connect(amqp_url) as other:
        _publish(other.channel(), q, [b"from-elsewhere"])
    assert _drain(ch, q) == [b"from-elsewhere"]


def test_exclusive_queue_usable_from_other_channel_same_connection(conn, ch, unique):
    q = ch.queue_declare(f"{unique}-excl", exclusive=True).method.queue
    other = conn.channel()
    assert other.queue_declare(q, exclusive=True).method.queue == q
    _publish(other, q, [b"x"])
    assert _drain(other, q) == [b"x"]


def test_exclusive_queue_deleted_when_connection_closes(amqp_url, unique):
    owner = _connect(amqp_url)
    q = owner.channel().queue_declare(f"{unique}-excl", exclusive=True).method.queue
    with _connect(amqp_url) as other:
        och = other.channel()
        err = _channel_error(och, lambda: och.queue_declare(q, passive=True))
        assert err.reply_code == 405  # exists, but locked
    owner.close()
    assert _wait_gone(amqp_url, q)


def test_auto_delete_queue_deleted_after_last_consumer_cancels(amqp_url, conn, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-ad")
    ch.queue_declare(q, auto_delete=True)
    # never consumed: stays
    assert _exists(amqp_url, q)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    ok = ch.queue_declare(q, passive=True).method
    assert ok.consumer_count == 1
    ch.basic_cancel(t2)
    assert _wait_gone(amqp_url, q)


def test_auto_delete_queue_deleted_when_consumer_channel_closes(amqp_url, conn, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-ad")
    ch.queue_declare(q, auto_delete=True)
    consumer = conn.channel()
    consumer.basic_consume(q, lambda *a: None)
    consumer.close()
    assert _wait_gone(amqp_url, q)


def test_auto_delete_queue_survives_basic_get(amqp_url, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-ad")
    ch.queue_declare(q, auto_delete=True)
    _publish(ch, q, [b"x"])
    assert _drain(ch, q) == [b"x"]
    assert _exists(amqp_url, q)


# --------------------------------------------------------------------------- bind / unbind


def test_bind_routes_and_unbind_stops(ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    x = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(x, "direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    ch.queue_bind(q, x, "k")  # duplicate bind is a no-op
    ch.confirm_delivery()
    ch.basic_publish(x, "k", b"one")
    ch.queue_unbind(q, x, "k")
    ch.basic_publish(x, "k", b"two")
    assert _drain(ch, q) == [b"one"]


@pytest.mark.parametrize("missing", ["binding", "queue", "exchange"])
def test_unbind_of_missing_things_is_ok(ch, cleanup, unique, missing):
    q = cleanup.queue(f"{unique}-q")
    x = cleanup.exchange(f"{unique}-x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    if missing == "binding":
        ch.queue_unbind(q, x, "never-bound")
    elif missing == "queue":
        ch.queue_unbind(f"{unique}-noq", x, "k")
    else:
        ch.queue_unbind(q, f"{unique}-nox", "k")
    assert ch.is_open


@pytest.mark.parametrize("missing", ["queue", "exchange", "both"])
def test_bind_with_missing_queue_or_exchange_is_404(conn, ch, cleanup, unique, missing):
    q = cleanup.queue(f"{unique}-q")
    x = cleanup.exchange(f"{unique}-x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    queue = f"{unique}-noq" if missing in ("queue", "both") else q
    exchange = f"{unique}-nox" if missing in ("exchange", "both") else x
    err = _channel_error(ch, lambda: ch.queue_bind(queue, exchange, "k"))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")
    if missing == "queue":
        assert f"no queue '{queue}'" in err.reply_text
    else:  # the exchange is looked up first
        assert f"no exchange '{exchange}'" in err.reply_text
    assert conn.is_open


# --------------------------------------------------------------------------- purge / delete


def test_purge_returns_count_and_keeps_unacked(conn, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q)
    _publish(ch, q, [b"1", b"2", b"3", b"4"])
    holder = conn.channel()
    method, _, body = holder.basic_get(q, auto_ack=False)
    assert body == b"1"
    assert ch.queue_purge(q).method.message_count == 3
    assert ch.queue_purge(q).method.message_count == 0
    # the unacked message was not purged; it comes back when its channel closes
    holder.close()
    deadline = time.monotonic() + 2
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert body == b"1"
    assert method.redelivered is True


def test_purge_missing_queue_is_404(ch, unique):
    err = _channel_error(ch, lambda: ch.queue_purge(f"{unique}-missing"))
    assert err.reply_code == 404
    assert f"no queue '{unique}-missing'" in err.reply_text


def test_delete_returns_message_count(amqp_url, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q)
    _publish(ch, q, [b"1", b"2"])
    assert ch.queue_delete(q).method.message_count == 2
    assert not _exists(amqp_url, q)


def test_delete_missing_queue_is_ok(ch, unique):
    assert ch.queue_delete(f"{unique}-missing").method.message_count == 0
    assert ch.queue_delete(f"{unique}-missing", if_empty=True, if_unused=True).method.message_count == 0
    assert ch.is_open


def test_delete_if_unused_with_consumer_is_406(conn, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q)
    consumer = conn.channel()
    tag = consumer.basic_consume(q, lambda *a: None)
    err = _channel_error(ch, lambda: ch.queue_delete(q, if_unused=True))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert q in err.reply_text and "in use" in err.reply_text
    consumer.basic_cancel(tag)
    assert conn.channel().queue_delete(q, if_unused=True).method.message_count == 0


def test_delete_if_empty_with_messages_is_406(conn, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q)
    _publish(ch, q, [b"x"])
    err = _channel_error(ch, lambda: ch.queue_delete(q, if_empty=True))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert q in err.reply_text and "not empty" in err.reply_text
    ch = conn.channel()
    assert _drain(ch, q) == [b"x"]
    assert ch.queue_delete(q, if_empty=True).method.message_count == 0


# --------------------------------------------------------------------------- x-arguments


@pytest.mark.parametrize(
    "key,value",
    [
        ("x-message-ttl", "abc"),
        ("x-message-ttl", -1),
        ("x-message-ttl", True),
        ("x-message-ttl", 2**40),
        ("x-expires", 0),
        ("x-expires", -1),
        ("x-expires", "abc"),
        ("x-max-length", -1),
        ("x-max-length", "abc"),
        ("x-max-length-bytes", -1),
        ("x-max-priority", 256),
        ("x-max-priority", 300),
        ("x-max-priority", -1),
        ("x-max-priority", "abc"),
        ("x-overflow", "foo"),
        ("x-overflow", 1),
        ("x-queue-type", "foo"),
        ("x-queue-mode", "foo"),
        ("x-single-active-consumer", "yes"),
        ("x-dead-letter-routing-key", "rk"),  # without x-dead-letter-exchange
        ("x-dead-letter-exchange", 1),
    ],
)
def test_invalid_x_arguments_are_406(amqp_url, conn, ch, unique, key, value):
    q = f"{unique}-q"
    err = _channel_error(ch, lambda: ch.queue_declare(q, arguments={key: value}))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert f"'{key}'" in err.reply_text
    assert q in err.reply_text
    assert conn.is_open
    assert not _exists(amqp_url, q)


@pytest.mark.parametrize(
    "args",
    [
        {"x-message-ttl": 0},
        {"x-message-ttl": 2**32},
        {"x-expires": 10000},
        {"x-max-length": 0},
        {"x-max-length-bytes": 0},
        {"x-max-priority": 0},
        {"x-max-priority": 255},
        {"x-overflow": "drop-head"},
        {"x-overflow": "reject-publish"},
        {"x-overflow": "reject-publish-dlx"},
        {"x-queue-type": "classic"},
        {"x-queue-mode": "lazy"},
        {"x-queue-mode": "default"},
        {"x-single-active-consumer": True},
        {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "rk"},
    ],
    ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()),
)
def test_valid_x_arguments_are_accepted(ch, cleanup, unique, args):
    q = cleanup.queue(f"{unique}-q")
    ok = ch.queue_declare(q, arguments=args).method
    assert ok.queue == q
    ch.queue_declare(q, arguments=args)  # and redeclare identically


def test_message_ttl_expires_messages(ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q, arguments={"x-message-ttl": 50})
    _publish(ch, q, [b"short-lived"])
    time.sleep(0.3)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert _drain(ch, q) == []


def test_max_length_drops_head(ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q, arguments={"x-max-length": 2})
    _publish(ch, q, [b"0", b"1", b"2", b"3"])
    assert _drain(ch, q) == [b"2", b"3"]


def test_max_length_reject_publish_nacks(ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    _publish(ch, q, [b"0", b"1"])
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"2")
    assert _drain(ch, q) == [b"0", b"1"]


def test_unused_queue_with_x_expires_is_deleted(amqp_url, ch, cleanup, unique):
    q = cleanup.queue(f"{unique}-q")
    ch.queue_declare(q, arguments={"x-expires": 300})
    # every declare (even passive) counts as use, so look only once, after the deadline
    time.sleep(0.8)
    assert not _exists(amqp_url, q)


# --------------------------------------------------------------------------- kombu / Celery


def test_kombu_queue_with_ttl_expires_limits(amqp_url, ch, cleanup, unique):
    qname = cleanup.queue(f"{unique}-kq")
    xname = cleanup.exchange(f"{unique}-kx")
    exchange = Exchange(xname, "direct", durable=False)
    queue = Queue(
        qname,
        exchange,
        routing_key="rk",
        message_ttl=5.0,
        expires=60.0,
        max_length=100,
        max_priority=10,
        durable=False,
    )
    with kombu.Connection(amqp_url, connect_timeout=5) as kconn:
        kch = kconn.channel()
        bound = queue(kch)
        bound.declare()
        bound.declare()  # kombu redeclares freely; must be equivalent
        kombu.Producer(kch, exchange=exchange).publish(
            {"hello": "kombu"}, routing_key="rk", serializer="json", priority=3
        )
        deadline = time.monotonic() + 3
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = bound.get(no_ack=True)
        assert msg is not None
        assert msg.payload == {"hello": "kombu"}
        assert msg.properties["priority"] == 3
    # kombu converted seconds to integer milliseconds: the same ints are equivalent
    expected = {"x-message-ttl": 5000, "x-expires": 60000, "x-max-length": 100, "x-max-priority": 10}
    assert ch.queue_declare(qname, arguments=expected).method.queue == qname
    err = _channel_error(ch, lambda: ch.queue_declare(qname, arguments={**expected, "x-message-ttl": 5001}))
    assert err.reply_code == 406


def test_celery_event_receiver_queue(amqp_url, cleanup, unique):
    from celery import Celery

    app = Celery(f"{unique}-app", broker=amqp_url, set_as_current=False)
    app.conf.event_queue_ttl = 5.0
    app.conf.event_queue_expires = 60.0
    app.conf.event_exchange = cleanup.exchange(f"{unique}-ev")
    app.conf.broker_connection_retry = False
    with app.connection_for_write() as kconn:
        receiver = app.events.Receiver(kconn, handlers={}, node_id=unique)
        qname = cleanup.queue(receiver.queue.name)
        bound = receiver.queue(kconn.default_channel)
        bound.declare()  # exclusive, auto_delete, x-message-ttl 5000, x-expires 60000
        dispatcher = app.events.Dispatcher(kconn, hostname=f"{unique}@host", enabled=True)
        dispatcher.send("worker-online", freq=2.0)
        deadline = time.monotonic() + 3
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = bound.get(no_ack=True)
            if msg is None:
                time.sleep(0.02)
        assert msg is not None
        assert msg.payload["type"] == "worker-online"
        assert msg.payload["hostname"] == f"{unique}@host"
        assert msg.delivery_info["routing_key"] == "worker.online"
        ok = bound.queue_declare(passive=True)
        assert ok.queue == qname
        bound.delete()


def test_kombu_pidbox_broadcast_round_trip(amqp_url, cleanup, unique):
    hostname = f"{unique}@node"
    with kombu.Connection(amqp_url, connect_timeout=5) as kconn:
        mailbox = Mailbox(
            unique,
            type="direct",
            connection=kconn,
            queue_ttl=300.0,
            queue_expires=10.0,
            reply_queue_ttl=300.0,
            reply_queue_expires=10.0,
            accept=["json"],
            serializer="json",
        )
        cleanup.exchange(mailbox.exchange.name)
        cleanup.exchange(mailbox.reply_exchange.name)
        cleanup.queue(mailbox.get_queue(hostname).name)
        cleanup.queue(mailbox.reply_queue.name)
        node = mailbox.Node(
            hostname=hostname,
            state=None,
            channel=kconn.channel(),
            handlers={"ping": lambda state, **kwargs: "pong"},
        )
        consumer = node.listen()
        try:
            replies = mailbox._broadcast(
                "ping", arguments={}, destination=[hostname], reply=True, timeout=2.0, limit=1
            )
        finally:
            consumer.cancel()
    assert replies == [{hostname: "pong"}]
