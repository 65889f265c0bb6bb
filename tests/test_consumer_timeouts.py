"""Consumer timeouts (RabbitMQ 4.x semantics): in memory with a driven clock, then with pika
against a broker process (its global ``consumer_timeout``)."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest
from pamqp import commands

from amqpbroker.broker import channel as channel_module
from amqpbroker.broker.broker import Broker, Limits
from amqpbroker.broker.consumer_timeouts import CHECK_SECONDS
from tests.helpers import CLIENT_CAPABILITIES, FakeClient, deliveries

NOW = 1_000_000.0


def _consuming(broker: Broker, *, queue_arguments: dict | None = None, consumer_arguments: dict | None = None,
               cancel_notify: bool = True) -> FakeClient:
    capabilities = {**CLIENT_CAPABILITIES, "consumer_cancel_notify": cancel_notify}
    client = FakeClient(broker, capabilities=capabilities)
    client.open_channel()
    client.send(commands.Queue.Declare(queue="slow", arguments=queue_arguments or {}))
    client.expect(commands.Queue.DeclareOk)
    client.publish(1, "", "slow", b"one")
    client.publish(1, "", "slow", b"two")
    client.send(commands.Basic.Consume(queue="slow", consumer_tag="worker", arguments=consumer_arguments or {}))
    got = deliveries(client.received())
    assert [delivery.body for delivery in got] == [b"one", b"two"]
    return client


_CLOCK = [NOW]


@pytest.fixture(autouse=True)
def driven_clock(monkeypatch) -> None:
    """The monotonic clock deliveries are stamped with and timeouts read: NOW until ``_at`` moves it."""
    _CLOCK[0] = NOW
    monkeypatch.setattr(channel_module, "monotonic", lambda: _CLOCK[0])


def _at(broker: Broker, moment: float) -> None:
    """The broker's timer at NOW + moment."""
    _CLOCK[0] = NOW + moment
    broker.tick(NOW + moment)


def _run_clock(broker: Broker, seconds: float, start: float = 0.0) -> None:
    """The broker's timer, once per check interval, from NOW + start to NOW + seconds."""
    step = start
    while step <= seconds:
        _at(broker, step)
        step += CHECK_SECONDS


def test_a_consumer_past_its_timeout_is_cancelled_and_its_deliveries_requeued() -> None:
    broker = Broker()
    client = _consuming(broker, consumer_arguments={"x-consumer-timeout": 3000})
    _run_clock(broker, 2.0)
    assert client.methods() == []  # not before its time
    _run_clock(broker, 4.0, start=3.0)
    [(_, cancel)] = client.methods()
    assert isinstance(cancel, commands.Basic.Cancel) and cancel.consumer_tag == "worker"
    queue = broker.vhosts["/"].queues["slow"]
    assert queue.message_count == 2 and queue.unacked_count == 0 and not queue.consumers
    client.ack(1)  # late: ignored, not an unknown-tag error
    client.send(commands.Basic.Nack(delivery_tag=2, multiple=True, requeue=True))
    assert client.methods() == [] and not client.closed
    client.send(commands.Basic.Get(queue="slow"))
    [again] = deliveries(client.received())
    assert again.body == b"one" and again.method.redelivered
    client.ack(99)  # a tag never given is still a 406
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


@pytest.mark.parametrize("source", ["argument", "policy", "global"])
def test_the_queue_s_timeout_or_the_broker_s_applies_when_the_consumer_has_none(source) -> None:
    broker = Broker(Limits(consumer_timeout=2000) if source == "global" else Limits())
    if source == "policy":
        from amqpbroker.broker import tenancy
        tenancy.set_policy(broker, "/", "timeouts", pattern="^slow$", definition={"consumer-timeout": 2000})
    client = _consuming(broker, queue_arguments={"x-consumer-timeout": 2000} if source == "argument" else None)
    _run_clock(broker, 1.0)
    assert client.methods() == []
    _run_clock(broker, 3.0, start=2.0)
    assert [type(method) for _, method in client.methods()] == [commands.Basic.Cancel]


def test_the_consumer_s_own_timeout_wins_over_the_queue_s() -> None:
    broker = Broker(Limits(consumer_timeout=1000))
    client = _consuming(broker, queue_arguments={"x-consumer-timeout": 1000},
                        consumer_arguments={"x-consumer-timeout": 60_000})
    _run_clock(broker, 30.0)
    assert client.methods() == []


