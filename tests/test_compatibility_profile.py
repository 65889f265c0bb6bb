"""The compatibility profile (broker/compatibility.py): one setting choosing RabbitMQ 3.13's, 4.0's
(the default) or 4.3's rules where they differ: global QoS, transient non-exclusive queues,
x-death a client publishes, quorum queues' default delivery limit, max message size."""

from __future__ import annotations

import time

import pytest
from pamqp import commands

from amqpbroker.cli import build_parser
from amqpbroker.config import load_config
from amqpbroker.server.lifecycle import build_broker
from tests.helpers import FakeClient, deliveries

FORGED = [{"count": 9, "reason": "expired", "queue": "target", "exchange": "", "routing-keys": ["target"]}]


def _client(compatibility: str | None = None, **settings) -> FakeClient:
    config = load_config(env={}, compatibility=compatibility, **settings)
    client = FakeClient(build_broker(config))
    client.open_channel()
    return client


def test_the_profile_sets_the_defaults_and_explicit_settings_win() -> None:
    limits = {name: build_broker(load_config(env={}, compatibility=name)).limits for name in ("3.13", "4.0", "4.3")}
    assert [(limits[name].max_message_size, limits[name].delivery_limit_quorum) for name in limits] == [
        (128 << 20, -1), (16 << 20, 20), (16 << 20, 20)]
    assert load_config(env={}).compatibility == "4.0"
    chosen = build_broker(load_config(env={"AMQPBROKER_COMPATIBILITY": "3", "AMQPBROKER_MAX_MESSAGE_SIZE": "1000"},
                                      delivery_limit_quorum=5)).limits
    assert (chosen.compatibility.name, chosen.max_message_size, chosen.delivery_limit_quorum) == ("3.13", 1000, 5)
    assert build_parser().parse_args(["--compatibility", "4.3"]).compatibility == "4.3"


def test_an_unknown_profile_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="3.13, 4.0, 4.3"):
        load_config(env={}, compatibility="5.0")


@pytest.mark.parametrize("compatibility", ["3.13", "4.0"])
def test_global_qos_is_channel_wide_before_4_3(compatibility) -> None:
    client = _client(compatibility)
    client.send(commands.Queue.Declare(queue="q"))
    client.send(commands.Basic.Qos(prefetch_count=1, global_=True))
    for tag in ("a", "b"):
        client.send(commands.Basic.Consume(queue="q", consumer_tag=tag))
    client.received()
    for body in (b"1", b"2"):
        client.publish(1, "", "q", body)
    assert len(deliveries(client.received())) == 1  # one for the whole channel
    client.send(commands.Queue.Declare(queue="qq", durable=True, arguments={"x-queue-type": "quorum"}))
    client.send(commands.Basic.Consume(queue="qq", consumer_tag="c"))
    assert any(isinstance(method, commands.Connection.Close) and method.reply_code == 540
               for _, method in client.methods())


def test_with_4_3_global_qos_is_taken_as_per_consumer_and_quorum_queues_accept_it() -> None:
    client = _client("4.3")
    client.send(commands.Queue.Declare(queue="q", durable=True))
    client.send(commands.Basic.Qos(prefetch_count=1, global_=True))
    for tag in ("a", "b"):
        client.send(commands.Basic.Consume(queue="q", consumer_tag=tag))
    client.received()
    for body in (b"1", b"2", b"3"):
        client.publish(1, "", "q", body)
    assert len(deliveries(client.received())) == 2  # one per consumer, as RabbitMQ 4.3
    client.send(commands.Queue.Declare(queue="qq", durable=True, arguments={"x-queue-type": "quorum"}))
    client.send(commands.Basic.Consume(queue="qq", consumer_tag="c"))
    assert [type(method).__name__ for _, method in client.methods()] == ["DeclareOk", "ConsumeOk"]


def test_with_4_3_a_new_transient_non_exclusive_queue_closes_the_connection_541() -> None:
    client = _client("4.3")
    for durable, exclusive in ((True, False), (False, True)):
        client.send(commands.Queue.Declare(queue=f"ok-{durable}", durable=durable, exclusive=exclusive))
    client.send(commands.Queue.Declare(queue="ok-True", passive=True))
    assert [type(method).__name__ for _, method in client.methods()] == ["DeclareOk"] * 3
    client.send(commands.Queue.Declare(queue="", auto_delete=True))  # server-named: refused too
    [(channel, close)] = client.methods()
    assert channel == 0 and isinstance(close, commands.Connection.Close) and close.reply_code == 541
    assert close.reply_text.startswith("INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.")


def test_before_4_3_transient_non_exclusive_queues_are_allowed() -> None:
    client = _client()
    client.send(commands.Queue.Declare(queue="celeryev.x", auto_delete=True))
    assert [type(method).__name__ for _, method in client.methods()] == ["DeclareOk"]


def _dead_letter_forged(client: FakeClient):
    client.send(commands.Queue.Declare(queue="target"))
    client.send(commands.Queue.Declare(queue="source", arguments={
        "x-message-ttl": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "target"}))
    client.received()
    client.publish(1, "", "source", b"m", commands.Basic.Properties(headers={"x-death": [
        {"count": 1, "reason": "rejected", "queue": "elsewhere", "exchange": "", "routing-keys": ["elsewhere"]}]}))
    client.broker.tick(time.time() + 1)
    client.send(commands.Basic.Get(queue="target"))
    got = deliveries(client.received())
    return got[0].properties.headers if got else None


def test_3_13_takes_a_published_x_death_as_history_and_4_as_data() -> None:
    deaths = [(death["queue"], death["reason"]) for death in _dead_letter_forged(_client("3.13"))["x-death"]]
    assert deaths == [("source", "expired"), ("elsewhere", "rejected")]  # continued, as 3.x
    deaths = [(death["queue"], death["reason"]) for death in _dead_letter_forged(_client("4.0"))["x-death"]]
    assert deaths == [("source", "expired")]


def test_3_13_reads_a_published_x_death_for_cycles() -> None:
    client = _client("3.13")
    client.send(commands.Queue.Declare(queue="target"))
    client.send(commands.Queue.Declare(queue="source", arguments={
        "x-message-ttl": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "target"}))
    client.received()
    client.publish(1, "", "source", b"m", commands.Basic.Properties(headers={"x-death": FORGED}))
    client.broker.tick(time.time() + 1)
    client.send(commands.Basic.Get(queue="target"))
    # the forged history says it expired in "target" before: 3.x takes it for a cycle and drops it
    assert deliveries(client.received()) == []


def test_3_13_gives_quorum_queues_no_default_delivery_limit() -> None:
    client = _client("3.13")
    client.send(commands.Queue.Declare(queue="qq", durable=True, arguments={"x-queue-type": "quorum"}))
    client.received()
    assert client.broker.vhosts["/"].queues["qq"].delivery_limit is None
