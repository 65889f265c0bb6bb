"""Redelivery backoff (x-delayed-retry-*): a rejected message waits before its next delivery,
longer each time, visible in the API; then the delivery limit (20 by default with a backoff)
dead-letters it. In memory with a driven clock, and with pika."""

from __future__ import annotations

import time

import pika
import pytest
from pamqp import commands

from amqpbroker.broker import channel as channel_module
from amqpbroker.broker import tenancy
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.retry import RetryPolicy
from amqpbroker.testing import free_port
from tests.helpers import FakeClient, deliveries
from tests.test_management import call

NOW = 1_000_000.0


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(channel_module, "monotonic", clock)
    return clock


def _setup(clock: _Clock, **arguments) -> tuple[Broker, FakeClient]:
    broker = Broker()
    broker.vhosts["/"].clock = clock
    client = FakeClient(broker)
    client.open_channel()
    client.send(commands.Queue.Declare(queue="dead"))
    client.send(commands.Queue.Declare(queue="jobs", arguments={"x-dead-letter-exchange": "",
                                                                "x-dead-letter-routing-key": "dead", **arguments}))
    client.received()
    return broker, client


def _get(client: FakeClient, queue: str = "jobs"):
    client.send(commands.Basic.Get(queue=queue))
    got = deliveries(client.received())
    return got[0] if got else None


def _advance(broker: Broker, clock: _Clock, seconds: float) -> None:
    clock.now += seconds
    broker.tick(clock.now)


@pytest.mark.parametrize("arguments,waits", [
    ({"x-delayed-retry-min": 1000}, [1, 2, 3, 4]),  # linear
    ({"x-delayed-retry-min": 1000, "x-delayed-retry-multiplier": 2}, [1, 2, 4, 8]),  # exponential
    ({"x-delayed-retry-min": 1000, "x-delayed-retry-multiplier": 2, "x-delayed-retry-max": 3000}, [1, 2, 3, 3]),
    ({"x-delayed-retry-min": 1500, "x-delayed-retry-multiplier": 1}, [1.5, 1.5, 1.5, 1.5]),  # constant
])
def test_a_rejected_message_waits_longer_each_time(clock, arguments, waits) -> None:
    broker, client = _setup(clock, **arguments)
    client.publish(1, "", "jobs", b"flaky")
    client.publish(1, "", "jobs", b"later one")
    for attempt, wait in enumerate(waits):
        delivery = _get(client)
        assert delivery.body == b"flaky"
        client.send(commands.Basic.Reject(delivery_tag=delivery.tag, requeue=True))
        queue = broker.vhosts["/"].queues["jobs"]
        assert len(queue.retrying) == 1 and queue.message_count == (1 if attempt == 0 else 0)
        _advance(broker, clock, wait - 0.1)
        assert len(queue.retrying) == 1  # still waiting
        if attempt == 0:
            other = _get(client)  # meanwhile the next message goes first
            assert other.body == b"later one"
            client.send(commands.Basic.Ack(delivery_tag=other.tag))
        _advance(broker, clock, 0.1)
        assert not queue.retrying  # back in its place


def test_with_a_backoff_the_limit_is_20_and_then_the_message_is_dead_lettered(clock) -> None:
    broker, client = _setup(clock, **{"x-delayed-retry-min": 10})
    client.publish(1, "", "jobs", b"never works")
    counts = []
    while True:
        delivery = _get(client)
        if delivery is None:
            if not broker.vhosts["/"].queues["jobs"].retrying:
                break
            _advance(broker, clock, 1.0)
            continue
        counts.append((delivery.properties.headers or {}).get("x-delivery-count"))
        client.send(commands.Basic.Nack(delivery_tag=delivery.tag, requeue=True))
    assert counts == [None, *range(1, 21)]  # 21 deliveries
    assert _get(client, "dead").properties.headers["x-death"][0]["reason"] == "delivery_limit"


