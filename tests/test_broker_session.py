"""Broker behaviour through sessions, without sockets: queues, consumers, acks, confirms, tx, errors.

Each client is a :class:`tests.helpers.FakeClient` on one shared in-memory broker; input is fed
whole and each send is one read batch, so "one batch" below means one ``FakeClient.feed``.
"""

from __future__ import annotations

import pytest
from pamqp import commands

from amqpbroker.broker import methods as methods_module
from amqpbroker.broker.broker import Broker

from tests.helpers import ClientPair, FakeClient, deliveries

Basic = commands.Basic
Queue = commands.Queue


@pytest.fixture
def client() -> FakeClient:
    client = FakeClient()
    client.open_channel(1)
    return client


@pytest.fixture
def pair() -> ClientPair:
    return ClientPair()


def queue_of(client: FakeClient, name: str):
    return client.broker.vhosts["/"].queues[name]


def publish_many(client: FakeClient, queue: str, bodies: list[bytes], channel: int = 1, **kw) -> None:
    """Publish every body to the default exchange in one batch."""
    client.feed(b"".join(client.publish_frames(channel, "", queue, body, **kw) for body in bodies))


def channel_close(client: FakeClient, channel: int = 1) -> commands.Channel.Close:
    """The ``channel.close`` the broker just sent on ``channel`` (and nothing else)."""
    frames = client.received()
    assert len(frames) == 1, frames
    number, close = frames[0]
    assert number == channel and isinstance(close, commands.Channel.Close), frames
    return close


def bodies(found) -> list[bytes]:
    return [delivery.body for delivery in found]


# ------------------------------------------------------------------ publish and get


def test_publish_to_the_default_exchange_and_basic_get(client):
    client.declare_queue("q")
    properties = Basic.Properties(content_type="application/json", delivery_mode=2,
                                  headers={"attempt": 1, "source": "test"}, message_id="id-1",
                                  priority=3, correlation_id="c", reply_to="r")
    client.publish(1, "", "q", b'{"x": 1}', properties)
    client.publish(1, "", "q", b"second")
    assert client.received() == []  # publishing has no answer
    assert queue_of(client, "q").message_count == 2

    client.send(Basic.Get(queue="q"), 1)
    (first,) = deliveries(client.received())
    assert isinstance(first.method, Basic.GetOk)
    assert (first.tag, first.redelivered, first.method.message_count) == (1, False, 1)
    assert (first.method.exchange, first.method.routing_key) == ("", "q")
    assert first.body == b'{"x": 1}'
    assert first.properties == properties

    client.send(Basic.Get(queue="q"), 1)
    (second,) = deliveries(client.received())
    assert (second.tag, second.body, second.method.message_count) == (2, b"second", 0)

    client.send(Basic.Get(queue="q"), 1)
    client.expect(Basic.GetEmpty)

    client.ack(1)
    client.ack(2)
    assert client.received() == []
    assert queue_of(client, "q").unacked_count == 0


def test_basic_get_no_ack_leaves_nothing_unacked(client):
    client.declare_queue("q")
    client.publish(1, "", "q", b"m")
    client.send(Basic.Get(queue="q", no_ack=True), 1)
    assert bodies(deliveries(client.received())) == [b"m"]
    assert queue_of(client, "q").unacked_count == 0
    assert client.session.channels[1].unacked == {}


def test_publish_to_a_missing_exchange_closes_the_channel_with_404(client):
    client.publish(1, "no-such-exchange", "q", b"m")
    close = channel_close(client)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    assert (close.class_id, close.method_id) == (60, 40)


def test_publish_to_the_default_exchange_with_no_such_queue_is_dropped(client):
    client.publish(1, "", "nowhere", b"m")
    assert client.received() == []


def test_queue_declare_ok_counts_messages_and_consumers(pair):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    publish_many(a, "q", [b"1", b"2", b"3"])
    ok = b.declare_queue("q")
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("q", 3, 0)
    b.send(Basic.Qos(prefetch_count=1), 1)
    b.expect(Basic.QosOk)
    b.consume("q", "c1")
    ok = a.declare_queue("q", passive=True)
    assert (ok.message_count, ok.consumer_count) == (2, 1)


# ------------------------------------------------------------------ consumers


