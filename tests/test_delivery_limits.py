"""Delivery counting on every queue type: ``x-delivery-count`` on redeliveries, ``x-delivery-limit``
(argument, policy, the broker's default per queue type), dead-lettering with reason
``delivery_limit`` or a counted, logged drop; the counts survive a kill -9."""

from __future__ import annotations

import logging
import urllib.request

import pika
import pytest
from pamqp import commands

from amqpbroker.broker import tenancy
from amqpbroker.broker.broker import Broker, Limits
from amqpbroker.testing import free_port
from tests.helpers import FakeClient, deliveries
from tests.test_management import call


def _client(broker: Broker | None = None, **queue_arguments) -> tuple[Broker, FakeClient]:
    broker = broker or Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.send(commands.Queue.Declare(queue="dead", durable=True))
    client.send(commands.Queue.Declare(queue="work", durable=True, arguments=queue_arguments))
    client.received()
    return broker, client


def _get(client: FakeClient, queue: str = "work"):
    client.send(commands.Basic.Get(queue=queue))
    got = deliveries(client.received())
    return got[0] if got else None


def _returns_until_gone(client: FakeClient, most: int = 50) -> list:
    """Get and reject (requeue) until the queue is empty: each delivery's x-delivery-count."""
    counts = []
    for _ in range(most):
        delivery = _get(client)
        if delivery is None:
            return counts
        counts.append((delivery.properties.headers or {}).get("x-delivery-count"))
        client.send(commands.Basic.Reject(delivery_tag=delivery.tag, requeue=True))
    return counts


def test_a_classic_queue_counts_returns_and_dead_letters_past_its_limit() -> None:
    broker, client = _client(**{"x-delivery-limit": 2, "x-dead-letter-exchange": "",
                                "x-dead-letter-routing-key": "dead"})
    client.publish(1, "", "work", b"poison")
    assert _returns_until_gone(client) == [None, 1, 2]  # delivered limit + 1 times, as quorum queues
    dead = _get(client, "dead")
    assert dead.body == b"poison" and dead.properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert broker.vhosts["/"].queues["work"].counters.dropped_by_delivery_limit == 0


def test_without_a_dead_letter_exchange_the_message_is_dropped_counted_and_logged_once(caplog) -> None:
    caplog.set_level(logging.WARNING)
    broker, client = _client(**{"x-delivery-limit": 0})
    for _ in range(5):
        client.publish(1, "", "work", b"poison")
    assert _returns_until_gone(client) == [None] * 5
    queue = broker.vhosts["/"].queues["work"]
    assert queue.counters.dropped_by_delivery_limit == 5 and queue.message_count == 0
    lines = [record.getMessage() for record in caplog.records if "delivery limit" in record.getMessage()]
    assert len(lines) == 1 and "queue 'work'" in lines[0]  # rate-limited


def test_quorum_queues_default_to_rabbitmq_4_s_limit_of_20_and_minus_one_lifts_it() -> None:
    broker, client = _client(**{"x-queue-type": "quorum"})
    client.publish(1, "", "work", b"m")
    assert _returns_until_gone(client) == list(range(21))
    broker, client = _client(**{"x-queue-type": "quorum", "x-delivery-limit": -1})
    client.publish(1, "", "work", b"m")
    assert len(_returns_until_gone(client, most=40)) == 40  # still there


def test_classic_queues_are_unlimited_unless_configured_and_a_policy_sets_the_limit() -> None:
    broker, client = _client()
    client.publish(1, "", "work", b"m")
    assert len(_returns_until_gone(client, most=40)) == 40
    broker, client = _client(Broker(Limits(delivery_limit_classic=1)))
    client.publish(1, "", "work", b"m")
    assert _returns_until_gone(client) == [None, 1]
    broker, client = _client()
    tenancy.set_policy(broker, "/", "poison", pattern="^work$", definition={"delivery-limit": 3})
    client.publish(1, "", "work", b"m")
    assert _returns_until_gone(client) == [None, 1, 2, 3]


def test_a_channel_closed_with_the_message_unacked_counts_as_a_return() -> None:
    broker, client = _client(**{"x-delivery-limit": 5})
    client.publish(1, "", "work", b"m")
    assert _get(client).properties.headers is None
    client.send(commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    client.received()
    client.open_channel(2)
    client.send(commands.Basic.Get(queue="work"), 2)
    [again] = deliveries(client.received())
    assert again.method.redelivered and again.properties.headers["x-delivery-count"] == 1
    client.send(commands.Basic.Ack(delivery_tag=again.tag), 2)
    assert broker.vhosts["/"].queues["work"].delivery_counts == {}  # nothing kept for acked messages


def test_counts_survive_a_kill_9_and_show_in_the_api_and_metrics(start_broker) -> None:
    broker = start_broker(management_port=free_port(), prometheus_port=free_port())
    parameters = pika.URLParameters(broker.url)

    def reject_once(channel) -> dict:
        method, properties, _ = channel.basic_get("durable-work")
        channel.basic_reject(method.delivery_tag, requeue=True)
        return properties.headers or {}

    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        channel.queue_declare("durable-work", durable=True, arguments={"x-delivery-limit": 3})
        channel.confirm_delivery()
        channel.basic_publish("", "durable-work", b"poison", pika.BasicProperties(delivery_mode=2))
        assert reject_once(channel) == {}
        assert reject_once(channel) == {"x-delivery-count": 1}
    broker.restart(crash=True)
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        assert reject_once(channel) == {"x-delivery-count": 2}  # counting went on after the crash
        assert reject_once(channel) == {"x-delivery-count": 3}
        assert channel.basic_get("durable-work")[0] is None  # past the limit: dropped
    view = call(broker, "GET", "/api/queues/%2F/durable-work")[1]
    assert view["delivery_limit"] == 3 and view["messages_dropped_by_delivery_limit"] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.prometheus_port}/metrics/per-object", timeout=5) as page:
        text = page.read().decode()
    assert ('amqpbroker_queue_messages_dropped_by_delivery_limit_total{queue="durable-work",vhost="/"} 1.0'
            in text)
    broker.restart(crash=True)  # nothing left behind: the dropped message's count went with it
    with pika.BlockingConnection(parameters) as connection:
        assert connection.channel().queue_declare("durable-work", passive=True).method.message_count == 0


@pytest.mark.parametrize("limit", [1.5, "3", True])
def test_a_bad_delivery_limit_is_a_406(limit) -> None:
    client = FakeClient(Broker())
    client.open_channel()
    client.send(commands.Queue.Declare(queue="q", arguments={"x-delivery-limit": limit}))
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


def test_a_dead_letter_exchange_that_does_not_exist_counts_as_a_drop(caplog) -> None:
    broker, client = _client(**{"x-delivery-limit": 0, "x-dead-letter-exchange": "nowhere"})
    client.publish(1, "", "work", b"poison")
    assert _returns_until_gone(client) == [None]
    counters = broker.vhosts["/"].queues["work"].counters
    assert counters.dropped_by_delivery_limit == 1 and counters.dead_lettered_by_delivery_limit == 0
    assert "was dropped" in caplog.text
