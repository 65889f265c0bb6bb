"""A session: one client connection's view of the broker.

It is the connection machine's handler: it logs the client in, opens its virtual host, and
turns each channel method into vhost operations and replies. Methods are dispatched through one
table keyed by method class (``_HANDLERS``). Errors are raised as
:class:`~amqpbroker.errors.ChannelError` / :class:`~amqpbroker.errors.ConnectionError`; the
connection machine alone turns them into close frames.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pamqp import commands

from amqpbroker.broker.arguments import MAX_EXPIRY
from amqpbroker.broker.channel import Channel
from amqpbroker.broker.consumer import Consumer
from amqpbroker.broker.flow import PublisherFlow
from amqpbroker.broker.message import Message
from amqpbroker.broker.queue import Queue
from amqpbroker.codec.methods import Ack, Publish, encode_method, method_frame
from amqpbroker.codec.writer import append_content, return_payload
from amqpbroker.errors import (
    ChannelError, ConnectionError, ReplyCode, access_refused, log_internal_error, not_found, precondition_failed,
)
from amqpbroker.protocol.connection import Connection

from amqpbroker.broker.vhost import REPLY_TO

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker
    from amqpbroker.broker.vhost import VirtualHost

__all__ = ["Session"]

log = logging.getLogger("amqpbroker.session")

_COMMIT_NOT_DURABLE = "the message store failed: the committed persistent messages cannot be made durable"
OUTPUT_PAUSE_BYTES = 8 << 20  # unsent get-ok/return bytes at which a client's input is held back
_USER_ID_FLAG = 0x10  # user_id's bit in the low byte of the first property-flags word
_EXPIRATION_FLAG = 0x01  # expiration's bit in the high byte
_REPLY_TO_FLAG = 0x02  # reply_to's bit in the high byte


def message_ttl(expiration: str | None) -> float | None:
    """A message's own TTL in seconds, from its ``expiration`` property (milliseconds as a
    decimal string); anything else is refused as RabbitMQ does."""
    if expiration is None:
        return None
    if not expiration.isdigit() or int(expiration) > MAX_EXPIRY:
        raise precondition_failed(f"invalid expiration '{expiration}': {{error,invalid_expiration}}")
    return int(expiration) / 1000


@contextlib.contextmanager
def _released(what: str) -> Iterator[None]:
    """Release one thing a closing channel or connection held; a failure is logged and the
    release of the rest goes on."""
    try:
        yield
    except Exception as exc:
        log_internal_error(log, f"releasing {what}", exc)


def _consumer_tag() -> str:
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class Session:
    """Everything one client connection does to the broker."""

    def __init__(self, broker: Broker, *, peer: str = "", from_loopback: bool = True) -> None:
        self.broker = broker
        self.peer = peer
        self.name = peer  # what operators see it as ("client -> server" address pairs)
        self.connected_at = time.time()
        self.from_loopback = from_loopback
        limits = broker.limits
        self.connection = Connection(self, channel_max=limits.channel_max, frame_max=limits.frame_max,
                                     heartbeat=limits.heartbeat, max_message_size=limits.max_message_size)
        self.out = self.connection.out
        self.channels: dict[int, Channel] = {}
        self.vhost: VirtualHost | None = None
        self.user = ""
        self.confirming: list[Channel] = []
        self.output_marked = False
        self.output_saturated = False
        self.out_bytes = 0  # message bytes in ``out`` since the transport last took it
        self.paused_for_output = False  # input held back until the client reads its answers
        self.wake: Callable[[], None] = lambda: None
        self.on_resume: Callable[[], None] = lambda: None  # the transport reads again
        self.exclusive_queues: list[Queue] = []
        self.published = False  # it publishes: the memory alarm blocks it
        self.blocked = False  # connection.blocked was sent
        self.flow = PublisherFlow()  # how much of its input each turn of the loop takes
        self._held_notifications: list[tuple[Channel, Any]] | None = None

    # ------------------------------------------------------------ ConnectionHandler

    def login(self, mechanism: str, response: bytes) -> str:
        user = self.broker.users.authenticate(mechanism, response, from_loopback=self.from_loopback)
        self.user = user.name
        return user.name

    def open_vhost(self, name: str) -> None:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"vhost {name} not found", 10, 40)
        user = self.broker.users.users[self.user]
        if name not in user.vhosts:
            raise ConnectionError(ReplyCode.NOT_ALLOWED,
                                  f"access to vhost '{name}' refused for user '{self.user}'", 10, 40)
        limits = self.broker.limits
        if limits.connection_max and len(self.broker.sessions) >= limits.connection_max:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"connection refused: node connection limit "
                                  f"({limits.connection_max}) is reached", 10, 40)
        if limits.connection_max_per_user and sum(
                session.user == self.user for session in self.broker.sessions) >= limits.connection_max_per_user:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"Connection refused for user '{self.user}'. User "
                                  f"connection limit ({limits.connection_max_per_user}) is reached", 10, 40)
        self.vhost = vhost
        self.broker.sessions.add(self)
        self.broker.totals.connections_opened += 1

    def channel_opened(self, number: int) -> None:
        self.channels[number] = Channel(self, number)
        self.broker.totals.channels_opened += 1

    def channel_closed(self, number: int) -> None:
        """Release what the channel held: its consumers are cancelled and its unacked deliveries
        requeued. Each step runs even if one before it failed (a bug of ours must not leave
        consumers on their queues or deliveries stuck unacked for ever)."""
        channel = self.channels.pop(number, None)
        if channel is None:
            return
        try:
            for consumer in list(channel.consumers.values()):
                with _released(f"consumer {consumer.tag!r}"):
                    self._remove_consumer(channel, consumer)
            with _released(f"channel {number}'s unacked deliveries"):
                channel.requeue_all()
        finally:
            self.broker.totals.add_closed_channel(channel)
            if channel in self.confirming:
                self.confirming.remove(channel)

    def connection_closed(self) -> None:
        """Release everything: channels, then exclusive queues, then the session itself."""
        try:
            for number in list(self.channels):
                with _released(f"channel {number}"):
                    self.channel_closed(number)
            for queue in self.exclusive_queues:
                if not queue.deleted and self.vhost is not None:
                    with _released(f"exclusive queue {queue.name!r}"):
                        self.vhost.delete_queue(queue.name, if_unused=False, if_empty=False, owner=self)
            self.exclusive_queues.clear()
        finally:
            self.flow.release()
            self.broker.sessions.discard(self)

    def on_method(self, number: int, method: Any) -> None:
        handler = _HANDLERS.get(type(method))
        if handler is None:
            raise ConnectionError(ReplyCode.COMMAND_INVALID,
                                  f"unexpected method {type(method).__name__} from a client")
        handler(self, self.channels[number], method)

    def on_publish(self, number: int, publish: Publish, header: bytes, body: bytes) -> None:
        if not self.published:  # a publisher from now on: the memory alarm applies to it
            self.published = True
            if self.broker.alarms:
                self.block()
        channel = self.channels[number]
        channel.published += 1
        vhost = self.vhost
        exchange = vhost.exchanges.get(publish.exchange)
        if exchange is None:
            raise not_found(f"no exchange '{publish.exchange}' in vhost '{vhost.name}'")
        if publish.immediate:
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "immediate=true", 60, 40)
        if exchange.internal:
            raise access_refused(f"cannot publish to internal exchange '{publish.exchange}' "
                                 f"in vhost '{vhost.name}'")
        message = Message(publish.exchange, publish.routing_key, publish.routing_raw, header, body)
        if header[12] & (_EXPIRATION_FLAG | _REPLY_TO_FLAG):  # one test on the usual path
            self._special_properties(channel, message)
        if header[13] & _USER_ID_FLAG:
            user_id = message.properties.user_id
            if user_id is not None and user_id != self.user:
                raise precondition_failed(f"user_id property set to '{user_id}' but authenticated "
                                          f"user was '{self.user}'")
        if channel.tx is not None:
            channel.tx.append((exchange, message, publish.mandatory))
            return
        self._route(channel, exchange, message, publish.mandatory)

    def _special_properties(self, channel: Channel, message: Message) -> None:
        """A per-message TTL (``expiration``), or direct reply-to in ``reply_to``."""
        header = message.header
        if header[12] & _EXPIRATION_FLAG:
            message.ttl = message_ttl(message.properties.expiration)
            message.arrived = self.vhost.clock()
        if header[12] & _REPLY_TO_FLAG and message.properties.reply_to == REPLY_TO:
            if channel.reply_queue is None:
                raise precondition_failed("fast reply consumer does not exist")
            message.set_reply_to(channel.reply_queue.name)

    def _route(self, channel: Channel, exchange: Any, message: Message, mandatory: bool) -> None:
        if exchange.delayed and self.vhost.delay(exchange, message):
            if channel.confirm:  # held, to be routed later: confirmed now (once stored, if it is)
                channel.confirm_published(message)
            return
        queues = self.vhost.route(exchange, message.routing_key, message)
        refused = False
        for queue in queues:
            # a durable queue journals a persistent message (durable set); a full one may refuse
            if not queue.enqueue(message):
                refused = True
            if queue.flow_on:
                self.flow.published_into(queue)
        if not queues:
            self.broker.totals.count_unroutable(returned=mandatory)
        if not queues and mandatory:
            out = self.out
            out.append(method_frame(channel.number,
                                    return_payload(ReplyCode.NO_ROUTE, "NO_ROUTE", message.routing_raw)))
            append_content(out, channel.number, message.header, message.body, channel.frame_max)
            self.out_bytes += len(message.body)
            self._bound_output()
        if channel.confirm:
            channel.confirm_published(message, refused)

    # ------------------------------------------------------------ batches and output

    def mark_output(self) -> None:
        if not self.output_marked:
            self.output_marked = True
            self.broker.output_pending.append(self)

    def end_of_batch(self) -> None:
        """After a batch of input: the broker dispatches, journals and sends confirms once."""
        self.broker.run_pending()

    def flush_confirms(self) -> None:
        if self.confirming:
            for channel in self.confirming:
                channel.flush_confirms()
            self.confirming.clear()

    def output_drained(self) -> None:
        """The transport sent everything: consumers held back for output may go on, and so does
        input held back because the client was not reading its answers."""
        if self.paused_for_output:
            self.paused_for_output = False
            self._resume()
        if self.output_saturated:
            self.output_saturated = False
            for channel in self.channels.values():
                for consumer in channel.consumers.values():
                    consumer.queue.consumer_ready()
            self.broker.run_pending()

    def block(self) -> None:
        """Its reads stop for a resource alarm: ``connection.blocked`` if the client understands,
        with the alarm's reason."""
        if not self.blocked and self.connection.client_capability("connection.blocked"):
            broker = self.broker
            reason = "low on memory" if broker.memory_alarm else (
                "low on disk" if broker.disk_alarm else "the message store failed")
            self.out.append(encode_method(0, commands.Connection.Blocked(reason=reason)))
            self.blocked = True

    def unblock(self) -> None:
        if self.blocked:
            self.out.append(encode_method(0, commands.Connection.Unblocked()))
            self.blocked = False

    def close(self, reply_code: int, text: str) -> None:
        self.connection.close(reply_code, text)
        self.mark_output()

    # ------------------------------------------------------------ helpers

    def _spec_qos_semantics(self) -> bool:
        """Does this client mean the spec's ``basic.qos`` (``global=false``: one limit shared by
        the channel) rather than RabbitMQ's (``global=false``: per consumer, later consumers only)?

        kombu (py-amqp) decides from the server's product name: for any product but "RabbitMQ"
        3.3-3.x it assumes the spec's meaning, so Celery sends ``global=false`` where it sends
        ``global=true`` to RabbitMQ, and raises the limit at run time for ETA tasks. We give
        py-amqp clients the meaning they assume, which is what Celery gets from RabbitMQ 3.x;
        every other client gets RabbitMQ's meaning.
        """
        return self.connection.client_properties.get("product") == "py-amqp"

    def _queue_name(self, channel: Channel, name: str) -> str:
        if name:
            return name
        if not channel.last_queue:
            raise not_found("no previously declared queue")
        return channel.last_queue

    def _remove_consumer(self, channel: Channel, consumer: Consumer) -> None:
        channel.consumers.pop(consumer.tag, None)
        queue = consumer.queue
        queue.remove_consumer(consumer)
        if queue is channel.reply_queue:
            self.vhost.drop_reply_queue(queue)
            channel.reply_queue = None
        elif queue.auto_delete and not queue.consumers and not queue.deleted:
            self.vhost.delete_queue(queue.name, if_unused=False, if_empty=False,
                                    owner=queue.exclusive_owner)

    def cancel_by_broker(self, consumer: Consumer) -> None:
        """The consumer's queue is gone: forget it and tell the client if it understands (after
        the reply to the method that deleted the queue, when this session sent it: RabbitMQ
        sends ``queue.delete-ok`` before ``basic.cancel``)."""
        channel = consumer.channel
        channel.consumers.pop(consumer.tag, None)
        if channel.number in self.channels and self.connection.client_capability("consumer_cancel_notify"):
            cancel = commands.Basic.Cancel(consumer_tag=consumer.tag, nowait=True)
            if self._held_notifications is not None:
                self._held_notifications.append((channel, cancel))
            else:
                channel.send(cancel)

    @contextlib.contextmanager
    def _notifications_after_reply(self) -> Iterator[None]:
        """Notifications the method being handled causes to this session go out after its reply."""
        self._held_notifications = held = []
        try:
            yield
        finally:
            self._held_notifications = None
            for channel, method in held:
                if self.channels.get(channel.number) is channel:
                    channel.send(method)

    # ------------------------------------------------------------ channel methods

    def _channel_flow(self, channel: Channel, method: commands.Channel.Flow) -> None:
        if not method.active:  # RabbitMQ 3.x does not let clients pause deliveries this way
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "active=false")
        channel.send(commands.Channel.FlowOk(active=True))

    def _channel_flow_ok(self, channel: Channel, method: commands.Channel.FlowOk) -> None:
        pass  # we never send channel.flow; a stray flow-ok is harmless

    # ------------------------------------------------------------ exchanges

    def _exchange_declare(self, channel: Channel, m: commands.Exchange.Declare) -> None:
        self.vhost.declare_exchange(m.exchange, m.exchange_type, passive=m.passive, durable=m.durable,
                                    auto_delete=m.auto_delete, internal=m.internal,
                                    arguments=dict(m.arguments or {}))
        if not m.nowait:
            channel.send(commands.Exchange.DeclareOk())

    def _exchange_delete(self, channel: Channel, m: commands.Exchange.Delete) -> None:
        self.vhost.delete_exchange(m.exchange, if_unused=m.if_unused)
        if not m.nowait:
            channel.send(commands.Exchange.DeleteOk())

    def _exchange_bind(self, channel: Channel, m: commands.Exchange.Bind) -> None:
        self.vhost.bind_exchange(m.destination, m.source, m.routing_key, dict(m.arguments or {}))
        if not m.nowait:
            channel.send(commands.Exchange.BindOk())

    def _exchange_unbind(self, channel: Channel, m: commands.Exchange.Unbind) -> None:
        self.vhost.unbind_exchange(m.destination, m.source, m.routing_key, dict(m.arguments or {}))
        if not m.nowait:
            channel.send(commands.Exchange.UnbindOk())

    # ------------------------------------------------------------ queues

    def _queue_declare(self, channel: Channel, m: commands.Queue.Declare) -> None:
        queue = self.vhost.declare_queue(m.queue, passive=m.passive, durable=m.durable,
                                         exclusive=m.exclusive, auto_delete=m.auto_delete,
                                         arguments=dict(m.arguments or {}), owner=self)
        if queue.exclusive_owner is self and queue not in self.exclusive_queues:
            self.exclusive_queues.append(queue)
        channel.last_queue = queue.name
        if not m.nowait:
            channel.send(commands.Queue.DeclareOk(queue=queue.name, message_count=queue.message_count,
                                                  consumer_count=len(queue.consumers)))

    def _queue_bind(self, channel: Channel, m: commands.Queue.Bind) -> None:
        self.vhost.bind_queue(self._queue_name(channel, m.queue), m.exchange, m.routing_key,
                              dict(m.arguments or {}), owner=self)
        if not m.nowait:
            channel.send(commands.Queue.BindOk())

    def _queue_unbind(self, channel: Channel, m: commands.Queue.Unbind) -> None:
        self.vhost.unbind_queue(self._queue_name(channel, m.queue), m.exchange, m.routing_key,
                                dict(m.arguments or {}), owner=self)
        channel.send(commands.Queue.UnbindOk())

    def _queue_purge(self, channel: Channel, m: commands.Queue.Purge) -> None:
        count = self.vhost.purge_queue(self._queue_name(channel, m.queue), owner=self)
        if not m.nowait:
            channel.send(commands.Queue.PurgeOk(message_count=count))

    def _queue_delete(self, channel: Channel, m: commands.Queue.Delete) -> None:
        with self._notifications_after_reply():
            count = self.vhost.delete_queue(self._queue_name(channel, m.queue), if_unused=m.if_unused,
                                            if_empty=m.if_empty, owner=self)
            if not m.nowait:
                channel.send(commands.Queue.DeleteOk(message_count=count))

    # ------------------------------------------------------------ basic

    def _basic_qos(self, channel: Channel, m: commands.Basic.Qos) -> None:
        if m.prefetch_size:
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
        channel.global_qos_requested = bool(m.global_ and m.prefetch_count)
        if m.global_ or self._spec_qos_semantics():
            channel.global_prefetch = m.prefetch_count
        else:
            channel.consumer_prefetch = m.prefetch_count  # for consumers created from now on
        for consumer in channel.consumers.values():
            consumer.queue.consumer_ready()
        channel.send(commands.Basic.QosOk())

    def _basic_consume(self, channel: Channel, m: commands.Basic.Consume) -> None:
        tag = m.consumer_tag or _consumer_tag()
        if tag in channel.consumers:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        most = self.broker.limits.consumer_max_per_channel
        if most and len(channel.consumers) >= most:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"reached maximum ({most}) of consumers per channel",
                                  60, 20)
        if m.queue == REPLY_TO:
            queue = self._reply_queue(channel, m)
        else:
            queue = self.vhost.use_queue(self._queue_name(channel, m.queue), owner=self)
        if queue.quorum and channel.global_qos_requested:
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, f"queue '{queue.name}' in vhost "
                                  f"'{self.vhost.name}' does not support global qos", 60, 20)
        if queue.exclusive_consumer is not None or (m.exclusive and queue.consumers):
            raise access_refused(f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use")
        consumer = Consumer(tag, queue, channel, no_ack=m.no_ack, exclusive=m.exclusive,
                            prefetch=channel.consumer_prefetch, arguments=dict(m.arguments or {}))
        channel.consumers[tag] = consumer
        if not m.nowait:
            channel.send(commands.Basic.ConsumeOk(consumer_tag=tag))
        queue.add_consumer(consumer, m.exclusive)

    def _reply_queue(self, channel: Channel, m: commands.Basic.Consume) -> Queue:
        """A direct reply-to consumer: no acks, one per channel."""
        if not m.no_ack:
            raise precondition_failed("reply consumer cannot acknowledge")
        if channel.reply_queue is not None:
            raise precondition_failed("reply consumer already set")
        channel.reply_queue = self.vhost.add_reply_queue(self)
        return channel.reply_queue

    def _basic_cancel(self, channel: Channel, m: commands.Basic.Cancel) -> None:
        consumer = channel.consumers.get(m.consumer_tag)
        if consumer is not None:
            self._remove_consumer(channel, consumer)
        if not m.nowait:
            channel.send(commands.Basic.CancelOk(consumer_tag=m.consumer_tag))

    def _basic_get(self, channel: Channel, m: commands.Basic.Get) -> None:
        queue = self.vhost.use_queue(self._queue_name(channel, m.queue), owner=self)
        entry = queue.get()
        if entry is None and queue.head_on_disk:
            # the head is paged out: the answer (and everything the client sent after this
            # get) waits for the page read, done off the loop, as RabbitMQ defers its reply
            self.connection.pause()
            queue.when_paged_in(lambda read_ok: self._answer_get(channel, queue, m.no_ack, read_ok))
            return
        self._send_get_answer(channel, queue, entry, m.no_ack)

    def _answer_get(self, channel: Channel, queue: Queue, no_ack: bool, read_ok: bool) -> None:
        """The page a waiting ``basic.get`` needed is in (or could not be read)."""
        with self._deferred_reply("a deferred basic.get"):
            if self.channels.get(channel.number) is not channel:  # closed meanwhile
                return
            entry = queue.get() if not queue.deleted else None
            if entry is None and read_ok and queue.head_on_disk and not queue.deleted:
                self.connection.pause()  # all that came in had expired: wait for the next page
                queue.when_paged_in(lambda ok: self._answer_get(channel, queue, no_ack, ok))
                return
            self._send_get_answer(channel, queue, entry, no_ack)

    def _send_get_answer(self, channel: Channel, queue: Queue, entry: Any, no_ack: bool) -> None:
        if entry is None:
            channel.send(commands.Basic.GetEmpty())
            return
        channel.send_get_ok(queue, entry, no_ack)
        self.mark_output()
        self._bound_output()

    def _bound_output(self) -> None:
        """Answers the client must read (get-oks, returns) are piling up unsent: take nothing
        more from it until the transport sent them (TCP backpressure), rather than let one client
        that never reads grow the broker's memory."""
        if self.out_bytes > OUTPUT_PAUSE_BYTES and not self.paused_for_output:
            self.connection.pause()
            self.paused_for_output = True

    def _resume(self) -> None:
        """Release one reason the input was held back for; once none is left, go on with it
        (here, in the task that released it) and let the transport read again."""
        self.connection.resume()
        self.mark_output()
        if not self.connection.paused:
            self.broker.run_pending()  # what the held input did goes out now, not at the next tick
            self.on_resume()

    @contextlib.contextmanager
    def _deferred_reply(self, what: str) -> Iterator[None]:
        """Run a deferred reply's work (called from a page reader or the store writer, not from
        this connection's input): a bug in it closes this connection with 541, as an error in its
        input would, and the input held back for it is always released."""
        try:
            yield
        except Exception as exc:
            log_internal_error(log, f"{what} for connection {self.name}", exc)
            self.connection.close(ReplyCode.INTERNAL_ERROR, "internal error")
        finally:
            self._resume()

    def _basic_ack(self, channel: Channel, m: Ack) -> None:
        if channel.tx is not None:
            channel.check_tags(m.delivery_tag, m.multiple)
            channel.tx.append((m.delivery_tag, m.multiple, None))
            return
        channel.ack(m)

    def _basic_reject(self, channel: Channel, m: commands.Basic.Reject) -> None:
        self._settle(channel, m.delivery_tag, False, m.requeue)

    def _basic_nack(self, channel: Channel, m: commands.Basic.Nack) -> None:
        self._settle(channel, m.delivery_tag, m.multiple, m.requeue)

    def _settle(self, channel: Channel, tag: int, multiple: bool, requeue: bool) -> None:
        if channel.tx is not None:
            channel.check_tags(tag, multiple)
            channel.tx.append((tag, multiple, requeue))
            return
        channel.settle(channel.take_unacked(tag, multiple), requeue=requeue, rejected=True)

    def _basic_recover(self, channel: Channel, m: commands.Basic.Recover) -> None:
        if not m.requeue:
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "requeue=false")
        channel.requeue_all()
        channel.send(commands.Basic.RecoverOk())

    def _basic_recover_async(self, channel: Channel, m: commands.Basic.RecoverAsync) -> None:
        if not m.requeue:
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "requeue=false")
        channel.requeue_all()

    # ------------------------------------------------------------ confirms and transactions

    def _confirm_select(self, channel: Channel, m: commands.Confirm.Select) -> None:
        if channel.tx is not None:
            raise precondition_failed("cannot switch from tx to confirm mode")
        channel.confirm = True
        if not m.nowait:
            channel.send(commands.Confirm.SelectOk())

    def _tx_select(self, channel: Channel, m: commands.Tx.Select) -> None:
        if channel.confirm:
            raise precondition_failed("cannot switch from confirm to tx mode")
        if channel.tx is None:
            channel.tx = []
        channel.send(commands.Tx.SelectOk())

    def _tx_commit(self, channel: Channel, m: commands.Tx.Commit) -> None:
        if channel.tx is None:
            raise precondition_failed("channel is not transactional")
        work, channel.tx = channel.tx, []
        stored = False
        for item in work:
            if isinstance(item[1], Message):
                self._route(channel, *item)
                stored = stored or item[1].durable or item[1].has_stored_copy
            else:
                tag, multiple, requeue = item
                if requeue is None:
                    channel.ack(Ack(tag, multiple))
                else:
                    channel.settle(channel.take_unacked(tag, multiple), requeue=requeue, rejected=True)
        journal = self.broker.journal
        if not stored or not journal.enabled:
            channel.send(commands.Tx.CommitOk())
            return
        if journal.failed:
            raise ChannelError(ReplyCode.INTERNAL_ERROR, _COMMIT_NOT_DURABLE, 90, 20)
        # commit-ok only once the committed persistent messages are synced, as RabbitMQ: a crash
        # right after it must not lose them; what the client sends next waits meanwhile
        self.connection.pause()
        journal.wait_for_sync(_CommitWaiter(self, channel), 0, _SYNC_MARK)

    def commit_synced(self, channel: Channel, ok: bool) -> None:
        """The store synced (or failed to sync) what a ``tx.commit`` wrote."""
        with self._deferred_reply("a deferred tx.commit-ok"):
            if self.channels.get(channel.number) is channel:
                if ok:
                    channel.send(commands.Tx.CommitOk())
                else:
                    self.connection.close_channel(channel.number, ChannelError(
                        ReplyCode.INTERNAL_ERROR, _COMMIT_NOT_DURABLE, 90, 20))
                    self.mark_output()

    def _tx_rollback(self, channel: Channel, m: commands.Tx.Rollback) -> None:
        if channel.tx is None:
            raise precondition_failed("channel is not transactional")
        channel.tx = []
        channel.send(commands.Tx.RollbackOk())


