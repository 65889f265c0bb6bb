"""``x-dead-letter-strategy: at-least-once`` (dead_letter_hold.py): a quorum queue with
``x-overflow: reject-publish`` keeps what it dead-letters until every target took it; held
messages count towards its length limit, show in the API, go in order, and survive a kill -9.
In memory (the vhost's timer driven by hand) and with pika against a real broker."""

from __future__ import annotations

import time

import pika
from pamqp import commands

from amqpbroker.broker import tenancy
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.dead_letter_hold import RETRY_INTERVAL
from amqpbroker.testing import free_port
from tests.helpers import FakeClient, deliveries
from tests.test_management import call

AT_LEAST_ONCE = {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx",
                 "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def _setup(target_room: int = 1, **source_arguments) -> tuple[Broker, FakeClient]:
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.send(commands.Exchange.Declare(exchange="dlx", exchange_type="fanout"))
    client.send(commands.Queue.Declare(queue="dead", durable=True, arguments={
        "x-max-length": target_room, "x-overflow": "reject-publish"}))
    client.send(commands.Queue.Bind(queue="dead", exchange="dlx"))
    client.send(commands.Queue.Declare(queue="src", durable=True, arguments={**AT_LEAST_ONCE, **source_arguments}))
    client.received()
    return broker, client


def _reject_all(client: FakeClient, queue: str = "src") -> int:
    rejected = 0
    while True:
        client.send(commands.Basic.Get(queue=queue))
        got = deliveries(client.received())
        if not got:
            return rejected
        client.send(commands.Basic.Reject(delivery_tag=got[0].tag, requeue=False))
        rejected += 1


def _drain(client: FakeClient, queue: str) -> list[bytes]:
    bodies = []
    while True:
        client.send(commands.Basic.Get(queue=queue, no_ack=True))
        got = deliveries(client.received())
        if not got:
            return bodies
        bodies.append(got[0].body)


_ticked = [0.0]


def _tick(broker: Broker, seconds: float = RETRY_INTERVAL + 0.1) -> None:
    """The timer, ``seconds`` after the last one (time moves on from tick to tick)."""
    _ticked[0] = max(_ticked[0], broker.vhosts["/"].clock()) + seconds
    broker.tick(_ticked[0])


def test_a_full_target_makes_the_source_keep_the_message_until_there_is_room() -> None:
    broker, client = _setup()
    for body in (b"1", b"2", b"3"):
        client.publish(1, "", "src", body)
    assert _reject_all(client) == 3
    source = broker.vhosts["/"].queues["src"]
    assert len(source.dead_letter_hold) == 2 and source.message_count == 0
    assert _drain(client, "dead") == [b"1"]
    _tick(broker)  # room for one: the next in order goes, the last waits
    assert len(source.dead_letter_hold) == 1
    assert _drain(client, "dead") == [b"2"]
    _tick(broker)
    assert not source.dead_letter_hold and _drain(client, "dead") == [b"3"]
    assert source not in broker.vhosts["/"].timed  # nothing left to retry


def test_with_at_most_once_or_another_overflow_the_excess_is_dropped_as_rabbitmq_does() -> None:
    for arguments in ({"x-dead-letter-strategy": "at-most-once"}, {"x-overflow": "drop-head"}):
        broker, client = _setup(**arguments)
        for body in (b"1", b"2"):
            client.publish(1, "", "src", body)
        assert _reject_all(client) == 2
        assert broker.vhosts["/"].queues["src"].dead_letter_hold is None
        _tick(broker)
        assert _drain(client, "dead") == [b"1"]


def test_a_missing_dead_letter_exchange_or_no_route_holds_too() -> None:
    broker, client = _setup()
    client.send(commands.Queue.Unbind(queue="dead", exchange="dlx"))
    client.publish(1, "", "src", b"unroutable")
    _reject_all(client)
    source = broker.vhosts["/"].queues["src"]
    assert len(source.dead_letter_hold) == 1
    client.send(commands.Queue.Bind(queue="dead", exchange="dlx"))
    _tick(broker)
    assert _drain(client, "dead") == [b"unroutable"]
    client.send(commands.Exchange.Delete(exchange="dlx"))
    client.publish(1, "", "src", b"no exchange")
    _reject_all(client)
    assert len(source.dead_letter_hold) == 1


def test_a_target_that_took_it_does_not_get_it_again() -> None:
    broker, client = _setup()
    client.send(commands.Queue.Declare(queue="roomy", durable=True))
    client.send(commands.Queue.Bind(queue="roomy", exchange="dlx"))
    for body in (b"1", b"2"):
        client.publish(1, "", "src", body)
    _reject_all(client)
    assert _drain(client, "roomy") == [b"1", b"2"]  # the roomy target took both at once
    assert _drain(client, "dead") == [b"1"]
    _tick(broker)
    assert _drain(client, "dead") == [b"2"] and _drain(client, "roomy") == []


def test_held_messages_count_towards_the_source_s_limit_and_show_in_the_api() -> None:
    broker, client = _setup(**{"x-max-length": 3})
    for body in (b"1", b"2", b"3"):
        client.publish(1, "", "src", body)
    _reject_all(client)  # one went, two held
    client.send(commands.Confirm.Select())
    client.received()
    client.publish(1, "", "src", b"4")
    client.publish(1, "", "src", b"5")  # 2 held + 1 ready: full, refused
    acks = [type(method).__name__ for _, method in client.methods()]
    assert acks == ["SelectOk", "Ack", "Nack"] or acks.count("Nack") == 1
    view = broker.vhosts["/"].queues["src"]
    assert view.message_count == 1 and len(view.dead_letter_hold) == 2 and view.dead_letter_hold.bytes == 2


def test_delivery_limit_and_expiry_are_held_as_well() -> None:
    broker, client = _setup(target_room=0, **{"x-delivery-limit": 0, "x-message-ttl": 1000})
    client.publish(1, "", "src", b"returned")
    client.send(commands.Basic.Get(queue="src"))
    [got] = deliveries(client.received())
    client.send(commands.Basic.Reject(delivery_tag=got.tag, requeue=True))  # past its limit of 0
    client.publish(1, "", "src", b"expires")
    _tick(broker, 2)
    hold = broker.vhosts["/"].queues["src"].dead_letter_hold
    assert [held.reason for held in hold.held] == ["delivery_limit", "expired"]


def test_a_policy_can_turn_it_on_and_turning_it_off_releases_the_held_at_most_once() -> None:
    broker, client = _setup()
    client.send(commands.Queue.Declare(queue="plain", durable=True, arguments={"x-queue-type": "quorum"}))
    client.received()
    vhost = broker.vhosts["/"]
    tenancy.set_policy(broker, "/", "alo", pattern="^plain$", definition={
        "dead-letter-exchange": "dlx", "dead-letter-strategy": "at-least-once", "overflow": "reject-publish"},
        apply_to="quorum_queues")
    for body in (b"1", b"2"):
        client.publish(1, "", "plain", body)
    _reject_all(client, "plain")
    plain = vhost.queues["plain"]
    assert len(plain.dead_letter_hold) == 1
    tenancy.set_policy(broker, "/", "alo", pattern="^plain$", definition={"dead-letter-exchange": "dlx"},
                       apply_to="quorum_queues")
    assert plain.dead_letter_hold is None  # released: the full target refused it, so it is gone
    assert _drain(client, "dead") == [b"1"]


def test_classic_queues_never_hold() -> None:
    broker, client = _setup()
    client.send(commands.Queue.Declare(queue="classic", durable=True, arguments={
        "x-dead-letter-exchange": "dlx", "x-overflow": "reject-publish"}))
    client.received()
    tenancy.set_policy(broker, "/", "alo", pattern="^classic$", definition={"dead-letter-strategy": "at-least-once"})
    assert broker.vhosts["/"].queues["classic"].dead_letter_hold is None


def test_deleting_the_source_drops_what_it_held() -> None:
    broker, client = _setup(target_room=0)
    client.publish(1, "", "src", b"1")
    _reject_all(client)
    source = broker.vhosts["/"].queues["src"]
    client.send(commands.Queue.Delete(queue="src"))
    client.received()
    assert not source.dead_letter_hold and source not in broker.vhosts["/"].timed


def test_held_messages_survive_a_kill_9_and_go_once_there_is_room(start_broker) -> None:
    broker = start_broker(management_port=free_port())
    parameters = pika.URLParameters(broker.url)
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        channel.exchange_declare("alo-dlx", "fanout", durable=True)
        channel.queue_declare("alo-dead", durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        channel.queue_bind("alo-dead", "alo-dlx")
        channel.queue_declare("alo-src", durable=True, arguments={**AT_LEAST_ONCE, "x-dead-letter-exchange": "alo-dlx"})
        channel.confirm_delivery()
        for body in (b"1", b"2", b"3"):
            channel.basic_publish("", "alo-src", body, pika.BasicProperties(delivery_mode=2))
        for _ in range(3):
            method, _, _ = channel.basic_get("alo-src")
            channel.basic_reject(method.delivery_tag, requeue=False)
        channel.queue_declare("alo-src", passive=True)  # (a round trip: the rejects are in)
    view = call(broker, "GET", "/api/queues/%2F/alo-src")[1]
    assert (view["messages_dlx"], view["message_bytes_dlx"], view["messages"], view["messages_ready"]) == (2, 2, 2, 0)
    broker.restart(crash=True)
    assert call(broker, "GET", "/api/queues/%2F/alo-src")[1]["messages_dlx"] == 2
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            method, _, body = channel.basic_get("alo-dead", auto_ack=True)
            if method is None:
                connection.sleep(0.2)
            else:
                got.append(body)
        assert got == [b"1", b"2", b"3"]
        assert channel.basic_get("alo-src")[0] is None  # never handed to a consumer
    assert call(broker, "GET", "/api/queues/%2F/alo-src")[1]["messages_dlx"] == 0
    broker.restart(crash=True)  # nothing held any more: nothing comes back
    assert call(broker, "GET", "/api/queues/%2F/alo-src")[1]["messages"] == 0
