"""A stateful model of where every message must be, checked against the sans-IO broker with a
real RocksDB store (hypothesis ``RuleBasedStateMachine``).

One client connection to a broker whose journal writes to a :class:`RocksStore` through the
real :class:`StoreWriter` (``flush`` after each batch, as ``run_pending`` calls it). The writer's
two tasks are stood in for synchronously: page reads are served after each batch as
``StoreWriter.run_pages`` serves them (same calls), and a restart flushes and syncs what is
pending, as ``StoreWriter.drain`` does. The queues page out beyond a small window (3 messages),
so paging and page reads are part of every run. The writer is built inside ``anyio.run`` (its
events need an async backend); nothing else needs an event loop. A "crash" restart closes the
store without closing the connection first: every batch was already written (unsynced), as a
killed process leaves it; a power loss (unsynced writes lost) is not modelled here.

Queues: ``dur-a`` (durable, dead-letters to ``dead``), ``dur-b`` (durable), ``tra`` (transient,
dead-letters to ``dead``) and ``dead`` (durable). Rules: publish (persistent or not), basic.get
(ack or no-ack, on channel 1 or 2), basic.consume with a prefetch (channel 2), cancel, ack (one or
multiple), nack and reject with and without requeue, purge, delete, redeclare, close a channel
(its unacked messages are requeued), restart (clean or crash) and drain.

The model says for every published message where it is: ready in its queue (in arrival order),
unacked on a channel, or gone (acked, consumed without ack, purged, dropped with a deleted queue,
dead-lettered into ``dead``, dropped at a restart because it was transient or its queue was). It
checks, after every step: every delivery and get-ok is the head of its queue's ready messages
with the right redelivered flag (so ordering and no duplicates), the broker's ready and unacked
counts per queue equal the model's, a consumer with credit leaves nothing ready (nothing stuck),
and drain hands out exactly the model's ready messages in order.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import anyio
from hypothesis import HealthCheck, Phase, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)
from pamqp import body as pamqp_body, commands, header as pamqp_header

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.recovery import restore
from amqpbroker.protocol.connection import State
from amqpbroker.server.persistence import StoreWriter
from amqpbroker.store.rocks import RocksStore

from tests.helpers import FakeClient

Basic = commands.Basic

PAGING_WINDOW = (3, 0)  # messages in memory per queue before the rest pages out; bytes: no limit
QUEUES = {  # name -> (durable, arguments)
    "dur-a": (True, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}),
    "dur-b": (True, {}),
    "tra": (False, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}),
    "dead": (True, {}),
}
GET_CHANNELS = (1, 2)
# each queue's consumer on a channel of its own: delivery tags then follow each queue's order,
# whatever order the broker dispatches the queues in (which would make examples irreproducible)
CONSUMER_CHANNELS = {name: 11 + index for index, name in enumerate(sorted(QUEUES))}
CHANNELS = (*GET_CHANNELS, *CONSUMER_CHANNELS.values())
PERSISTENT = Basic.Properties(delivery_mode=2)
TRANSIENT = Basic.Properties(delivery_mode=1)

queue_names = st.sampled_from(sorted(QUEUES))


# ====================================================================== the model


@dataclass(eq=False)
class Msg:
    body: bytes
    seq: int  # arrival order (a dead-lettered copy arrives anew)
    persistent: bool
    redelivered: bool = False  # what the next delivery must say
    delivered: bool = False  # handed out at least once (a restart brings it back redelivered)


@dataclass(eq=False)
class QueueModel:
    name: str
    durable: bool
    dead_letters: bool
    ready: list[Msg] = field(default_factory=list)
    deleted: bool = False

    def put_back(self, msg: Msg) -> None:
        self.ready.append(msg)
        self.ready.sort(key=lambda m: m.seq)


@dataclass(eq=False)
class ConsumerModel:
    queue: QueueModel
    no_ack: bool
    prefetch: int
    unacked: int = 0

    def has_credit(self) -> bool:
        return self.no_ack or not self.prefetch or self.unacked < self.prefetch


@dataclass(eq=False)
class Unacked:
    queue: QueueModel
    msg: Msg
    consumer: ConsumerModel | None


class StoreDriver:
    """The broker, its RocksDB store and store writer; rebuilt from the store on restart."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.broker: Broker
        self.store: RocksStore
        self.writer: StoreWriter
        self.open()

    def open(self) -> None:
        self.broker = Broker(paging_window=PAGING_WINDOW)
        self.store = RocksStore(self.path)
        restore(self.broker, self.store)
        self.broker.journal.enabled = True

        async def build() -> StoreWriter:  # anyio events need a running backend to be made
            return StoreWriter(self.store, self.broker)

        self.writer = anyio.run(build)

    def serve_pages(self) -> None:
        """What ``StoreWriter.run_pages`` does, on the spot: read each page a queue asked for."""
        requests = self.broker.journal.page_requests
        while requests:
            queue = requests.pop(0)
            wanted = queue.page_wanted()
            if wanted is None:
                continue
            epoch, durable, page_id, from_seq, count, max_bytes = wanted
            queue.paged_in(epoch, self.store.read_page(durable, page_id, from_seq, count, max_bytes))
            self.broker.run_pending()

    def close(self, *, clean: bool) -> None:
        """Stop: flush and sync what the journal holds (``StoreWriter.drain`` without its
        confirms; a crash flushed every batch already, unsynced), then close the store."""
        if clean:
            self.writer.flush()
            self.store.sync()
        self.store.close()