def test_round_robin_between_two_consumers(pair):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    assert a.consume("q", "ca")[1:] == []
    assert b.consume("q", "cb")[1:] == []

    publish_many(a, "q", [b"m1", b"m2", b"m3", b"m4"])  # one batch
    for body in (b"m5", b"m6"):  # one batch each
        a.publish(1, "", "q", body)

    got_a, got_b = deliveries(a.received()), deliveries(b.received())
    assert bodies(got_a) == [b"m1", b"m3", b"m5"]
    assert bodies(got_b) == [b"m2", b"m4", b"m6"]
    assert [d.method.consumer_tag for d in got_a] == ["ca"] * 3
    assert [d.tag for d in got_b] == [1, 2, 3]  # delivery tags count per channel


def test_round_robin_skips_a_consumer_without_credit(pair):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    a.send(Basic.Qos(prefetch_count=1), 1)
    a.expect(Basic.QosOk)
    a.consume("q", "ca")
    b.consume("q", "cb")
    publish_many(a, "q", [b"m1", b"m2", b"m3", b"m4"])
    assert bodies(deliveries(a.received())) == [b"m1"]
    assert bodies(deliveries(b.received())) == [b"m2", b"m3", b"m4"]


def test_prefetch_credit(client):
    client.declare_queue("q")
    client.send(Basic.Qos(prefetch_count=2), 1)
    client.expect(Basic.QosOk)
    client.consume("q", "c1")
    publish_many(client, "q", [b"m1", b"m2", b"m3", b"m4", b"m5"])
    got = deliveries(client.received())
    assert [(d.tag, d.body) for d in got] == [(1, b"m1"), (2, b"m2")]
    assert queue_of(client, "q").message_count == 3

    client.ack(1)  # frees one unit of credit: exactly one more message
    got = deliveries(client.received())
    assert [(d.tag, d.body) for d in got] == [(3, b"m3")]

    client.ack(3, multiple=True)  # 2 and 3: two more
    got = deliveries(client.received())
    assert [(d.tag, d.body) for d in got] == [(4, b"m4"), (5, b"m5")]
    client.ack(5, multiple=True)
    assert client.received() == []
    assert queue_of(client, "q").unacked_count == 0


def test_raising_prefetch_on_the_channel_applies_to_new_consumers_only(client):
    client.declare_queue("q")
    client.send(Basic.Qos(prefetch_count=1), 1)
    client.expect(Basic.QosOk)
    client.consume("q", "c1")
    publish_many(client, "q", [b"m1", b"m2", b"m3"])
    assert len(deliveries(client.received())) == 1
    client.send(Basic.Qos(prefetch_count=10), 1)  # RabbitMQ: global=false is per new consumer
    assert [type(f) for _, f in client.received()] == [Basic.QosOk]


def test_global_prefetch_is_shared_by_the_channels_consumers(client):
    client.declare_queue("q1")
    client.declare_queue("q2")
    client.send(Basic.Qos(prefetch_count=3, global_=True), 1)
    client.expect(Basic.QosOk)
    client.consume("q1", "c1")
    client.consume("q2", "c2")
    publish_many(client, "q1", [b"a1", b"a2", b"a3"])
    publish_many(client, "q2", [b"b1", b"b2", b"b3"])
    got = deliveries(client.received())
    assert len(got) == 3
    client.ack(0, multiple=True)
    assert len(deliveries(client.received())) == 3


def test_no_ack_consumer_gets_everything_and_leaves_nothing_unacked(client):
    client.declare_queue("q")
    client.send(Basic.Qos(prefetch_count=1), 1)
    client.expect(Basic.QosOk)
    client.consume("q", "c1", no_ack=True)
    publish_many(client, "q", [b"1", b"2", b"3"])
    assert bodies(deliveries(client.received())) == [b"1", b"2", b"3"]
    assert queue_of(client, "q").unacked_count == 0


def test_consume_on_a_missing_queue_is_404(client):
    client.send(Basic.Consume(queue="missing", consumer_tag="c"), 1)
    close = channel_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 60, 20)


def test_reusing_a_consumer_tag_is_530(client):
    client.declare_queue("q")
    client.consume("q", "same")
    client.send(Basic.Consume(queue="q", consumer_tag="same"), 1)
    (close,) = client.expect(commands.Connection.Close)
    assert close.reply_code == 530


def test_exclusive_consumer_locks_out_others(pair):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    a.consume("q", "only", exclusive=True)
    b.send(Basic.Consume(queue="q", consumer_tag="other"), 1)
    assert channel_close(b).reply_code == 403


