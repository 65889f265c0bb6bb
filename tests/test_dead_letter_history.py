"""x-death as RabbitMQ 4 keeps it: the broker's own record, not a header a client sent; the
x-first-death-* and x-last-death-* headers; a real cycle still stops. (RabbitMQ 3.10, the
reference, takes a published x-death as history: these are broker-side tests.)"""

from __future__ import annotations

import time

from pamqp import commands

from amqpbroker.broker.broker import Broker
from tests.helpers import FakeClient, deliveries

FORGED = [{"count": 9, "reason": "expired", "queue": "target", "exchange": "", "routing-keys": ["target"]}]


def _client() -> FakeClient:
    client = FakeClient(Broker())
    client.open_channel()
    client.send(commands.Queue.Declare(queue="target"))
    client.send(commands.Queue.Declare(queue="source", arguments={
        "x-message-ttl": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "target"}))
    client.received()
    return client


def _get(client: FakeClient, queue: str):
    client.send(commands.Basic.Get(queue=queue))
    got = deliveries(client.received())
    return got[0] if got else None


def test_a_published_x_death_is_data_and_the_broker_writes_its_own_history() -> None:
    client = _client()
    client.publish(1, "", "source", b"m", commands.Basic.Properties(headers={
        "x-death": FORGED, "x-first-death-queue": "forged"}))
    client.broker.tick(time.time() + 1)  # expired: dead-lettered
    dead = _get(client, "target")  # not taken for a cycle into "target", as 3.x would
    assert dead is not None
    headers = dead.properties.headers
    assert [(death["queue"], death["reason"], death["count"]) for death in headers["x-death"]] == [
        ("source", "expired", 1)]
    assert headers["x-first-death-queue"] == headers["x-last-death-queue"] == "source"
    assert headers["x-first-death-reason"] == headers["x-last-death-reason"] == "expired"


def test_a_message_that_really_loops_is_dropped_and_the_history_grows() -> None:
    client = FakeClient(Broker())
    client.open_channel()
    for name, other in (("ping", "pong"), ("pong", "ping")):
        client.send(commands.Queue.Declare(queue=name, arguments={
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": other}))
    client.received()
    client.publish(1, "", "ping", b"m")
    for queue in ("ping", "pong", "ping"):
        delivery = _get(client, queue)
        client.send(commands.Basic.Reject(delivery_tag=delivery.tag, requeue=False))
    last = _get(client, "pong")  # rejections are no cycle: it goes round, counted
    deaths = last.properties.headers["x-death"]
    assert [(death["queue"], death["count"]) for death in deaths] == [("ping", 2), ("pong", 1)]
    assert last.properties.headers["x-last-death-queue"] == "ping"
    assert last.properties.headers["x-first-death-queue"] == "ping"


def test_the_first_death_s_exchange_stays_the_first() -> None:
    client = FakeClient(Broker())
    client.open_channel()
    client.send(commands.Exchange.Declare(exchange="app", exchange_type="direct"))
    client.send(commands.Exchange.Declare(exchange="dlx", exchange_type="direct"))
    client.send(commands.Queue.Declare(queue="work", arguments={"x-dead-letter-exchange": "dlx"}))
    client.send(commands.Queue.Bind(queue="work", exchange="app", routing_key="k"))
    client.send(commands.Queue.Bind(queue="work", exchange="dlx", routing_key="k"))
    client.received()
    client.publish(1, "app", "k", b"m")
    for _ in range(2):  # rejected twice: the second death is in the same queue, reached via dlx
        delivery = _get(client, "work")
        client.send(commands.Basic.Reject(delivery_tag=delivery.tag, requeue=False))
    headers = _get(client, "work").properties.headers
    assert headers["x-first-death-exchange"] == "app" and headers["x-last-death-exchange"] == "dlx"
    assert [(death["exchange"], death["count"]) for death in headers["x-death"]] == [("app", 2)]
