"""Queue types (broker/queue_types.py): what differs between classic and quorum queues lives in
one object per type; a queue gets its type from ``x-queue-type`` at declare."""

from __future__ import annotations

from pamqp import commands

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.queue_types import CLASSIC, QUORUM, queue_type_of
from tests.helpers import FakeClient


def test_the_type_comes_from_x_queue_type() -> None:
    assert queue_type_of({}) is CLASSIC
    assert queue_type_of({"x-queue-type": "quorum"}) is QUORUM
    assert queue_type_of({"x-queue-type": b"quorum"}) is QUORUM
    assert queue_type_of({"x-queue-type": "classic"}) is CLASSIC


def test_what_each_type_decides() -> None:
    assert (CLASSIC.counts_every_delivery, CLASSIC.takes_global_qos, CLASSIC.dead_letters_at_least_once,
            CLASSIC.needs_durable_shared) == (False, True, False, False)
    assert (QUORUM.counts_every_delivery, QUORUM.takes_global_qos, QUORUM.dead_letters_at_least_once,
            QUORUM.needs_durable_shared) == (True, False, True, True)
    assert CLASSIC.default_delivery_limit((None, 20)) is None and QUORUM.default_delivery_limit((None, 20)) == 20


def test_declared_queues_carry_their_type() -> None:
    client = FakeClient(Broker())
    client.open_channel()
    client.send(commands.Queue.Declare(queue="c"))
    client.send(commands.Queue.Declare(queue="q", durable=True, arguments={"x-queue-type": "quorum"}))
    client.received()
    queues = client.broker.vhosts["/"].queues
    assert queues["c"].type is CLASSIC and queues["q"].type is QUORUM
    assert queues["q"].delivery_limit == 20 and queues["c"].delivery_limit is None