# ------------------------------------------------------------------ acks


def test_ack_multiple(client):
    client.declare_queue("q")
    client.consume("q", "c1")
    publish_many(client, "q", [b"1", b"2", b"3", b"4"])
    assert [d.tag for d in deliveries(client.received())] == [1, 2, 3, 4]
    client.ack(3, multiple=True)
    assert client.received() == []
    assert list(client.session.channels[1].unacked) == [4]
    assert queue_of(client, "q").unacked_count == 1
    client.ack(4)
    assert queue_of(client, "q").unacked_count == 0


def test_ack_multiple_with_tag_zero_acks_everything(client):
    client.declare_queue("q")
    client.consume("q", "c1")
    publish_many(client, "q", [b"1", b"2", b"3"])
    client.received()
    client.ack(0, multiple=True)
    assert client.received() == []
    assert queue_of(client, "q").unacked_count == 0


def test_reject_and_nack_requeue_restore_the_original_order(client):
    client.declare_queue("q")
    publish_many(client, "q", [b"m1", b"m2", b"m3", b"m4"])
    for _ in range(3):
        client.send(Basic.Get(queue="q"), 1)
    assert bodies(deliveries(client.received())) == [b"m1", b"m2", b"m3"]

    client.send(Basic.Reject(delivery_tag=2, requeue=True), 1)
    client.send(Basic.Nack(delivery_tag=1, multiple=False, requeue=True), 1)
    client.ack(3)
    assert client.received() == []

    for _ in range(3):
        client.send(Basic.Get(queue="q", no_ack=True), 1)
    got = deliveries(client.received())
    assert [(d.body, d.redelivered) for d in got] == [(b"m1", True), (b"m2", True), (b"m4", False)]


def test_nack_multiple_requeue_redelivers_to_the_consumer_in_order(client):
    client.declare_queue("q")
    client.consume("q", "c1")
    publish_many(client, "q", [b"m1", b"m2", b"m3"])
    assert [d.redelivered for d in deliveries(client.received())] == [False] * 3
    client.send(Basic.Nack(delivery_tag=3, multiple=True, requeue=True), 1)
    got = deliveries(client.received())
    assert [(d.tag, d.body, d.redelivered) for d in got] == [
        (4, b"m1", True), (5, b"m2", True), (6, b"m3", True)]


def test_reject_without_requeue_drops_the_message(client):
    client.declare_queue("q")
    client.publish(1, "", "q", b"m")
    client.send(Basic.Get(queue="q"), 1)
    client.received()
    client.send(Basic.Reject(delivery_tag=1, requeue=False), 1)
    assert queue_of(client, "q").message_count == 0
    assert queue_of(client, "q").unacked_count == 0


def test_basic_recover_requeues_unacked(client):
    client.declare_queue("q")
    client.publish(1, "", "q", b"m")
    client.send(Basic.Get(queue="q"), 1)
    client.received()
    client.send(Basic.Recover(requeue=True), 1)
    client.expect(Basic.RecoverOk)
    client.send(Basic.Get(queue="q"), 1)
    (again,) = deliveries(client.received())
    assert (again.body, again.redelivered) == (b"m", True)


@pytest.mark.parametrize("method,ids", [
    (Basic.Ack(delivery_tag=5), (60, 80)),
    (Basic.Reject(delivery_tag=5, requeue=True), (60, 90)),
    (Basic.Nack(delivery_tag=5, requeue=True), (60, 120)),
])
def test_unknown_delivery_tag_closes_the_channel_with_406(client, method, ids):
    client.send(method, 1)
    close = channel_close(client)
    assert close.reply_code == 406
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 5"
    assert (close.class_id, close.method_id) == ids
    assert client.connection.channels[1].closing


def test_acking_a_tag_twice_is_406_and_requeues_the_rest(client):
    client.declare_queue("q")
    publish_many(client, "q", [b"m1", b"m2"])
    client.send(Basic.Get(queue="q"), 1)
    client.send(Basic.Get(queue="q"), 1)
    client.received()
    client.ack(1)
    client.ack(1)
    assert channel_close(client).reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"
    queue = queue_of(client, "q")  # the closed channel's unacked message went back
    assert (queue.message_count, queue.unacked_count) == (1, 0)