class BrokerModel(RuleBasedStateMachine):
    """Rules drive one client; the model follows every frame the broker sends back."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="amqpbroker-model-")
        self.driver: StoreDriver | None = None
        self.queues: dict[str, QueueModel] = {}
        self.unacked: dict[tuple[int, int], Unacked] = {}
        self.consumers: dict[str, ConsumerModel] = {}  # consumer tag -> consumer
        self.prefetch: dict[int, int] = {}  # each consumer channel's basic.qos, for its next consumer
        self.counter = 0
        self.published = 0
        self.gone: dict[str, int] = {}  # how messages left the broker, by reason (for notes)

    # ------------------------------------------------------------ plumbing

    @property
    def broker(self) -> Broker:
        return self.driver.broker

    def connect(self) -> None:
        self.client = FakeClient(self.broker)
        for number in CHANNELS:
            self.client.open_channel(number)

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """Send bytes; serve page reads; follow deliveries; return the other frames."""
        self.client.feed(data)
        return self.absorb()

    def send(self, method: Any, channel: int) -> list[tuple[int, Any]]:
        self.client.send(method, channel)
        return self.absorb()

    def absorb(self) -> list[tuple[int, Any]]:
        self.driver.serve_pages()
        frames = self.client.received()
        self.client.session.output_drained()
        others = []
        index = 0
        while index < len(frames):
            channel, frame = frames[index]
            index += 1
            if isinstance(frame, (Basic.Deliver, Basic.GetOk)):
                header = frames[index][1]
                assert isinstance(header, pamqp_header.ContentHeader), frames
                index += 1
                body = b""
                while len(body) < header.body_size:
                    chunk = frames[index][1]
                    assert isinstance(chunk, pamqp_body.ContentBody), frames
                    body += chunk.value
                    index += 1
                if isinstance(frame, Basic.Deliver):
                    self.delivered(channel, frame, body)
                else:
                    others.append((channel, (frame, body)))
            elif isinstance(frame, Basic.Cancel):  # its queue was deleted
                consumer = self.consumers.pop(frame.consumer_tag)
                assert channel == CONSUMER_CHANNELS[consumer.queue.name], frame
                assert consumer.queue.deleted, frame
            else:
                assert not isinstance(frame, (commands.Channel.Close, commands.Connection.Close)), (
                    f"the broker closed: {frame.reply_code} {frame.reply_text}")
                others.append((channel, frame))
        return others

    def take_head(self, queue: QueueModel, body: bytes, redelivered: bool, what: str) -> Msg:
        """The message handed out must be the head of the queue's ready messages."""
        assert queue.ready, f"{what} of {body!r} from {queue.name}, which the model has empty"
        head = queue.ready.pop(0)
        assert head.body == body, (f"{what} from {queue.name}: got {body!r}, expected the head "
                                   f"{head.body!r} (ready: {[m.body for m in [head, *queue.ready]]})")
        assert redelivered == head.redelivered, f"{what} of {body!r}: redelivered={redelivered}"
        head.delivered = True
        return head

    def delivered(self, channel: int, deliver: Any, body: bytes) -> None:
        consumer = self.consumers.get(deliver.consumer_tag)
        assert consumer is not None and channel == CONSUMER_CHANNELS[consumer.queue.name], deliver
        assert consumer.has_credit(), f"delivery to {deliver.consumer_tag} beyond its prefetch"
        msg = self.take_head(consumer.queue, body, deliver.redelivered, "basic.deliver")
        if consumer.no_ack:
            self.gone["consumed"] = self.gone.get("consumed", 0) + 1
        else:
            consumer.unacked += 1
            self.unacked[(channel, deliver.delivery_tag)] = Unacked(consumer.queue, msg, consumer)

    def drop(self, reason: str, count: int = 1) -> None:
        self.gone[reason] = self.gone.get(reason, 0) + count

    def new_queue(self, name: str) -> QueueModel:
        durable, arguments = QUEUES[name]
        queue = QueueModel(name, durable, "x-dead-letter-exchange" in arguments)
        self.queues[name] = queue
        return queue

    def declare(self, name: str) -> Any:
        durable, arguments = QUEUES[name]
        (reply,) = self.send(commands.Queue.Declare(queue=name, durable=durable, arguments=arguments), 1)
        return reply[1]

    def settle(self, taken: list[Unacked], *, requeue: bool, rejected: bool) -> None:
        """The broker's ``Channel.settle`` as the model sees it."""
        for item in taken:
            if item.consumer is not None:
                item.consumer.unacked -= 1
            queue, msg = item.queue, item.msg
            if requeue:
                if queue.deleted:
                    self.drop("requeued to a deleted queue")
                else:
                    msg.redelivered = True
                    queue.put_back(msg)
            elif rejected and queue.dead_letters:
                self.dead_letter(msg)
            else:
                self.drop("acked" if not rejected else "rejected")

    def dead_letter(self, msg: Msg) -> None:
        dead = self.queues.get("dead")
        if dead is None:
            self.drop("dead-lettered to a missing queue")
            return
        self.counter += 1
        dead.ready.append(Msg(msg.body, self.counter, msg.persistent))

    # ------------------------------------------------------------ rules

    @initialize()
    def start(self) -> None:
        self.driver = StoreDriver(self.directory)
        self.connect()
        for name in QUEUES:
            ok = self.declare(name)
            assert ok.message_count == 0
            self.new_queue(name)

    @rule(queue=queue_names, count=st.integers(1, 4))
    def publish_persistent(self, queue: str, count: int) -> None:
        self.publish(queue, True, count)

    @rule(queue=queue_names, count=st.integers(1, 4))
    def publish_transient(self, queue: str, count: int) -> None:
        self.publish(queue, False, count)

    def publish(self, queue: str, persistent: bool, count: int) -> None:
        """``count`` messages in one batch, to the default exchange (dropped if the queue is
        gone)."""
        data = b""
        for _ in range(count):
            self.published += 1
            body = f"m{self.published}".encode()
            data += self.client.publish_frames(1, "", queue, body, PERSISTENT if persistent else TRANSIENT)
            target = self.queues.get(queue)
            if target is None:
                self.drop("unroutable")
            else:
                self.counter += 1
                target.ready.append(Msg(body, self.counter, persistent))
        assert self.feed(data) == []

    @rule(queue=queue_names, channel=st.sampled_from(GET_CHANNELS), no_ack=st.sampled_from([False, False, True]))
    def get(self, queue: str, channel: int, no_ack: bool) -> None:
        if queue not in self.queues:
            return
        model = self.queues[queue]
        (reply,) = self.send(Basic.Get(queue=queue, no_ack=no_ack), channel)
        if isinstance(reply[1], commands.Basic.GetEmpty):
            assert not model.ready, f"get-empty from {queue}, the model has {[m.body for m in model.ready]}"
            return
        get_ok, body = reply[1]
        msg = self.take_head(model, body, get_ok.redelivered, "basic.get")
        assert get_ok.message_count == len(model.ready), (get_ok.message_count, len(model.ready))
        if no_ack:
            self.drop("consumed")
        else:
            self.unacked[(channel, get_ok.delivery_tag)] = Unacked(model, msg, None)

    @rule(queue=queue_names, prefetch=st.integers(0, 3), no_ack=st.booleans())
    def consume(self, queue: str, prefetch: int, no_ack: bool) -> None:
        tag = f"c-{queue}"
        if queue not in self.queues or tag in self.consumers:
            return
        channel = CONSUMER_CHANNELS[queue]
        if prefetch != self.prefetch.get(channel, 0):
            assert [type(f) for _, f in self.send(Basic.Qos(prefetch_count=prefetch), channel)] == [Basic.QosOk]
            self.prefetch[channel] = prefetch
        self.consumers[tag] = ConsumerModel(self.queues[queue], no_ack, prefetch)
        replies = self.send(Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack), channel)
        assert [type(f) for _, f in replies] == [Basic.ConsumeOk], replies

    @precondition(lambda self: self.consumers)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(sorted(self.consumers)))
        replies = self.send(Basic.Cancel(consumer_tag=tag), CONSUMER_CHANNELS[self.consumers[tag].queue.name])
        assert [type(f) for _, f in replies] == [Basic.CancelOk], replies
        del self.consumers[tag]  # its unacked deliveries stay unacked on the channel

    def _pick(self, data: st.DataObject) -> tuple[int, int]:
        return data.draw(st.sampled_from(sorted(self.unacked)), label="delivery")

    def _take(self, channel: int, tag: int, multiple: bool) -> list[Unacked]:
        keys = sorted(key for key in self.unacked if key[0] == channel and (key[1] <= tag if multiple else key[1] == tag))
        return [self.unacked.pop(key) for key in keys]

    @precondition(lambda self: self.unacked)
    @rule(data=st.data(), multiple=st.booleans())
    def ack(self, data: st.DataObject, multiple: bool) -> None:
        channel, tag = self._pick(data)
        taken = self._take(channel, tag, multiple)
        self.client.send(Basic.Ack(delivery_tag=tag, multiple=multiple), channel)
        # acks are settled before the batch's dispatch: the model first, then what followed
        self.settle(taken, requeue=False, rejected=False)
        assert self.absorb() == []

    @precondition(lambda self: self.unacked)
    @rule(data=st.data(), multiple=st.booleans(), requeue=st.booleans())
    def nack(self, data: st.DataObject, multiple: bool, requeue: bool) -> None:
        channel, tag = self._pick(data)
        taken = self._take(channel, tag, multiple)
        self.client.send(Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=requeue), channel)
        self.settle(taken, requeue=requeue, rejected=True)
        assert self.absorb() == []

    @precondition(lambda self: self.unacked)
    @rule(data=st.data(), requeue=st.booleans())
    def reject(self, data: st.DataObject, requeue: bool) -> None:
        channel, tag = self._pick(data)
        taken = self._take(channel, tag, False)
        self.client.send(Basic.Reject(delivery_tag=tag, requeue=requeue), channel)
        self.settle(taken, requeue=requeue, rejected=True)
        assert self.absorb() == []

    @rule(data=st.data(), kind=st.sampled_from(
        ["redeclare", "redeclare", "purge", "delete", "close", "close", "drain", "restart", "restart"]))
    def disrupt(self, data: st.DataObject, kind: str) -> None:
        """The rarer operations, one rule between them (so the common ones fill most steps):
        redeclare, purge, delete, close a channel, drain a queue, restart."""
        if kind == "close":
            self.close_channel(data.draw(st.sampled_from(CHANNELS), label="channel"))
        elif kind == "restart":
            self.restart(data.draw(st.booleans(), label="clean"))
        else:
            getattr(self, kind)(data.draw(queue_names, label="queue"))

    def purge(self, queue: str) -> None:
        if queue not in self.queues:
            return
        model = self.queues[queue]
        (reply,) = self.send(commands.Queue.Purge(queue=queue), 1)
        assert reply[1].message_count == len(model.ready), (reply[1].message_count, len(model.ready))
        self.drop("purged", len(model.ready))
        model.ready.clear()

    def delete(self, queue: str) -> None:
        if queue not in self.queues:
            return
        model = self.queues.pop(queue)
        model.deleted = True
        self.client.send(commands.Queue.Delete(queue=queue), 1)
        replies = self.absorb()  # consumers of it are cancelled (basic.cancel) in there
        assert [type(f) for _, f in replies] == [commands.Queue.DeleteOk], replies
        assert replies[0][1].message_count == len(model.ready)
        self.drop("deleted with its queue", len(model.ready))
        model.ready.clear()
        assert not any(consumer.queue is model for consumer in self.consumers.values())

    def redeclare(self, queue: str) -> None:
        """Declare again: the same queue (its count checked), or a new one if it was deleted."""
        ok = self.declare(queue)
        model = self.queues.get(queue) or self.new_queue(queue)
        assert ok.message_count == len(model.ready), (ok.message_count, len(model.ready))

    def close_channel(self, channel: int) -> None:
        """Close a channel: its consumers go, its unacked messages are requeued; open it again."""
        taken = self._take(channel, 1 << 62, True)
        self.client.send(commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), channel)
        for tag, consumer in list(self.consumers.items()):
            if CONSUMER_CHANNELS[consumer.queue.name] == channel:
                del self.consumers[tag]
        self.prefetch.pop(channel, None)
        for item in taken:  # a closed channel's consumers no longer hold credit
            item.consumer = None
        self.settle(taken, requeue=True, rejected=False)
        replies = self.absorb()
        assert [type(f) for _, f in replies] == [commands.Channel.CloseOk], replies
        self.client.open_channel(channel)

    def restart(self, clean: bool) -> None:
        """Stop the broker (closing the connection first, or as a crash) and start it again
        from the store: only persistent messages in durable queues come back, in order, marked
        redelivered if they had been handed out; transient queues are gone."""
        if clean:
            self.client.close()
            assert self.client.closed
        self.driver.close(clean=clean)
        pending, self.unacked = list(self.unacked.values()), {}
        self.consumers.clear()
        self.prefetch.clear()
        for item in pending:  # unacked messages are still in the store: back to their queues
            if item.queue.deleted:
                self.drop("requeued to a deleted queue")
            else:
                item.queue.put_back(item.msg)
        survivors: dict[str, QueueModel] = {}
        for name, model in self.queues.items():
            if not model.durable:
                self.drop("transient queue at restart", len(model.ready))
                model.deleted = True
                continue
            kept = [msg for msg in model.ready if msg.persistent]
            self.drop("transient message at restart", len(model.ready) - len(kept))
            for msg in kept:
                msg.redelivered = msg.delivered
            model.ready = kept
            survivors[name] = model
        self.queues = survivors
        self.driver.open()
        self.connect()

    def drain(self, queue: str) -> None:
        """basic.get with no-ack until empty: exactly the model's ready messages, in order."""
        if queue not in self.queues:
            return
        model = self.queues[queue]
        expected = [(msg.body, msg.redelivered) for msg in model.ready]
        got = []
        while True:
            (reply,) = self.send(Basic.Get(queue=queue, no_ack=True), 1)
            if isinstance(reply[1], commands.Basic.GetEmpty):
                break
            get_ok, body = reply[1]
            got.append((body, get_ok.redelivered))
            assert len(got) <= len(expected) + 1, (got, expected)
        assert got == expected, f"drained {queue}: {got} expected {expected}"
        self.drop("consumed", len(model.ready))
        model.ready.clear()

    # ------------------------------------------------------------ invariants

    @invariant()
    def counts_agree(self) -> None:
        if self.driver is None:
            return
        vhost = self.broker.vhosts["/"]
        assert sorted(vhost.queues) == sorted(self.queues), (sorted(vhost.queues), sorted(self.queues))
        for name, model in self.queues.items():
            queue = vhost.queues[name]
            held = sum(1 for item in self.unacked.values() if item.queue is model)
            assert (queue.message_count, queue.unacked_count) == (len(model.ready), held), (
                f"{name}: broker ready/unacked {queue.message_count}/{queue.unacked_count}, "
                f"model {len(model.ready)}/{held}")

    @invariant()
    def nothing_stuck(self) -> None:
        """A consumer with credit leaves nothing ready in its queue."""
        for tag, consumer in self.consumers.items():
            if consumer.has_credit():
                assert not consumer.queue.ready, (
                    f"{tag} has credit but {consumer.queue.name} holds {[m.body for m in consumer.queue.ready]}")

    @invariant()
    def connection_open(self) -> None:
        if self.driver is not None:
            assert self.client.connection.state is State.OPEN

    def teardown(self) -> None:
        if self.driver is not None:
            try:
                self.driver.close(clean=False)
            except Exception:  # noqa: BLE001 - already closed by a failed step
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


MODEL_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: it traces, slowly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_broker_against_the_model() -> None:
    run_state_machine_as_test(BrokerModel, settings=MODEL_SETTINGS)

