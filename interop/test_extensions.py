"""RabbitMQ's extensions: dead-lettering (x-death), TTLs, length limits, queue expiry, alternate
exchanges. Each test runs against amqpbroker and, with ``AMQP_URL``, against RabbitMQ.
"""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from interop.support import Management, channel_error, connect, drain, exists

pytestmark = pytest.mark.timeout(40)


def _get(ch, queue: str, timeout: float = 3.0):
    """The next message of ``queue`` (autoack), waiting for it to arrive."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return properties, body
        assert time.monotonic() < deadline, f"nothing arrived in {queue}"
        time.sleep(0.02)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dead_letter_setup(ch, cleanup, unique, **arguments):
    """A queue whose dead letters go through a fanout exchange to a second queue."""
    dlx = cleanup.exchange(f"{unique}-dlx")
    dlq = cleanup.queue(f"{unique}-dlq")
    source = cleanup.queue(f"{unique}-q")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, **arguments})
    ch.confirm_delivery()
    return source, dlx, dlq


def test_a_rejected_message_is_dead_lettered_with_its_death_recorded(ch, cleanup, unique):
    source, dlx, dlq = _dead_letter_setup(ch, cleanup, unique)
    ch.basic_publish("", source, b"refused", pika.BasicProperties(headers={"app": "kept"}))
    method, _, _ = ch.basic_get(source)
    ch.basic_reject(method.delivery_tag, requeue=False)
    properties, body = _get(ch, dlq)
    assert body == b"refused"
    headers = properties.headers
    assert headers["app"] == "kept"
    (death,) = headers["x-death"]
    assert _text(death["reason"]) == "rejected"
    assert _text(death["queue"]) == source
    assert _text(death["exchange"]) == ""
    assert [_text(key) for key in death["routing-keys"]] == [source]
    assert death["count"] == 1
    assert "time" in death
    assert _text(headers["x-first-death-reason"]) == "rejected"
    assert _text(headers["x-first-death-queue"]) == source
    assert _text(headers["x-first-death-exchange"]) == ""


def test_nack_without_requeue_dead_letters_every_message_it_names(ch, cleanup, unique):
    source, _, dlq = _dead_letter_setup(ch, cleanup, unique)
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", source, body)
    tags = [ch.basic_get(source)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[1], multiple=True, requeue=False)  # a and b
    ch.basic_ack(tags[2])
    assert [_get(ch, dlq)[1] for _ in range(2)] == [b"a", b"b"]
    assert drain(ch, dlq) == []


def test_the_dead_letter_routing_key_replaces_the_messages_own(ch, cleanup, unique):
    dlx = cleanup.exchange(f"{unique}-dlx")
    dlq = cleanup.queue(f"{unique}-dlq")
    source = cleanup.queue(f"{unique}-q")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "dead")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"x")
    ch.basic_reject(ch.basic_get(source)[0].delivery_tag, requeue=False)
    properties, body = _get(ch, dlq)
    assert body == b"x"
    assert [_text(key) for key in properties.headers["x-death"][0]["routing-keys"]] == [source]


def test_messages_past_the_queue_ttl_are_dead_lettered_as_expired_in_order(ch, cleanup, unique):
    source, _, dlq = _dead_letter_setup(ch, cleanup, unique, **{"x-message-ttl": 50})
    ch.basic_publish("", source, b"first")
    ch.basic_publish("", source, b"second")
    got = [_get(ch, dlq) for _ in range(2)]
    assert [body for _, body in got] == [b"first", b"second"]
    assert _text(got[0][0].headers["x-death"][0]["reason"]) == "expired"
    assert ch.queue_declare(source, passive=True).method.message_count == 0


def test_a_message_past_its_own_expiration_is_never_delivered(ch, cleanup, unique):
    source, _, dlq = _dead_letter_setup(ch, cleanup, unique)
    ch.basic_publish("", source, b"stale", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", source, b"fresh")
    time.sleep(0.3)
    assert drain(ch, source) == [b"fresh"]
    properties, body = _get(ch, dlq)
    assert body == b"stale"
    assert properties.expiration is None  # removed, so the dead letter does not expire again
    death = properties.headers["x-death"][0]
    assert _text(death["reason"]) == "expired"
    assert _text(death["original-expiration"]) == "50"


def test_an_invalid_expiration_is_refused(ch, unique):
    error = channel_error(ch, lambda: ch.basic_publish("", "whatever", b"x",
                                                       pika.BasicProperties(expiration="soon")))
    assert error.reply_code == 406


def test_drop_head_dead_letters_the_oldest_as_maxlen(ch, cleanup, unique):
    source, _, dlq = _dead_letter_setup(ch, cleanup, unique, **{"x-max-length": 2})
    for body in (b"0", b"1", b"2"):
        ch.basic_publish("", source, body)
    assert drain(ch, source) == [b"1", b"2"]
    properties, body = _get(ch, dlq)
    assert body == b"0"
    assert _text(properties.headers["x-death"][0]["reason"]) == "maxlen"


def test_max_length_bytes_counts_body_bytes(ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", queue, body)
    assert drain(ch, queue) == [b"bbbb", b"cccc"]


def test_reject_publish_dlx_nacks_and_dead_letters_the_refused_message(ch, cleanup, unique):
    source, _, dlq = _dead_letter_setup(ch, cleanup, unique,
                                        **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    ch.basic_publish("", source, b"in")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", source, b"refused")
    assert drain(ch, source) == [b"in"]
    properties, body = _get(ch, dlq)
    assert body == b"refused"
    assert _text(properties.headers["x-death"][0]["reason"]) == "maxlen"


def test_an_expiry_cycle_back_into_the_same_queue_drops_the_message(ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": queue})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"loop")
    time.sleep(0.5)
    assert ch.queue_declare(queue, passive=True).method.message_count == 0


def test_rejected_messages_may_come_back_to_the_same_queue_counting_deaths(ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"again")
    for count in (1, 2):
        method = None
        deadline = time.monotonic() + 3
        while method is None and time.monotonic() < deadline:
            method, properties, _ = ch.basic_get(queue)
        ch.basic_reject(method.delivery_tag, requeue=False)
    properties, body = _get(ch, queue)
    (death,) = properties.headers["x-death"]
    assert (death["count"], _text(death["reason"])) == (2, "rejected")


def test_a_queue_in_use_does_not_expire_and_an_unused_one_does(amqp_url, ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-expires": 300})
    tag = ch.basic_consume(queue, lambda *args: None)
    time.sleep(0.6)
    assert exists(amqp_url, queue)  # this counts as use too: the clock starts again
    ch.basic_cancel(tag)
    time.sleep(0.8)
    assert not exists(amqp_url, queue)


def test_an_alternate_exchange_chain_and_mandatory(ch, cleanup, unique):
    main = cleanup.exchange(f"{unique}-main")
    middle = cleanup.exchange(f"{unique}-middle")
    last = cleanup.exchange(f"{unique}-last")
    caught = cleanup.queue(f"{unique}-caught")
    ch.exchange_declare(last, "fanout")
    ch.exchange_declare(middle, "direct", arguments={"alternate-exchange": last})
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": middle})
    ch.queue_declare(caught)
    ch.queue_bind(caught, last)
    ch.confirm_delivery()  # pika raises UnroutableError for a returned mandatory publish
    ch.basic_publish(main, "nowhere", b"through two alternates", mandatory=True)
    ch.queue_unbind(caught, last)
    with pytest.raises(pika.exceptions.UnroutableError) as returned:
        ch.basic_publish(main, "nowhere", b"unroutable", mandatory=True)
    assert [message.body for message in returned.value.messages] == [b"unroutable"]
    assert drain(ch, caught) == [b"through two alternates"]


def test_a_priority_queue_hands_out_higher_priorities_first_in_arrival_order(ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    for body, level in ((b"low", 1), (b"mid-1", 3), (b"none", None), (b"capped", 9), (b"mid-2", 3), (b"top", 5)):
        ch.basic_publish("", queue, body, pika.BasicProperties(priority=level))
    # a priority above the maximum counts as the maximum, behind earlier ones at that level
    assert drain(ch, queue) == [b"capped", b"top", b"mid-1", b"mid-2", b"low", b"none"]
    for body, level in ((b"a", 2), (b"b", 4)):
        ch.basic_publish("", queue, body, pika.BasicProperties(priority=level))
    assert drain(ch, queue) == [b"b", b"a"]


def test_a_requeued_message_keeps_its_place_among_its_priority(ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-max-priority": 2})
    ch.confirm_delivery()
    for body, level in ((b"p0", 0), (b"p2-first", 2), (b"p2-second", 2)):
        ch.basic_publish("", queue, body, pika.BasicProperties(priority=level))
    method, _, body = ch.basic_get(queue)
    assert body == b"p2-first"
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert drain(ch, queue) == [b"p2-first", b"p2-second", b"p0"]


def _collect(conn, count: int, *boxes: list, timeout: float = 3.0) -> None:
    """Process deliveries until the boxes together hold ``count`` messages."""
    deadline = time.monotonic() + timeout
    while sum(len(box) for box in boxes) < count and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)


def test_higher_priority_consumers_get_messages_while_they_have_credit(conn, ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue)
    high_channel, low_channel = conn.channel(), conn.channel()
    high_channel.basic_qos(prefetch_count=2)
    high, low = [], []
    high_channel.basic_consume(queue, lambda c, m, p, body: high.append(body), arguments={"x-priority": 10})
    low_channel.basic_consume(queue, lambda c, m, p, body: low.append(body))
    ch.confirm_delivery()
    for index in range(5):
        ch.basic_publish("", queue, f"m{index}".encode())
    _collect(conn, 5, high, low)
    assert high == [b"m0", b"m1"]  # then it has no credit left (unacked), so the rest go lower
    assert low == [b"m2", b"m3", b"m4"]


def test_a_single_active_consumer_gets_everything_until_it_goes(conn, ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-single-active-consumer": True})
    first_channel, second_channel = conn.channel(), conn.channel()
    first, second = [], []
    first_tag = first_channel.basic_consume(queue, lambda c, m, p, body: first.append(body), auto_ack=True)
    second_channel.basic_consume(queue, lambda c, m, p, body: second.append(body), auto_ack=True)
    ch.confirm_delivery()
    for index in range(4):
        ch.basic_publish("", queue, f"a{index}".encode())
    _collect(conn, 4, first, second)
    first_channel.basic_cancel(first_tag)
    for index in range(2):
        ch.basic_publish("", queue, f"b{index}".encode())
    _collect(conn, 6, first, second)
    assert first == [b"a0", b"a1", b"a2", b"a3"]
    assert second == [b"b0", b"b1"]


def test_consumers_of_a_queue_with_a_ttl_get_its_live_messages(conn, ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-q")
    ch.queue_declare(queue, arguments={"x-message-ttl": 60_000})
    first_channel, second_channel = conn.channel(), conn.channel()
    first, second = [], []
    first_channel.basic_consume(queue, lambda c, m, p, body: first.append(body), auto_ack=True)
    second_channel.basic_consume(queue, lambda c, m, p, body: second.append(body), auto_ack=True)
    ch.confirm_delivery()
    for index in range(4):
        ch.basic_publish("", queue, f"m{index}".encode(), pika.BasicProperties(expiration="60000"))
    _collect(conn, 4, first, second)
    assert sorted(first + second) == [b"m0", b"m1", b"m2", b"m3"]
    assert first and second  # round-robin between them


def test_direct_reply_to_rpc_round_trip(amqp_url, conn, ch, cleanup, unique):
    requests = cleanup.queue(f"{unique}-rpc")
    ch.queue_declare(requests)
    replies = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, body: replies.append((m, p, body)),
                     auto_ack=True)
    ch.basic_publish("", requests, b"2+2", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                                                 correlation_id="c1"))
    with connect(amqp_url) as server_connection:
        server = server_connection.channel()
        deadline = time.monotonic() + 3
        method = None
        while method is None and time.monotonic() < deadline:
            method, properties, body = server.basic_get(requests, auto_ack=True)
        assert body == b"2+2"
        assert properties.reply_to.startswith("amq.rabbitmq.reply-to.")  # rewritten by the broker
        server.basic_publish("", properties.reply_to, b"4",
                             pika.BasicProperties(correlation_id=properties.correlation_id))
    _collect(conn, 1, replies)
    ((method, properties, body),) = replies
    assert (body, properties.correlation_id) == (b"4", "c1")


def test_direct_reply_to_needs_a_no_ack_consumer_on_the_publishing_channel(conn, unique):
    ch = conn.channel()
    error = channel_error(ch, lambda: ch.basic_publish(
        "", "anything", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")))
    assert error.reply_code == 406
    ch = conn.channel()
    error = channel_error(ch, lambda: ch.basic_consume("amq.rabbitmq.reply-to", lambda *args: None,
                                                       auto_ack=False))
    assert error.reply_code == 406


@pytest.mark.parametrize(("flags", "text"), [
    ({"durable": False}, "non-durable"),
    ({"durable": True, "exclusive": True}, "exclusive-owner"),
    ({"durable": True, "auto_delete": True}, "auto-delete"),
])
def test_a_quorum_queue_must_be_durable_and_shared(ch, unique, flags, text):
    error = channel_error(ch, lambda: ch.queue_declare(f"{unique}-qq", arguments={"x-queue-type": "quorum"},
                                                       **flags))
    assert error.reply_code == 406
    assert text in error.reply_text


def test_a_quorum_queue_counts_returns_and_drops_past_its_delivery_limit(ch, cleanup, unique):
    queue = cleanup.queue(f"{unique}-qq")
    dlq = cleanup.queue(f"{unique}-dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 2,
                                                     "x-dead-letter-exchange": "",
                                                     "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"poison")
    counts = []
    for _ in range(3):
        method = None
        deadline = time.monotonic() + 3
        while method is None and time.monotonic() < deadline:
            method, properties, _ = ch.basic_get(queue)
        assert method is not None
        counts.append((method.redelivered, properties.headers["x-delivery-count"]))
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert counts == [(False, 0), (True, 1), (True, 2)]
    properties, body = _get(ch, dlq)  # the third return was one too many
    assert body == b"poison"
    assert _text(properties.headers["x-death"][0]["reason"]) == "delivery_limit"
    assert ch.queue_declare(queue, passive=True).method.message_count == 0


def test_a_quorum_queue_refuses_consumers_on_a_channel_with_global_qos(conn, cleanup, unique):
    queue = cleanup.queue(f"{unique}-qq")
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_qos(prefetch_count=5, global_qos=True)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        ch.basic_consume(queue, lambda *args: None)
    assert closed.value.reply_code == 540


def _delayed_exchange(ch, name: str, delayed_type: str = "direct"):
    """Declare an x-delayed-message exchange, or skip where the broker lacks the plugin."""
    try:
        ch.exchange_declare(name, "x-delayed-message", arguments={"x-delayed-type": delayed_type})
    except pika.exceptions.ConnectionClosedByBroker as exc:
        if exc.reply_code == 503:
            pytest.skip("this broker has no rabbitmq-delayed-message-exchange plugin")
        raise
    return ch


def test_a_delayed_exchange_routes_a_message_once_its_delay_passed(amqp_url, cleanup, unique):
    exchange = cleanup.exchange(f"{unique}-delayed")
    queue = cleanup.queue(f"{unique}-q")
    with connect(amqp_url) as conn:
        ch = _delayed_exchange(conn.channel(), exchange)
        ch.queue_declare(queue)
        ch.queue_bind(queue, exchange, "k")
        ch.confirm_delivery()
        ch.basic_publish(exchange, "k", b"later", pika.BasicProperties(headers={"x-delay": 400}))
        ch.basic_publish(exchange, "k", b"now")
        ch.basic_publish(exchange, "other", b"nowhere", pika.BasicProperties(headers={"x-delay": 100}))
        assert drain(ch, queue) == [b"now"]
        time.sleep(0.6)
        assert drain(ch, queue) == [b"later"]


def test_a_delayed_exchange_needs_an_existing_delayed_type(amqp_url, unique):
    with connect(amqp_url) as conn:
        ch = conn.channel()
        try:
            error = channel_error(ch, lambda: ch.exchange_declare(f"{unique}-bad", "x-delayed-message",
                                                                  arguments={"x-delayed-type": "nonsense"}))
        except pika.exceptions.ConnectionClosedByBroker as exc:
            assert exc.reply_code == 503
            pytest.skip("this broker has no rabbitmq-delayed-message-exchange plugin")
        assert error.reply_code == 406


_TYPE_ARGUMENTS = [  # (queue type, argument, value, the end of RabbitMQ 3.10's 406 text)
    ("quorum", "x-dead-letter-strategy", "bogus", ": invalid_dlx_strategy"),
    ("quorum", "x-dead-letter-strategy", 5, ": {unacceptable_type,signedint}"),
    ("quorum", "x-queue-mode", "lazy", " of queue type rabbit_quorum_queue"),
    ("quorum", "x-queue-version", 2, " of queue type rabbit_quorum_queue"),
    ("quorum", "x-max-priority", 5, " of queue type rabbit_quorum_queue"),
    ("quorum", "x-queue-master-locator", "min-masters", " of queue type rabbit_quorum_queue"),
    ("quorum", "x-queue-leader-locator", "bogus", ": invalid_queue_locator_arg"),
    ("quorum", "x-quorum-initial-group-size", "x", ': "expected integer, got longstr"'),
    ("classic", "x-dead-letter-strategy", "at-least-once", " of queue type rabbit_classic_queue"),
    ("classic", "x-quorum-initial-group-size", 3, " of queue type rabbit_classic_queue"),
    ("classic", "x-queue-leader-locator", "balanced", " of queue type rabbit_classic_queue"),
    ("classic", "x-queue-version", 3, ": \"unsupported queue version '3'\""),
    ("classic", "x-max-length", "x", ': "expected integer, got longstr"'),
]


@pytest.mark.parametrize("queue_type,argument,value,reason", _TYPE_ARGUMENTS)
def test_arguments_a_queue_type_does_not_take_are_refused_as_rabbitmq(conn, unique, queue_type, argument, value,
                                                                      reason) -> None:
    channel = conn.channel()
    error = channel_error(channel, lambda: channel.queue_declare(f"{unique}-q", durable=True, arguments={
        "x-queue-type": queue_type, argument: value}))
    assert error.reply_code == 406
    assert error.reply_text == (f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{unique}-q' "
                                f"in vhost '/'{reason}")


@pytest.mark.parametrize("arguments", [{"x-dead-letter-strategy": "at-least-once"},
                                       {"x-dead-letter-strategy": "at-most-once"},
                                       {"x-quorum-initial-group-size": 3}, {"x-queue-leader-locator": "balanced"}])
def test_quorum_queue_arguments_rabbitmq_takes_are_taken(conn, cleanup, unique, arguments) -> None:
    conn.channel().queue_declare(cleanup.queue(f"{unique}-q"), durable=True,
                                 arguments={"x-queue-type": "quorum", **arguments})


@pytest.mark.parametrize("strategy", ["at-least-once", "at-most-once"])
def test_at_least_once_dead_lettering_keeps_what_a_full_target_refused(management_url, ch, cleanup, unique, strategy):
    """x-dead-letter-strategy on a quorum queue with reject-publish (3.10 has it): the target
    takes one, and the source holds the other two (``messages_dlx``) instead of dropping them."""
    dlx = cleanup.exchange(f"{unique}-dlx")
    dlq = cleanup.queue(f"{unique}-dlq")
    source = cleanup.queue(f"{unique}-q")
    ch.exchange_declare(dlx, "fanout", durable=True)
    ch.queue_declare(dlq, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(source, durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": dlx, "x-dead-letter-strategy": strategy,
        "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    for body in (b"1", b"2", b"3"):
        ch.basic_publish("", source, body, pika.BasicProperties(delivery_mode=2))
    for _ in range(3):
        method = None
        deadline = time.monotonic() + 3
        while method is None and time.monotonic() < deadline:
            method, _, _ = ch.basic_get(source)
        ch.basic_reject(method.delivery_tag, requeue=False)
    held = 2 if strategy == "at-least-once" else 0
    api = Management(management_url)
    deadline = time.monotonic() + 20  # (RabbitMQ's queue figures lag by up to 5 s)
    while True:
        view = api.request("GET", f"/api/queues/%2F/{source}")[1]
        if view.get("messages_dlx", 0) == held and view.get("messages") == held or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (view.get("messages_dlx", 0), view.get("messages"), view.get("messages_ready")) == (held, held, 0)
    assert ch.queue_declare(dlq, passive=True).method.message_count == 1
    assert ch.basic_get(source)[0] is None  # held messages are not handed to consumers