def test_ack_multiple_with_an_unknown_tag_is_406(client):
    client.declare_queue("q")
    client.consume("q", "c1")
    publish_many(client, "q", [b"1", b"2"])
    client.received()
    client.ack(7, multiple=True)
    close = channel_close(client)
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 7"


# ------------------------------------------------------------------ channel and connection ends


def test_channel_close_requeues_unacked_messages(pair):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    b.consume("q", "cb")
    publish_many(a, "q", [b"m1", b"m2", b"m3"])
    assert len(deliveries(b.received())) == 3
    b.ack(2)
    b.send(commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1)
    b.expect(commands.Channel.CloseOk)
    queue = queue_of(a, "q")
    assert (queue.message_count, queue.unacked_count, queue.consumers) == (2, 0, [])
    for _ in range(2):
        a.send(Basic.Get(queue="q", no_ack=True), 1)
    assert [(d.body, d.redelivered) for d in deliveries(a.received())] == [(b"m1", True), (b"m3", True)]


def test_connection_close_requeues_to_the_remaining_consumer(pair):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    b.consume("q", "cb")
    a.publish(1, "", "q", b"m1")
    assert len(deliveries(b.received())) == 1
    a.consume("q", "ca")
    b.close()
    b.expect(commands.Connection.CloseOk)
    got = deliveries(a.received())
    assert [(d.body, d.redelivered, d.method.consumer_tag) for d in got] == [(b"m1", True, "ca")]


def test_exclusive_queue_is_deleted_when_its_connection_closes(pair):
    a, b = pair.a, pair.b
    ok = a.declare_queue("", exclusive=True)
    assert ok.queue.startswith("amq.gen-")
    a.declare_queue("mine", exclusive=True)
    a.publish(1, "", "mine", b"m")

    b.send(Queue.Declare(queue="mine", passive=True), 1)
    close = channel_close(b)
    assert close.reply_code == 405
    assert close.reply_text.startswith("RESOURCE_LOCKED - cannot obtain exclusive access to locked "
                                       "queue 'mine' in vhost '/'")
    b.send(commands.Channel.CloseOk(), 1)

    a.close()
    a.expect(commands.Connection.CloseOk)
    queues = a.broker.vhosts["/"].queues
    assert "mine" not in queues and ok.queue not in queues

    b.open_channel(1)
    b.send(Queue.Declare(queue="mine", passive=True), 1)
    assert channel_close(b).reply_code == 404


def test_exclusive_queue_is_deleted_when_the_transport_is_lost(client):
    client.declare_queue("mine", exclusive=True)
    client.consume("mine", "c")
    client.connection.lost()
    assert "mine" not in client.broker.vhosts["/"].queues


def test_auto_delete_queue_goes_when_its_last_consumer_cancels(client):
    client.declare_queue("ad", auto_delete=True)
    client.consume("ad", "c1")
    client.consume("ad", "c2")
    client.send(Basic.Cancel(consumer_tag="c1"), 1)
    (ok,) = client.expect(Basic.CancelOk)
    assert ok.consumer_tag == "c1"
    assert "ad" in client.broker.vhosts["/"].queues
    client.send(Basic.Cancel(consumer_tag="c2"), 1)
    client.expect(Basic.CancelOk)
    assert "ad" not in client.broker.vhosts["/"].queues


def test_auto_delete_queue_without_consumers_ever_stays(client):
    client.declare_queue("ad", auto_delete=True)
    client.publish(1, "", "ad", b"m")
    client.send(Basic.Get(queue="ad", no_ack=True), 1)
    client.received()
    assert "ad" in client.broker.vhosts["/"].queues


def test_auto_delete_queue_goes_when_the_consumers_channel_closes(client):
    client.declare_queue("ad", auto_delete=True)
    client.consume("ad", "c1")
    client.send(commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), 1)
    client.expect(commands.Channel.CloseOk)
    assert "ad" not in client.broker.vhosts["/"].queues