class _CommitWaiter:
    """Stands for a channel in the journal's confirm waiters: a ``tx.commit`` waiting for a sync."""

    __slots__ = ("session", "channel")

    def __init__(self, session: Session, channel: Channel) -> None:
        self.session = session
        self.channel = channel

    def confirm_synced(self, seq: int, ok: bool) -> None:
        self.session.commit_synced(self.channel, ok)


class _SyncMark:
    """The message a commit waiter waits for: always stored, so it waits for the next sync."""

    refs = 1
    has_stored_copy = True


_SYNC_MARK = _SyncMark()

_HANDLERS: dict[type, Callable[[Session, Channel, Any], None]] = {
    commands.Channel.Flow: Session._channel_flow,
    commands.Channel.FlowOk: Session._channel_flow_ok,
    commands.Exchange.Declare: Session._exchange_declare,
    commands.Exchange.Delete: Session._exchange_delete,
    commands.Exchange.Bind: Session._exchange_bind,
    commands.Exchange.Unbind: Session._exchange_unbind,
    commands.Queue.Declare: Session._queue_declare,
    commands.Queue.Bind: Session._queue_bind,
    commands.Queue.Unbind: Session._queue_unbind,
    commands.Queue.Purge: Session._queue_purge,
    commands.Queue.Delete: Session._queue_delete,
    commands.Basic.Qos: Session._basic_qos,
    commands.Basic.Consume: Session._basic_consume,
    commands.Basic.Cancel: Session._basic_cancel,
    commands.Basic.Get: Session._basic_get,
    Ack: Session._basic_ack,
    commands.Basic.Ack: Session._basic_ack,
    commands.Basic.Reject: Session._basic_reject,
    commands.Basic.Nack: Session._basic_nack,
    commands.Basic.Recover: Session._basic_recover,
    commands.Basic.RecoverAsync: Session._basic_recover_async,
    commands.Confirm.Select: Session._confirm_select,
    commands.Tx.Select: Session._tx_select,
    commands.Tx.Commit: Session._tx_commit,
    commands.Tx.Rollback: Session._tx_rollback,
}
