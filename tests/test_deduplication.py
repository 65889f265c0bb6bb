"""Message deduplication with LavinMQ's arguments, through pika: on queues and exchanges, the
cache bounded by size and TTL, a custom header, duplicates confirmed and dropped, the caches of
durable queues and exchanges kept across a kill -9, counters in the API."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from amqpbroker.testing import free_port
from interop.support import drain
from tests.broker_process import BrokerProcess
from tests.test_management import call

DEDUP = {"x-message-deduplication": True}


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port())


def _publish(channel, exchange: str, key: str, body: bytes, value=None, header: str = "x-deduplication-header",
             **headers) -> None:
    if value is not None:
        headers[header] = value
    channel.basic_publish(exchange, key, body, pika.BasicProperties(headers=headers or None, delivery_mode=2))


def test_a_queue_drops_duplicates_confirming_them(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("dedup-q", arguments={**DEDUP, "x-cache-size": 2})
        channel.confirm_delivery()  # every publish below is confirmed: a duplicate is not an error
        _publish(channel, "", "dedup-q", b"first a", "a")
        _publish(channel, "", "dedup-q", b"second a", "a")
        _publish(channel, "", "dedup-q", b"no header")
        _publish(channel, "", "dedup-q", b"no header again")
        _publish(channel, "", "dedup-q", b"b", "b")
        _publish(channel, "", "dedup-q", b"c", "c")  # pushes "a" out of a cache of 2
        _publish(channel, "", "dedup-q", b"third a", "a")
        _publish(channel, "", "dedup-q", b"numeric", 7)
        _publish(channel, "", "dedup-q", b"numeric again", 7)
        assert drain(channel, "dedup-q") == [b"first a", b"no header", b"no header again", b"b", b"c",
                                               b"third a", b"numeric"]
    view = call(managed, "GET", "/api/queues/%2F/dedup-q")[1]["deduplication"]
    assert view == {"header": "x-deduplication-header", "cache_size": 2, "cached": 2, "duplicates": 2}


def test_ttl_custom_header_and_exchanges(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("dedup-ttl", arguments={**DEDUP, "x-cache-ttl": 300, "x-deduplication-header": "job-id"})
        channel.confirm_delivery()
        _publish(channel, "", "dedup-ttl", b"1", "j1", header="job-id")
        _publish(channel, "", "dedup-ttl", b"2", "j1", header="job-id")
        _publish(channel, "", "dedup-ttl", b"other header", "j1")  # not the queue's header
        _publish(channel, "", "dedup-ttl", b"long", "j2", header="job-id", **{"x-cache-ttl": 60_000})
        time.sleep(0.5)
        _publish(channel, "", "dedup-ttl", b"3", "j1", header="job-id")  # its 300 ms are over
        _publish(channel, "", "dedup-ttl", b"long again", "j2", header="job-id")  # its own TTL: a minute
        assert drain(channel, "dedup-ttl") == [b"1", b"other header", b"long", b"3"]

        channel.exchange_declare("dedup-x", "fanout", arguments=DEDUP)
        channel.queue_declare("dedup-x-q1")
        channel.queue_declare("dedup-x-q2")
        channel.queue_bind("dedup-x-q1", "dedup-x")
        channel.queue_bind("dedup-x-q2", "dedup-x")
        _publish(channel, "dedup-x", "", b"once", "event-1")
        _publish(channel, "dedup-x", "", b"twice", "event-1")
        assert drain(channel, "dedup-x-q1") == drain(channel, "dedup-x-q2") == [b"once"]
    assert call(managed, "GET", "/api/exchanges/%2F/dedup-x")[1]["deduplication"]["duplicates"] == 1


def test_the_caches_of_durable_queues_and_exchanges_survive_kill_9(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("dedup-durable", durable=True, arguments=DEDUP)
        channel.exchange_declare("dedup-durable-x", "direct", durable=True, arguments=DEDUP)
        channel.queue_declare("dedup-durable-x-q", durable=True)
        channel.queue_bind("dedup-durable-x-q", "dedup-durable-x", "k")
        channel.confirm_delivery()
        _publish(channel, "", "dedup-durable", b"once", "order-1")
        _publish(channel, "dedup-durable-x", "k", b"once", "order-9")
        assert drain(channel, "dedup-durable") == [b"once"]  # consumed: the cache remembers it still
    managed.restart(crash=True)
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        _publish(channel, "", "dedup-durable", b"retried after the crash", "order-1")
        _publish(channel, "dedup-durable-x", "k", b"retried after the crash", "order-9")
        _publish(channel, "", "dedup-durable", b"new", "order-2")
        assert drain(channel, "dedup-durable") == [b"new"]
        assert drain(channel, "dedup-durable-x-q") == [b"once"]
        channel.queue_delete("dedup-durable")
        channel.queue_declare("dedup-durable", durable=True, arguments=DEDUP)  # a new queue: a new cache
        _publish(channel, "", "dedup-durable", b"again", "order-1")
        assert drain(channel, "dedup-durable") == [b"again"]


@pytest.mark.parametrize("arguments", [{"x-message-deduplication": "yes"},
                                       {**DEDUP, "x-cache-size": 0}, {**DEDUP, "x-cache-ttl": -1},
                                       {**DEDUP, "x-deduplication-header": ""}])
def test_bad_deduplication_arguments_are_a_406(managed, arguments) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            connection.channel().queue_declare("dedup-bad", arguments=arguments)
        assert refused.value.reply_code == 406
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            connection.channel().exchange_declare("dedup-bad", "direct", arguments=arguments)
        assert refused.value.reply_code == 406


def test_a_message_a_full_queue_refused_is_not_remembered(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("dedup-full", arguments={**DEDUP, "x-max-length": 1, "x-overflow": "reject-publish"})
        channel.confirm_delivery()
        _publish(channel, "", "dedup-full", b"fills it", "a")
        with pytest.raises(pika.exceptions.NackError):  # full: nacked
            _publish(channel, "", "dedup-full", b"refused", "b")
        assert drain(channel, "dedup-full") == [b"fills it"]
        _publish(channel, "", "dedup-full", b"retried", "b")  # the publisher's retry is taken
        assert drain(channel, "dedup-full") == [b"retried"]


def test_an_exchange_remembers_only_what_its_queues_took_and_bytes_values_stay_distinct(managed) -> None:
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.exchange_declare("dedup-x-full", "direct", arguments=DEDUP)
        channel.queue_declare("dedup-x-full-q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        channel.queue_bind("dedup-x-full-q", "dedup-x-full", "k")
        channel.confirm_delivery()
        _publish(channel, "dedup-x-full", "k", b"fills it", "a")
        with pytest.raises(pika.exceptions.NackError):
            _publish(channel, "dedup-x-full", "k", b"refused", "b")
        assert drain(channel, "dedup-x-full-q") == [b"fills it"]
        _publish(channel, "dedup-x-full", "k", b"retried", "b")
        _publish(channel, "dedup-x-full", "k", b"dup", "b")
        assert drain(channel, "dedup-x-full-q") == [b"retried"]
        channel.queue_declare("dedup-bytes", arguments=DEDUP)
        _publish(channel, "", "dedup-bytes", b"1", b"\xff\x01")
        _publish(channel, "", "dedup-bytes", b"2", b"\xfe\x01")  # not the same value
        assert drain(channel, "dedup-bytes") == [b"1", b"2"]