def test_queue_delete_cancels_consumers_of_clients_with_consumer_cancel_notify(pair):
    broker = pair.broker
    a, b = pair.a, pair.b
    deaf = FakeClient(broker, capabilities={})
    deaf.open_channel(1)
    a.declare_queue("q")
    b.consume("q", "cb")
    deaf.consume("q", "cdeaf")
    publish_many(a, "q", [b"m1", b"m2", b"m3", b"m4"])
    b.received()
    deaf.received()
    a.publish(1, "", "q", b"m5")  # no credit limit: both consumers have everything, m5 goes out too
    b.received()
    deaf.received()

    a.send(Queue.Delete(queue="q"), 1)
    (ok,) = a.expect(Queue.DeleteOk)
    assert ok.message_count == 0
    frames = b.methods()
    assert len(frames) == 1
    number, cancel = frames[0]
    assert number == 1 and isinstance(cancel, Basic.Cancel) and cancel.consumer_tag == "cb"
    assert deaf.received() == []
    assert b.session.channels[1].consumers == {} and deaf.session.channels[1].consumers == {}
    # acks for messages of the deleted queue are still accepted
    b.ack(0, multiple=True)
    assert b.received() == []


def test_queue_delete_reports_ready_messages(client):
    client.declare_queue("q")
    publish_many(client, "q", [b"1", b"2"])
    client.send(Queue.Delete(queue="q"), 1)
    (ok,) = client.expect(Queue.DeleteOk)
    assert ok.message_count == 2


def test_queue_delete_if_unused_refuses_while_consumed(client):
    client.declare_queue("q")
    client.consume("q", "c")
    client.send(Queue.Delete(queue="q", if_unused=True), 1)
    close = channel_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (406, 50, 40)


# ------------------------------------------------------------------ mandatory


@pytest.mark.parametrize("exchange", ["", "amq.direct"])
def test_mandatory_unroutable_message_is_returned_with_312(client, exchange):
    properties = Basic.Properties(message_id="lost", content_type="text/plain")
    client.publish(1, exchange, "nowhere", b"come back", properties, mandatory=True)
    (returned,) = deliveries(client.received())
    assert isinstance(returned.method, Basic.Return)
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert (returned.method.exchange, returned.method.routing_key) == (exchange, "nowhere")
    assert returned.body == b"come back"
    assert returned.properties == properties


def test_unroutable_message_without_mandatory_is_dropped_silently(client):
    client.publish(1, "amq.direct", "nowhere", b"m")
    assert client.received() == []


def test_mandatory_routable_message_is_not_returned(client):
    client.declare_queue("q")
    client.publish(1, "", "q", b"m", mandatory=True)
    assert client.received() == []
    assert queue_of(client, "q").message_count == 1


# ------------------------------------------------------------------ publisher confirms


