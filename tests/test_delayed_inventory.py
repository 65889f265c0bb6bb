"""What x-delayed-message exchanges hold, visible and purgeable: the management API (count, next
due time, the first N, purge), the exchange's API object, Prometheus; any 64-bit x-delay."""

from __future__ import annotations

import time
import urllib.request

import pika
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess
from tests.test_management import call


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port(), prometheus_port=free_port())


def _publish(channel, exchange: str, delay, body: bytes, persistent: bool = True) -> None:
    channel.basic_publish(exchange, "k", body, pika.BasicProperties(
        headers={"x-delay": delay} if delay is not None else {}, delivery_mode=2 if persistent else 1))


def test_held_messages_are_counted_browsed_purged_and_exported(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.exchange_declare("later", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
        channel.exchange_declare("other", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
        channel.queue_declare("due", durable=True)
        channel.queue_bind("due", "later", "k")
        channel.confirm_delivery()
        started = time.time()
        _publish(channel, "later", 3_600_000, b"in an hour")
        _publish(channel, "later", 60_000, b"in a minute")
        _publish(channel, "later", 2 ** 40, b"in 35 years")  # RabbitMQ's plugin caps at 2^32 ms
        _publish(channel, "other", 120_000, b"elsewhere", persistent=False)
        _publish(channel, "later", -5, b"now")  # negative or absent: routed at once, as the plugin
        _publish(channel, "later", None, b"also now")
        assert channel.queue_declare("due", durable=True, passive=True).method.message_count == 2

    status, held = call(managed, "GET", "/api/exchanges/%2F/later/delayed?count=2")
    assert status == 200 and held["messages"] == 3
    assert [message["payload"] for message in held["held"]] == ["in a minute", "in an hour"]
    assert abs(held["next_due"] / 1000 - (started + 60)) < 10
    assert held["held"][0]["routing_key"] == "k" and held["held"][0]["properties"]["delivery_mode"] == 2
    assert call(managed, "GET", "/api/exchanges/%2F/later")[1]["messages_delayed"] == 3
    assert call(managed, "GET", "/api/exchanges/%2F/amq.direct/delayed")[0] == 404  # not a delayed exchange
    with urllib.request.urlopen(f"http://127.0.0.1:{managed.prometheus_port}/metrics/per-object", timeout=5) as page:
        text = page.read().decode()
    assert 'amqpbroker_exchange_messages_delayed{exchange="later",vhost="/"} 3.0' in text
    assert 'amqpbroker_exchange_messages_delayed{exchange="other",vhost="/"} 1.0' in text
    assert "amqpbroker_delayed_next_due_timestamp_seconds{vhost=\"/\"}" in text

    managed.restart(crash=True)  # the persistent ones on the durable exchange are stored
    assert call(managed, "GET", "/api/exchanges/%2F/later/delayed")[1]["messages"] == 3
    assert "other" not in [exchange["name"] for exchange in call(managed, "GET", "/api/exchanges")[1]]
    assert call(managed, "DELETE", "/api/exchanges/%2F/later/delayed")[0] == 204
    assert call(managed, "GET", "/api/exchanges/%2F/later/delayed")[1] == {"messages": 0, "next_due": None,
                                                                          "held": []}
    managed.restart(crash=True)  # purged from the store too
    assert call(managed, "GET", "/api/exchanges/%2F/later/delayed")[1]["messages"] == 0


def test_a_user_needs_read_to_look_and_configure_to_purge(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        connection.channel().exchange_declare("held", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    call(managed, "PUT", "/api/users/peek", {"password": "pw", "tags": "management"})
    call(managed, "PUT", "/api/permissions/%2F/peek", {"configure": "", "write": "", "read": ".*"})
    assert call(managed, "GET", "/api/exchanges/%2F/held/delayed", user="peek", password="pw")[0] == 200
    assert call(managed, "DELETE", "/api/exchanges/%2F/held/delayed", user="peek", password="pw")[0] == 401
    assert call(managed, "GET", "/api/exchanges/%2F/held/delayed?count=x")[0] == 400


def test_a_delayed_message_s_ttl_counts_from_when_it_is_routed_and_delete_drops_what_is_held(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.exchange_declare("soon", "x-delayed-message", arguments={"x-delayed-type": "direct"})
        channel.queue_declare("short-lived", arguments={"x-message-ttl": 2000})
        channel.queue_bind("short-lived", "soon", "k")
        channel.confirm_delivery()
        _publish(channel, "soon", 2500, b"still fresh")  # held longer than the queue's TTL
        deadline = time.monotonic() + 10
        while True:
            method, _, body = channel.basic_get("short-lived", auto_ack=True)
            if method is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert body == b"still fresh"
        _publish(channel, "soon", 600_000, b"held")
        channel.exchange_delete("soon")
        channel.exchange_declare("soon", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    assert call(managed, "GET", "/api/exchanges/%2F/soon/delayed")[1]["messages"] == 0