def test_only_the_kind_of_return_asked_for_waits(clock) -> None:
    broker, client = _setup(clock, **{"x-delayed-retry-min": 5000})  # type "failed", the default
    client.publish(1, "", "jobs", b"m")
    _get(client)
    client.send(commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    client.received()
    queue = broker.vhosts["/"].queues["jobs"]
    assert queue.message_count == 1 and not queue.retrying  # a channel closed: back at once
    policy = RetryPolicy.of({"x-delayed-retry-min": 1, "x-delayed-retry-type": "returned"})
    assert policy.applies(failed=False) and not policy.applies(failed=True)
    assert RetryPolicy.of({"x-delayed-retry-min": 1, "x-delayed-retry-type": "all"}).applies(failed=True)


def test_a_policy_turns_the_backoff_on_and_purge_drops_the_waiting(clock) -> None:
    broker, client = _setup(clock)
    tenancy.set_policy(broker, "/", "backoff", pattern="^jobs$", definition={"delayed-retry-min": 2000})
    client.publish(1, "", "jobs", b"m")
    delivery = _get(client)
    client.send(commands.Basic.Reject(delivery_tag=delivery.tag, requeue=True))
    queue = broker.vhosts["/"].queues["jobs"]
    assert len(queue.retrying) == 1
    client.send(commands.Queue.Purge(queue="jobs"))
    [(_, purged)] = client.methods()
    assert purged.message_count == 1 and not queue.retrying


@pytest.mark.parametrize("arguments", [{"x-delayed-retry-min": 0}, {"x-delayed-retry-min": "1s"},
                                       {"x-delayed-retry-min": 10, "x-delayed-retry-type": "sometimes"},
                                       {"x-delayed-retry-max": 100}])
def test_bad_backoff_arguments_are_a_406(arguments) -> None:
    client = FakeClient(Broker())
    client.open_channel()
    client.send(commands.Queue.Declare(queue="q", arguments=arguments))
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


def test_pika_sees_the_backoff_and_the_api_lists_the_waiting_messages(start_broker) -> None:
    broker = start_broker(management_port=free_port())
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("backoff", arguments={"x-delayed-retry-min": 800, "x-delayed-retry-multiplier": 2})
        channel.basic_publish("", "backoff", b"flaky", pika.BasicProperties(headers={"task": "t1"}))
        method, _, _ = channel.basic_get("backoff")
        rejected_at = time.monotonic()
        channel.basic_reject(method.delivery_tag, requeue=True)
        assert channel.basic_get("backoff")[0] is None  # waiting
        view = call(broker, "GET", "/api/queues/%2F/backoff")[1]
        assert view["messages_retrying"] == 1 and view["retry"] == {"type": "failed", "min": 800, "max": None,
                                                                    "multiplier": 2}
        waiting = call(broker, "GET", "/api/queues/%2F/backoff/retrying")[1]
        assert waiting["messages"] == 1 and waiting["held"][0]["delivery_count"] == 1
        assert waiting["held"][0]["properties"]["headers"] == {"task": "t1"}
        while True:
            method, properties, body = channel.basic_get("backoff")
            if method is not None:
                break
            assert time.monotonic() - rejected_at < 10
            time.sleep(0.05)
        assert time.monotonic() - rejected_at >= 0.75 and method.redelivered
        assert properties.headers["x-delivery-count"] == 1


def test_waiting_messages_count_for_length_limits_and_if_empty(clock) -> None:
    broker, client = _setup(clock, **{"x-delayed-retry-min": 5000, "x-max-length": 1, "x-overflow": "reject-publish"})
    client.publish(1, "", "jobs", b"waits")
    delivery = _get(client)
    client.send(commands.Basic.Reject(delivery_tag=delivery.tag, requeue=True))
    queue = broker.vhosts["/"].queues["jobs"]
    assert len(queue.retrying) == 1
    client.publish(1, "", "jobs", b"over the limit")
    assert queue.message_count == 0  # refused: the waiting one counts
    client.send(commands.Queue.Delete(queue="jobs", if_empty=True))
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406  # not empty


def test_a_backoff_wait_survives_a_kill_9(start_broker) -> None:
    """The end of a stored message's backoff is kept with its delivery count: after a crash it
    still waits out the rest of it, then comes back counted."""
    broker = start_broker(management_port=free_port())
    parameters = pika.URLParameters(broker.url)
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        channel.queue_declare("durable-backoff", durable=True, arguments={"x-delayed-retry-min": 4000})
        channel.confirm_delivery()
        channel.basic_publish("", "durable-backoff", b"flaky", pika.BasicProperties(delivery_mode=2))
        method, _, _ = channel.basic_get("durable-backoff")
        rejected_at = time.monotonic()
        channel.basic_reject(method.delivery_tag, requeue=True)
        channel.queue_declare("durable-backoff", passive=True)  # (a round trip: the reject is in)
    broker.restart(crash=True)
    assert call(broker, "GET", "/api/queues/%2F/durable-backoff")[1]["messages_retrying"] == 1
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        assert channel.basic_get("durable-backoff")[0] is None  # still waiting after the restart
        while True:
            method, properties, _ = channel.basic_get("durable-backoff")
            if method is not None:
                break
            assert time.monotonic() - rejected_at < 20
            time.sleep(0.1)
        assert time.monotonic() - rejected_at >= 3.5
        assert method.redelivered and properties.headers["x-delivery-count"] == 1