def test_publishes_of_one_batch_are_confirmed_by_one_multiple_ack(client):
    client.declare_queue("q")
    client.send(commands.Confirm.Select(), 1)
    client.expect(commands.Confirm.SelectOk)
    publish_many(client, "q", [b"1", b"2", b"3"])
    (ack,) = client.expect(Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (3, True)
    client.publish(1, "", "q", b"4")
    (ack,) = client.expect(Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (4, False)
    assert queue_of(client, "q").message_count == 4


def test_confirms_on_two_channels_are_counted_separately(client):
    client.open_channel(2)
    for channel in (1, 2):
        client.send(commands.Confirm.Select(), channel)
        client.expect(commands.Confirm.SelectOk)
    client.feed(client.publish_frames(1, "", "q", b"a") + client.publish_frames(2, "", "q", b"b")
                + client.publish_frames(1, "", "q", b"c"))
    acks = {number: (frame.delivery_tag, frame.multiple) for number, frame in client.methods()}
    assert acks == {1: (2, True), 2: (1, False)}


def test_unroutable_mandatory_publish_is_returned_before_it_is_confirmed(client):
    client.send(commands.Confirm.Select(nowait=True), 1)
    assert client.received() == []
    client.publish(1, "amq.direct", "nowhere", b"m", mandatory=True)
    kinds = [type(frame) for _, frame in client.methods()]
    assert kinds == [Basic.Return, Basic.Ack]


def test_confirm_select_on_a_transactional_channel_is_406(client):
    client.send(commands.Tx.Select(), 1)
    client.expect(commands.Tx.SelectOk)
    client.send(commands.Confirm.Select(), 1)
    close = channel_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (406, 85, 10)


# ------------------------------------------------------------------ transactions


def test_tx_commit_and_rollback_of_publishes(client):
    client.declare_queue("q")
    client.send(commands.Tx.Select(), 1)
    client.expect(commands.Tx.SelectOk)
    publish_many(client, "q", [b"1", b"2"])
    assert queue_of(client, "q").message_count == 0
    client.send(commands.Tx.Commit(), 1)
    client.expect(commands.Tx.CommitOk)
    assert queue_of(client, "q").message_count == 2

    client.publish(1, "", "q", b"3")
    client.send(commands.Tx.Rollback(), 1)
    client.expect(commands.Tx.RollbackOk)
    client.send(commands.Tx.Commit(), 1)  # the rolled back publish is gone for good
    client.expect(commands.Tx.CommitOk)
    assert queue_of(client, "q").message_count == 2


def test_tx_commit_and_rollback_of_acks(client):
    client.declare_queue("q")
    publish_many(client, "q", [b"1", b"2"])
    client.send(commands.Tx.Select(), 1)
    client.expect(commands.Tx.SelectOk)
    client.send(Basic.Get(queue="q"), 1)
    client.send(Basic.Get(queue="q"), 1)
    client.received()
    queue = queue_of(client, "q")

    client.ack(1)
    client.send(commands.Tx.Rollback(), 1)
    client.expect(commands.Tx.RollbackOk)
    assert queue.unacked_count == 2  # the ack was rolled back; the message stays unacked

    client.ack(1)
    client.send(Basic.Reject(delivery_tag=2, requeue=True), 1)
    assert queue.unacked_count == 2
    client.send(commands.Tx.Commit(), 1)
    client.expect(commands.Tx.CommitOk)
    assert (queue.unacked_count, queue.message_count) == (0, 1)


def test_tx_ack_of_an_unknown_tag_fails_at_once(client):
    client.send(commands.Tx.Select(), 1)
    client.expect(commands.Tx.SelectOk)
    client.ack(9)
    close = channel_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (406, 60, 80)


@pytest.mark.parametrize("method,ids", [
    (commands.Tx.Commit(), (90, 20)),
    (commands.Tx.Rollback(), (90, 30)),
])
def test_tx_commit_or_rollback_without_select_is_406(client, method, ids):
    client.send(method, 1)
    close = channel_close(client)
    assert (close.reply_code, (close.class_id, close.method_id)) == (406, ids)


# ------------------------------------------------------------------ declare equivalence


@pytest.mark.parametrize("first,second,arg", [
    (dict(durable=False), dict(durable=True), "durable"),
    (dict(auto_delete=False), dict(auto_delete=True), "auto_delete"),
    (dict(arguments={"x-max-length": 10}), dict(arguments={"x-max-length": 20}), "x-max-length"),
    (dict(arguments={"x-message-ttl": 1000}), dict(), "x-message-ttl"),
])
def test_queue_redeclare_with_other_properties_is_406(client, first, second, arg):
    client.declare_queue("q", **first)
    client.send(Queue.Declare(queue="q", **second), 1)
    close = channel_close(client)
    assert close.reply_code == 406
    assert close.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue 'q' in vhost '/': received ")
    assert (close.class_id, close.method_id) == (50, 10)


def test_queue_redeclare_text_matches_rabbitmq(client):
    client.declare_queue("q")
    client.send(Queue.Declare(queue="q", durable=True), 1)
    assert channel_close(client).reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': "
        "received 'true' but current is 'false'")


def test_queue_redeclare_with_the_same_properties_is_fine(client):
    client.declare_queue("q", durable=True, arguments={"x-max-length": 10})
    ok = client.declare_queue("q", durable=True, arguments={"x-max-length": 10})
    assert ok.queue == "q"


def test_queue_redeclare_as_exclusive_is_405(client):
    client.declare_queue("q")
    client.send(Queue.Declare(queue="q", exclusive=True), 1)
    close = channel_close(client)
    assert close.reply_code == 405
    assert close.reply_text.startswith("RESOURCE_LOCKED - cannot obtain exclusive access to locked "
                                       "queue 'q' in vhost '/'")


@pytest.mark.parametrize("first,second,arg", [
    (dict(exchange_type="direct"), dict(exchange_type="fanout"), "type"),
    (dict(durable=False), dict(durable=True), "durable"),
    (dict(auto_delete=False), dict(auto_delete=True), "auto_delete"),
])
def test_exchange_redeclare_with_other_properties_is_406(client, first, second, arg):
    client.send(commands.Exchange.Declare(exchange="x", **first), 1)
    client.expect(commands.Exchange.DeclareOk)
    client.send(commands.Exchange.Declare(exchange="x", **{**first, **second}), 1)
    close = channel_close(client)
    assert close.reply_code == 406
    assert close.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'x' in vhost '/': received ")
    assert (close.class_id, close.method_id) == (40, 10)


def test_exchange_redeclare_type_text_matches_rabbitmq(client):
    client.send(commands.Exchange.Declare(exchange="x", exchange_type="direct"), 1)
    client.expect(commands.Exchange.DeclareOk)
    client.send(commands.Exchange.Declare(exchange="x", exchange_type="topic"), 1)
    assert channel_close(client).reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': "
        "received 'topic' but current is 'direct'")


