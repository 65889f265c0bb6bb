"""Queues longer than their memory window page out to the data dir and come back in order.

The broker runs with a window of 50 messages, so a few hundred messages exercise the paths a
million would: page-out on arrival, page-in as consumers drain, purge and delete of paged-out
messages, restart and SIGKILL with a paged-out backlog.
"""

from __future__ import annotations


import pytest

from tests.broker_process import PERSISTENT, TRANSIENT, BrokerProcess, channel_of, drain

WINDOW = 50


@pytest.fixture
def broker(start_broker) -> BrokerProcess:
    return start_broker(env={"AMQPBROKER_QUEUE_WINDOW_MESSAGES": str(WINDOW)})


def consume(channel, queue: str, count: int, *, prefetch: int = 20) -> list[tuple[bytes, bool]]:
    """Consume ``count`` messages with manual acks, in the order delivered."""
    channel.basic_qos(prefetch_count=prefetch)
    got = []
    for method, _, body in channel.consume(queue, inactivity_timeout=10):
        assert method is not None, f"only {len(got)} of {count} messages arrived"
        got.append((body, method.redelivered))
        channel.basic_ack(method.delivery_tag)
        if len(got) == count:
            break
    channel.cancel()
    return got


def test_a_backlog_far_past_the_window_is_counted_and_consumed_in_order(broker) -> None:
    bodies = [f"m{index}".encode() * 20 for index in range(1000)]
    with channel_of(broker) as ch:
        ch.queue_declare("backlog")
        for body in bodies:
            ch.basic_publish("", "backlog", body, TRANSIENT)
        assert ch.queue_declare("backlog", passive=True).method.message_count == 1000
        assert consume(ch, "backlog", 1000) == [(body, False) for body in bodies]
        assert ch.queue_declare("backlog", passive=True).method.message_count == 0
        # the queue pages again after it drained
        for body in bodies[:200]:
            ch.basic_publish("", "backlog", body)
        assert drain(ch, "backlog") == [(body, False) for body in bodies[:200]]


def test_basic_get_drains_a_paged_queue_in_order(broker) -> None:
    with channel_of(broker) as ch:
        ch.queue_declare("polled", durable=True)
        ch.confirm_delivery()
        for index in range(300):
            ch.basic_publish("", "polled", f"p{index}".encode(), PERSISTENT if index % 2 else TRANSIENT)
        got = [ch.basic_get("polled", auto_ack=True)[2] for _ in range(300)]
        assert got == [f"p{index}".encode() for index in range(300)]
        assert ch.basic_get("polled")[0] is None


def test_confirms_for_paged_persistent_messages_arrive(broker) -> None:
    with channel_of(broker) as ch:
        ch.queue_declare("confirmed", durable=True)
        ch.confirm_delivery()  # pika raises if a publish is nacked or never confirmed
        for index in range(500):
            ch.basic_publish("", "confirmed", f"c{index}".encode(), PERSISTENT, mandatory=True)
        assert ch.queue_declare("confirmed", passive=True).method.message_count == 500


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill-9"])
def test_paged_persistent_messages_survive_restart_in_order_transient_ones_do_not(broker, crash) -> None:
    with channel_of(broker) as ch:
        ch.queue_declare("durable-backlog", durable=True)
        ch.queue_declare("plain-backlog", durable=True)
        ch.confirm_delivery()
        for index in range(400):
            ch.basic_publish("", "durable-backlog", f"d{index}".encode(),
                             PERSISTENT if index % 4 else TRANSIENT)
            ch.basic_publish("", "plain-backlog", f"t{index}".encode(), TRANSIENT)
        # hand out the first 80 (past the window), ack 10 of them: the others come back redelivered
        delivered = []
        for _ in range(80):
            method, _, body = ch.basic_get("durable-backlog")
            delivered.append((method.delivery_tag, body))
        for tag, _ in delivered[:10]:
            ch.basic_ack(tag)
        ch.queue_declare("durable-backlog", passive=True)  # a round trip: the acks arrived
    broker.restart(crash=crash)
    expected_persistent = [f"d{index}".encode() for index in range(400) if index % 4]
    acked = {body for _, body in delivered[:10]}
    handed_out = {body for _, body in delivered[10:]}
    expected = [(body, body in handed_out) for body in expected_persistent if body not in acked]
    with channel_of(broker) as ch:
        assert ch.queue_declare("durable-backlog", passive=True).method.message_count == len(expected)
        assert ch.queue_declare("plain-backlog", passive=True).method.message_count == 0
        assert consume(ch, "durable-backlog", len(expected)) == expected


def test_purge_and_delete_drop_paged_messages(broker) -> None:
    with channel_of(broker) as ch:
        for name, durable in (("purged-d", True), ("purged-t", False), ("deleted-d", True), ("deleted-t", False)):
            ch.queue_declare(name, durable=durable)
            for index in range(300):
                ch.basic_publish("", name, f"{name}{index}".encode(), PERSISTENT)
        assert ch.queue_purge("purged-d").method.message_count == 300
        assert ch.queue_purge("purged-t").method.message_count == 300
        assert ch.queue_delete("deleted-d").method.message_count == 300
        assert ch.queue_delete("deleted-t").method.message_count == 300
        for name in ("purged-d", "purged-t"):
            assert ch.basic_get(name)[0] is None
            ch.basic_publish("", name, b"after purge", PERSISTENT)
            assert drain(ch, name) == [(b"after purge", False)]
        ch.queue_declare("deleted-d", durable=True)
        assert ch.queue_declare("deleted-d", passive=True).method.message_count == 0
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        assert ch.queue_declare("purged-d", passive=True).method.message_count == 0
        assert ch.queue_declare("deleted-d", passive=True).method.message_count == 0


def test_fan_out_to_a_paging_and_a_non_paging_durable_queue(broker) -> None:
    with channel_of(broker) as ch:
        ch.exchange_declare("fan", "fanout", durable=True)
        for name in ("fan-busy", "fan-idle"):
            ch.queue_declare(name, durable=True)
            ch.queue_bind(name, "fan")
        ch.confirm_delivery()
        for index in range(100):  # fan-busy fills its window; fan-idle is drained as it goes
            ch.basic_publish("", "fan-busy", f"pre{index}".encode(), PERSISTENT)
        for index in range(200):
            ch.basic_publish("fan", "", f"f{index}".encode(), PERSISTENT)
            if index % 50 == 49:
                drain(ch, "fan-idle")
        ch.basic_publish("fan", "", b"last", PERSISTENT)
    broker.restart(crash=True)
    with channel_of(broker) as ch:
        assert drain(ch, "fan-idle") == [(b"last", False)]
        expected = ([f"pre{index}".encode() for index in range(100)]
                    + [f"f{index}".encode() for index in range(200)] + [b"last"])
        assert [body for body, _ in drain(ch, "fan-busy")] == expected