def test_without_cancel_notify_the_channel_is_closed_with_rabbitmq_s_406() -> None:
    broker = Broker(Limits(consumer_timeout=1500))
    client = _consuming(broker, cancel_notify=False)
    _run_clock(broker, 3.0)
    [(number, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and number == 1 and close.reply_code == 406
    assert close.reply_text == ("PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout "
                                "value used: 1500 ms. This timeout value can be configured, see consumers doc "
                                "guide to learn more")
    client.send(commands.Channel.CloseOk())
    queue = broker.vhosts["/"].queues["slow"]
    assert queue.message_count == 2 and queue.unacked_count == 0


def test_a_basic_get_delivery_past_the_timeout_closes_the_channel() -> None:
    broker = Broker(Limits(consumer_timeout=1000))
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("got")
    client.publish(1, "", "got", b"x")
    client.send(commands.Basic.Get(queue="got"))
    deliveries(client.received())
    _run_clock(broker, 2.0)
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


def test_acked_deliveries_and_no_configured_timeout_leave_everything_alone() -> None:
    broker = Broker()
    client = _consuming(broker)
    _run_clock(broker, 100.0)
    assert client.methods() == []
    broker = Broker(Limits(consumer_timeout=1000))
    client = _consuming(broker)
    client.ack(2, multiple=True)
    _run_clock(broker, 5.0)
    assert client.methods() == []


def test_a_bad_consumer_timeout_argument_is_a_406() -> None:
    client = FakeClient(Broker())
    client.open_channel()
    client.declare_queue("q")
    client.send(commands.Basic.Consume(queue="q", arguments={"x-consumer-timeout": "soon"}))
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406
    client.send(commands.Channel.CloseOk())
    client.open_channel(2)
    client.send(commands.Queue.Declare(queue="q2", arguments={"x-consumer-timeout": -1}), 2)
    [(_, close)] = client.methods()
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


def test_each_delivery_is_timed_by_its_own_consumer_s_timeout_on_a_shared_channel() -> None:
    """kombu consumes several queues on one channel: a long timeout held by the oldest delivery
    does not hide a shorter one on a later delivery."""
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    for name in ("patient", "hasty"):
        client.declare_queue(name)
    client.consume("patient", "a", arguments={"x-consumer-timeout": 86_400_000})  # a day
    client.send(commands.Queue.Declare(queue="hasty-2", arguments={"x-consumer-timeout": 1_800_000}))
    client.publish(1, "", "patient", b"held for a day")
    client.received()
    _at(broker, 1000)
    client.consume("hasty-2", "b")
    for second in range(1000, 2700, 7):  # deliveries to b spread over time, never acked
        _at(broker, second)
        client.publish(1, "", "hasty-2", b"m")
    client.received()
    _at(broker, 1000 + 1799)
    assert client.methods() == []
    _at(broker, 1000 + 1801)
    [(_, cancel)] = client.methods()
    assert isinstance(cancel, commands.Basic.Cancel) and cancel.consumer_tag == "b"
    assert broker.vhosts["/"].queues["hasty-2"].unacked_count == 0
    assert broker.vhosts["/"].queues["patient"].unacked_count == 1


def test_a_wall_clock_step_changes_nothing() -> None:
    broker = Broker(Limits(consumer_timeout=60_000))
    client = _consuming(broker)
    broker.tick(NOW + 3600)  # the wall clock jumps an hour; the monotonic one did not move
    _at(broker, 1.0)
    assert client.methods() == []


def test_deliveries_of_a_consumer_the_client_cancelled_close_the_channel() -> None:
    broker = Broker(Limits(consumer_timeout=1000))
    client = _consuming(broker)
    client.send(commands.Basic.Cancel(consumer_tag="worker"))
    client.received()
    _at(broker, 2.0)
    [(_, close)] = client.methods()  # nobody to cancel: RabbitMQ 4.x closes the channel too
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


def test_an_auto_delete_queue_whose_consumer_timed_out_goes_with_its_messages() -> None:
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.send(commands.Queue.Declare(queue="temp", auto_delete=True))
    client.expect(commands.Queue.DeclareOk)
    client.consume("temp", "only", arguments={"x-consumer-timeout": 1000})
    client.publish(1, "", "temp", b"x")
    client.received()
    _at(broker, 2.0)
    assert [type(method) for _, method in client.methods()] == [commands.Basic.Cancel]
    assert "temp" not in broker.vhosts["/"].queues and not client.closed


def test_pika_consumer_is_cancelled_and_another_gets_the_message(start_broker) -> None:
    broker = start_broker(env={"AMQPBROKER_CONSUMER_TIMEOUT": "1500"})
    url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
    stuck = pika.BlockingConnection(pika.URLParameters(url))
    channel = stuck.channel()
    channel.queue_declare("ct-work")
    channel.basic_qos(prefetch_count=1)
    cancelled = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    got = []
    channel.basic_consume("ct-work", lambda ch, method, props, body: got.append(method.delivery_tag))
    channel.basic_publish("", "ct-work", b"long task")
    started = time.monotonic()
    while not cancelled and time.monotonic() - started < 15:
        stuck.process_data_events(time_limit=0.2)
    assert got == [1] and len(cancelled) == 1
    assert time.monotonic() - started >= 1.4  # not before the timeout
    channel.basic_ack(1)  # late: ignored, the channel stays open
    stuck.process_data_events(time_limit=0.5)
    assert channel.is_open
    other = pika.BlockingConnection(pika.URLParameters(url))
    try:
        method, _, body = other.channel().basic_get("ct-work", auto_ack=True)
        assert body == b"long task" and method.redelivered
    finally:
        other.close()
        stuck.close()


def test_pika_without_cancel_notify_sees_its_channel_closed_with_406(start_broker) -> None:
    broker = start_broker(env={"AMQPBROKER_CONSUMER_TIMEOUT": "1000"})
    parameters = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.port}/")
    parameters.client_properties = {"capabilities": {"publisher_confirms": True, "basic.nack": True}}
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.queue_declare("ct-legacy")
        channel.basic_consume("ct-legacy", lambda *args: None)
        channel.basic_publish("", "ct-legacy", b"x")
        connection.call_later(15, channel.stop_consuming)  # (a bound, should it never close)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.start_consuming()
        assert closed.value.reply_code == 406 and "timed out" in closed.value.reply_text
        assert connection.is_open
    finally:
        connection.close()