def test_channel_error_leaves_other_channels_and_connections_alone(pair):
    a, b = pair.a, pair.b
    a.open_channel(2)
    a.declare_queue("q")
    a.send(Queue.Declare(queue="q", durable=True), 1)
    assert channel_close(a).reply_code == 406
    a.publish(2, "", "q", b"m")
    b.send(Basic.Get(queue="q", no_ack=True), 1)
    assert bodies(deliveries(b.received())) == [b"m"]
    assert a.connection.channels[2].closing is False


# ------------------------------------------------------------------ internal errors


def test_internal_error_closes_only_that_connection_with_541(pair, monkeypatch, caplog):
    a, b = pair.a, pair.b
    a.declare_queue("q")
    b.declare_queue("b-exclusive", exclusive=True)
    b.consume("q", "cb")
    publish_many(a, "q", [b"m1", b"m2"])
    assert len(deliveries(b.received())) == 2

    real_declare = methods_module.HANDLERS[Queue.Declare]

    def buggy_declare(session, channel, method):
        if session is b.session:
            raise RuntimeError("a bug in queue.declare")
        return real_declare(session, channel, method)

    monkeypatch.setitem(methods_module.HANDLERS, Queue.Declare, buggy_declare)
    b.send(Queue.Declare(queue="other"), 1)
    frames = b.received()
    assert len(frames) == 1
    number, close = frames[0]
    assert number == 0 and isinstance(close, commands.Connection.Close)
    assert close.reply_code == 541
    assert close.reply_text.startswith("INTERNAL_ERROR")
    assert "a bug in queue.declare" in caplog.text  # logged with its traceback

    # b's channels are gone: its unacked messages are back in the queue
    queue = queue_of(a, "q")
    assert (queue.message_count, queue.unacked_count, queue.consumers) == (2, 0, [])
    b.send(commands.Connection.CloseOk(), 0)
    assert b.closed
    assert "b-exclusive" not in a.broker.vhosts["/"].queues
    assert b.session not in a.broker.sessions

    # the other session (same handler, same broker) carries on
    a.declare_queue("still-works")
    a.send(Basic.Get(queue="q"), 1)
    (again,) = deliveries(a.received())
    assert (again.body, again.redelivered) == (b"m1", True)
    assert bodies(deliveries(a.consume("q", "ca"))) == [b"m2"]
    assert not a.closed


def test_internal_error_while_publishing_is_541(client, monkeypatch):
    client.declare_queue("q")

    def broken_route(*args, **kwargs):
        raise KeyError("routing bug")

    monkeypatch.setattr(client.session.vhost, "route", broken_route)
    client.publish(1, "", "q", b"m")
    (close,) = client.expect(commands.Connection.Close)
    assert close.reply_code == 541


# ------------------------------------------------------------------ memory alarm


def test_the_memory_alarm_blocks_and_unblocks_publishers_that_understand_it():
    broker = Broker()
    publisher = FakeClient(broker, capabilities={"connection.blocked": True})
    publisher.open_channel(1)
    consumer = FakeClient(broker, capabilities={"connection.blocked": True})
    old_client = FakeClient(broker, capabilities={})  # no capability: never told
    old_client.open_channel(1)
    publisher.publish(1, "", "nowhere", b"x")
    old_client.publish(1, "", "nowhere", b"x")
    broker.set_memory_alarm(True)
    (blocked,) = publisher.expect(commands.Connection.Blocked)
    assert blocked.reason == "low on memory"
    consumer.expect()  # it never published
    old_client.expect()
    broker.set_memory_alarm(False)
    publisher.expect(commands.Connection.Unblocked)
    broker.set_memory_alarm(True)
    late = FakeClient(broker, capabilities={"connection.blocked": True})
    late.open_channel(1)
    late.publish(1, "", "nowhere", b"x")  # its first publish while the alarm is on
    late.expect(commands.Connection.Blocked)
