"""Exchange-to-exchange bindings (RabbitMQ's exchange.bind / exchange.unbind)."""

from __future__ import annotations

import pika
import pytest


@pytest.fixture
def channel(amqp_url: str):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def test_messages_flow_through_exchange_bindings_and_cycles_end(channel, unique: str) -> None:
    upstream, downstream = f"{unique}-up", f"{unique}-down"
    queue = f"{unique}-q"
    try:
        channel.exchange_declare(upstream, "topic")
        channel.exchange_declare(downstream, "fanout")
        channel.queue_declare(queue)
        channel.queue_bind(queue, downstream)
        channel.exchange_bind(destination=downstream, source=upstream, routing_key="logs.*")
        channel.exchange_bind(destination=upstream, source=downstream, routing_key="#")  # a cycle
        channel.basic_publish(upstream, "logs.error", b"routed")
        channel.basic_publish(upstream, "metrics.cpu", b"not routed")
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"routed"
        assert method.exchange == upstream and method.routing_key == "logs.error"
        assert channel.basic_get(queue, auto_ack=True) == (None, None, None)  # once, cycle or not

        channel.exchange_unbind(destination=downstream, source=upstream, routing_key="logs.*")
        channel.basic_publish(upstream, "logs.error", b"after unbind")
        assert channel.basic_get(queue, auto_ack=True) == (None, None, None)
    finally:
        channel.queue_delete(queue)
        channel.exchange_delete(upstream)
        channel.exchange_delete(downstream)


def test_exchange_bind_to_missing_exchange_is_not_found(channel, unique: str) -> None:
    source = f"{unique}-src"
    channel.exchange_declare(source, "direct")
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as raised:
            channel.exchange_bind(destination=f"{unique}-missing", source=source, routing_key="k")
        assert raised.value.reply_code == 404
        assert f"{unique}-missing" in raised.value.reply_text
    finally:
        connection = channel.connection
        cleanup = connection.channel()
        cleanup.exchange_delete(source)


def test_the_management_api_lists_an_exchange_s_and_a_queue_s_bindings(channel, management_url, cleanup,
                                                                        unique: str) -> None:
    """``/api/exchanges/V/X/bindings/source`` and ``/destination``, ``/api/queues/V/Q/bindings``,
    as RabbitMQ answers them (the web console shows both directions)."""
    from interop.support import Management

    api = Management(management_url)
    source, target, queue = cleanup.exchange(f"{unique}-x"), cleanup.exchange(f"{unique}-y"), cleanup.queue(f"{unique}-q")
    channel.exchange_declare(source, "topic")
    channel.exchange_declare(target, "fanout")
    channel.queue_declare(queue)
    channel.queue_bind(queue, source, "a.#")
    channel.exchange_bind(target, source, "b")

    def listed(path: str) -> list[tuple]:
        status, items = api.request("GET", path)
        assert status == 200, items
        return sorted((item["source"], item["destination"], item["destination_type"], item["routing_key"])
                      for item in items)
    assert listed(f"/api/exchanges/%2F/{source}/bindings/source") == [
        (source, queue, "queue", "a.#"), (source, target, "exchange", "b")]
    assert listed(f"/api/exchanges/%2F/{target}/bindings/destination") == [(source, target, "exchange", "b")]
    assert listed(f"/api/queues/%2F/{queue}/bindings") == [("", queue, "queue", queue), (source, queue, "queue", "a.#")]
    assert listed(f"/api/exchanges/%2F/{unique}-none/bindings/source") == []
