"""The method table: what each channel method does to a session's virtual host, and its reply.

Every handler is ``handler(session, channel, method)``; :data:`HANDLERS` maps method classes to
them (content, ``basic.publish``, goes through :mod:`amqpbroker.broker.publishing`). Errors are
raised as :class:`~amqpbroker.errors.ChannelError` / :class:`~amqpbroker.errors.ConnectionError`;
the connection machine alone turns them into close frames.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp import commands

from amqpbroker.broker.access import CONFIGURE, READ, WRITE
from amqpbroker.broker.channel import Channel
from amqpbroker.broker.consumer_timeouts import consumer_timeout_argument
from amqpbroker.broker.message import Message
from amqpbroker.broker.publishing import route
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.queue_types import STREAM
from amqpbroker.broker.vhost import REPLY_TO, server_named_queue
from amqpbroker.codec.methods import Ack
from amqpbroker.errors import ChannelError, ConnectionError, ReplyCode, access_refused, not_found, precondition_failed

if TYPE_CHECKING:
    from amqpbroker.broker.session import Session

__all__ = ["HANDLERS", "COMMIT_NOT_DURABLE"]

COMMIT_NOT_DURABLE = "the message store failed: the committed persistent messages cannot be made durable"


EXCHANGE, QUEUE = "exchange", "queue"


def _consumer_tag() -> str:
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


def _spec_qos_semantics(session: Session) -> bool:
    """Does this client mean the spec's ``basic.qos`` (``global=false``: one limit shared by
    the channel) rather than RabbitMQ's (``global=false``: per consumer, later consumers only)?

    kombu (py-amqp) decides from the server's product name: for any product but "RabbitMQ"
    3.3-3.x it assumes the spec's meaning, so Celery sends ``global=false`` where it sends
    ``global=true`` to RabbitMQ, and raises the limit at run time for ETA tasks. We give
    py-amqp clients the meaning they assume, which is what Celery gets from RabbitMQ 3.x;
    every other client gets RabbitMQ's meaning.
    """
    return session.connection.client_properties.get("product") == "py-amqp"


def _queue_name(session: Session, channel: Channel, name: str) -> str:
    if name:
        return name
    if not channel.last_queue:
        raise not_found("no previously declared queue")
    return channel.last_queue


def _check_binding(session: Session, kind: str, destination: str, source: str, routing_key: str) -> None:
    """A binding (queue.bind/unbind, exchange.bind/unbind) as RabbitMQ checks it: write on the
    destination, read on the source, and the topic read permission for the key on a topic
    source."""
    access = session.access
    access.check(WRITE, kind, destination)
    if not source or (kind == EXCHANGE and not destination):
        return  # the default exchange: refused as such by the vhost
    access.check(READ, EXCHANGE, source)
    if access.topic_permissions:
        exchange = session.vhost.exchanges.get(source)
        if exchange is not None and exchange.type_name == "topic":
            access.check_topic(READ, source, routing_key)


# ------------------------------------------------------------ channel methods

def _channel_flow(session: Session, channel: Channel, method: commands.Channel.Flow) -> None:
    if not method.active:  # RabbitMQ 3.x does not let clients pause deliveries this way
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "active=false")
    channel.send(commands.Channel.FlowOk(active=True))


def _channel_flow_ok(session: Session, channel: Channel, method: commands.Channel.FlowOk) -> None:
    pass  # we never send channel.flow; a stray flow-ok is harmless


# ------------------------------------------------------------ exchanges

def _exchange_declare(session: Session, channel: Channel, m: commands.Exchange.Declare) -> None:
    access = session.access
    if m.exchange:  # (the default exchange: refused as such)
        if m.passive:
            access.check_any(EXCHANGE, m.exchange)
        else:
            access.check(CONFIGURE, EXCHANGE, m.exchange)
            alternate = (m.arguments or {}).get("alternate-exchange")
            if isinstance(alternate, (str, bytes)):  # RabbitMQ: write on it, read on this one
                access.check(WRITE, EXCHANGE, alternate.decode() if isinstance(alternate, bytes) else alternate)
                access.check(READ, EXCHANGE, m.exchange)
    session.vhost.declare_exchange(m.exchange, m.exchange_type, passive=m.passive, durable=m.durable,
                                   auto_delete=m.auto_delete, internal=m.internal,
                                   arguments=dict(m.arguments or {}))
    if not m.nowait:
        channel.send(commands.Exchange.DeclareOk())


def _exchange_delete(session: Session, channel: Channel, m: commands.Exchange.Delete) -> None:
    if m.exchange:
        session.access.check(CONFIGURE, EXCHANGE, m.exchange)
    session.vhost.delete_exchange(m.exchange, if_unused=m.if_unused)
    if not m.nowait:
        channel.send(commands.Exchange.DeleteOk())


def _exchange_bind(session: Session, channel: Channel, m: commands.Exchange.Bind) -> None:
    _check_binding(session, EXCHANGE, m.destination, m.source, m.routing_key)
    session.vhost.bind_exchange(m.destination, m.source, m.routing_key, dict(m.arguments or {}))
    if not m.nowait:
        channel.send(commands.Exchange.BindOk())


def _exchange_unbind(session: Session, channel: Channel, m: commands.Exchange.Unbind) -> None:
    _check_binding(session, EXCHANGE, m.destination, m.source, m.routing_key)
    session.vhost.unbind_exchange(m.destination, m.source, m.routing_key, dict(m.arguments or {}))
    if not m.nowait:
        channel.send(commands.Exchange.UnbindOk())


# ------------------------------------------------------------ queues

def _queue_declare(session: Session, channel: Channel, m: commands.Queue.Declare) -> None:
    access = session.access
    name = m.queue
    arguments = dict(m.arguments or {})
    if m.passive:
        if name:
            access.check_any(QUEUE, name)
    else:
        name = name or server_named_queue()  # named first: the permission applies to the name
        access.check(CONFIGURE, QUEUE, name)
        dead_letter_exchange = arguments.get("x-dead-letter-exchange")
        if isinstance(dead_letter_exchange, (str, bytes)):  # RabbitMQ: read here, write there
            access.check(READ, QUEUE, name)
            access.check(WRITE, EXCHANGE, dead_letter_exchange.decode(errors="replace")
                         if isinstance(dead_letter_exchange, bytes) else dead_letter_exchange)
    queue = session.vhost.declare_queue(name, passive=m.passive, durable=m.durable,
                                        exclusive=m.exclusive, auto_delete=m.auto_delete,
                                        arguments=arguments, owner=session, server_named=not m.queue)
    if queue.exclusive_owner is session and queue not in session.exclusive_queues:
        session.exclusive_queues.append(queue)
    channel.last_queue = queue.name
    if not m.nowait:
        channel.send(commands.Queue.DeclareOk(queue=queue.name, message_count=queue.message_count,
                                              consumer_count=len(queue.consumers)))


def _queue_bind(session: Session, channel: Channel, m: commands.Queue.Bind) -> None:
    name = _queue_name(session, channel, m.queue)
    _check_binding(session, QUEUE, name, m.exchange, m.routing_key)
    session.vhost.bind_queue(name, m.exchange, m.routing_key,
                             dict(m.arguments or {}), owner=session)
    if not m.nowait:
        channel.send(commands.Queue.BindOk())


def _queue_unbind(session: Session, channel: Channel, m: commands.Queue.Unbind) -> None:
    name = _queue_name(session, channel, m.queue)
    _check_binding(session, QUEUE, name, m.exchange, m.routing_key)
    session.vhost.unbind_queue(name, m.exchange, m.routing_key,
                               dict(m.arguments or {}), owner=session)
    channel.send(commands.Queue.UnbindOk())


def _queue_purge(session: Session, channel: Channel, m: commands.Queue.Purge) -> None:
    name = _queue_name(session, channel, m.queue)
    session.access.check(READ, QUEUE, name)
    count = session.vhost.purge_queue(name, owner=session)
    if not m.nowait:
        channel.send(commands.Queue.PurgeOk(message_count=count))


def _queue_delete(session: Session, channel: Channel, m: commands.Queue.Delete) -> None:
    name = _queue_name(session, channel, m.queue)
    session.access.check(CONFIGURE, QUEUE, name)
    with session.notifications_after_reply():
        count = session.vhost.delete_queue(name, if_unused=m.if_unused,
                                           if_empty=m.if_empty, owner=session)
        if not m.nowait:
            channel.send(commands.Queue.DeleteOk(message_count=count))


# ------------------------------------------------------------ basic

def _basic_qos(session: Session, channel: Channel, m: commands.Basic.Qos) -> None:
    if m.prefetch_size:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
    # the 4.3 profile denies global QoS as RabbitMQ 4.3 does: global=true taken as global=false
    shared = m.global_ and session.broker.limits.compatibility.global_qos
    channel.global_qos_requested = bool(shared and m.prefetch_count)
    if shared or _spec_qos_semantics(session):
        channel.global_prefetch = m.prefetch_count
    else:
        channel.consumer_prefetch = m.prefetch_count  # for consumers created from now on
    for consumer in channel.consumers.values():
        consumer.queue.consumer_ready()
    channel.send(commands.Basic.QosOk())


def _basic_consume(session: Session, channel: Channel, m: commands.Basic.Consume) -> None:
    tag = m.consumer_tag or _consumer_tag()
    if tag in channel.consumers:
        raise ConnectionError(ReplyCode.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
    most = session.broker.limits.consumer_max_per_channel
    if most and len(channel.consumers) >= most:
        raise ConnectionError(ReplyCode.NOT_ALLOWED, f"reached maximum ({most}) of consumers per channel",
                              60, 20)
    if m.queue == REPLY_TO:
        queue = _reply_queue(session, channel, m)
    else:
        name = _queue_name(session, channel, m.queue)
        session.access.check(READ, QUEUE, name)
        queue = session.vhost.use_queue(name, owner=session)
    if channel.global_qos_requested and not queue.type.takes_global_qos:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, f"queue '{queue.name}' in vhost "
                              f"'{session.vhost.name}' does not support global qos", 60, 20)
    if queue.exclusive_consumer is not None or (m.exclusive and queue.consumers):
        raise access_refused(f"queue '{queue.name}' in vhost '{session.vhost.name}' in exclusive use")
    arguments = dict(m.arguments or {})
    try:
        timeout = consumer_timeout_argument(arguments)
    except ValueError as exc:
        raise precondition_failed(str(exc)) from None
    prefetch = channel.consumer_prefetch
    if not prefetch and queue.type is STREAM and _spec_qos_semantics(session):
        prefetch = channel.global_prefetch  # (py-amqp's global=false, which RabbitMQ takes per consumer)
    consumer = queue.consumer_for(tag, channel, no_ack=m.no_ack, exclusive=m.exclusive,
                                  prefetch=prefetch, arguments=arguments)
    consumer.timeout = timeout
    channel.consumers[tag] = consumer
    if not m.nowait:
        channel.send(commands.Basic.ConsumeOk(consumer_tag=tag))
    queue.add_consumer(consumer, m.exclusive)


def _reply_queue(session: Session, channel: Channel, m: commands.Basic.Consume) -> Queue:
    """A direct reply-to consumer: no acks, one per channel."""
    if not m.no_ack:
        raise precondition_failed("reply consumer cannot acknowledge")
    if channel.reply_queue is not None:
        raise precondition_failed("reply consumer already set")
    channel.reply_queue = session.vhost.add_reply_queue(session)
    return channel.reply_queue


def _basic_cancel(session: Session, channel: Channel, m: commands.Basic.Cancel) -> None:
    consumer = channel.consumers.get(m.consumer_tag)
    if consumer is not None:
        session.remove_consumer(channel, consumer)
    if not m.nowait:
        channel.send(commands.Basic.CancelOk(consumer_tag=m.consumer_tag))


def _basic_get(session: Session, channel: Channel, m: commands.Basic.Get) -> None:
    name = _queue_name(session, channel, m.queue)
    session.access.check(READ, QUEUE, name)
    queue = session.vhost.use_queue(name, owner=session)
    entry = queue.get()
    if entry is None and queue.head_on_disk:
        # the head is paged out: the answer (and everything the client sent after this
        # get) waits for the page read, done off the loop, as RabbitMQ defers its reply
        session.connection.pause()
        queue.when_paged_in(lambda read_ok: _answer_get(session, channel, queue, m.no_ack, read_ok))
        return
    _send_get_answer(session, channel, queue, entry, m.no_ack)


def _answer_get(session: Session, channel: Channel, queue: Queue, no_ack: bool, read_ok: bool) -> None:
    """The page a waiting ``basic.get`` needed is in (or could not be read)."""
    with session.deferred_reply("a deferred basic.get"):
        if session.channels.get(channel.number) is not channel:  # closed meanwhile
            return
        entry = queue.get() if not queue.deleted else None
        if entry is None and read_ok and queue.head_on_disk and not queue.deleted:
            session.connection.pause()  # all that came in had expired: wait for the next page
            queue.when_paged_in(lambda ok: _answer_get(session, channel, queue, no_ack, ok))
            return
        _send_get_answer(session, channel, queue, entry, no_ack)


def _send_get_answer(session: Session, channel: Channel, queue: Queue, entry: Any, no_ack: bool) -> None:
    if entry is None:
        session.broker.totals.get_empty += 1
        channel.send(commands.Basic.GetEmpty())
        return
    channel.send_get_ok(queue, entry, no_ack)
    session.mark_output()
    session.bound_output()


def _basic_ack(session: Session, channel: Channel, m: Ack) -> None:
    if channel.tx is not None:
        channel.check_tags(m.delivery_tag, m.multiple)
        channel.tx.append((m.delivery_tag, m.multiple, None))
        return
    channel.ack(m)


def _basic_reject(session: Session, channel: Channel, m: commands.Basic.Reject) -> None:
    _settle(session, channel, m.delivery_tag, False, m.requeue)


def _basic_nack(session: Session, channel: Channel, m: commands.Basic.Nack) -> None:
    _settle(session, channel, m.delivery_tag, m.multiple, m.requeue)


def _settle(session: Session, channel: Channel, tag: int, multiple: bool, requeue: bool) -> None:
    if channel.tx is not None:
        channel.check_tags(tag, multiple)
        channel.tx.append((tag, multiple, requeue))
        return
    _settle_rejected(channel, channel.take_unacked(tag, multiple), requeue)


def _settle_rejected(channel: Channel, deliveries: list, requeue: bool) -> None:
    """Nacked or rejected deliveries; a stream's are refused with 540 as RabbitMQ (their credit
    goes back first; the connection closes)."""
    streams = [delivery[0] for delivery in deliveries if delivery[0].type is STREAM]
    if streams:
        channel.settle(deliveries, requeue=True)
        streams[0].refuse_settle()
    channel.settle(deliveries, requeue=requeue, rejected=True)


def _basic_recover(session: Session, channel: Channel, m: commands.Basic.Recover) -> None:
    if not m.requeue:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "requeue=false")
    channel.requeue_all()
    channel.send(commands.Basic.RecoverOk())


def _basic_recover_async(session: Session, channel: Channel, m: commands.Basic.RecoverAsync) -> None:
    if not m.requeue:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "requeue=false")
    channel.requeue_all()


# ------------------------------------------------------------ confirms and transactions

def _confirm_select(session: Session, channel: Channel, m: commands.Confirm.Select) -> None:
    if channel.tx is not None:
        raise precondition_failed("cannot switch from tx to confirm mode")
    channel.confirm = True
    if not m.nowait:
        channel.send(commands.Confirm.SelectOk())


def _tx_select(session: Session, channel: Channel, m: commands.Tx.Select) -> None:
    if channel.confirm:
        raise precondition_failed("cannot switch from confirm to tx mode")
    if channel.tx is None:
        channel.tx = []
    channel.send(commands.Tx.SelectOk())


def _tx_commit(session: Session, channel: Channel, m: commands.Tx.Commit) -> None:
    if channel.tx is None:
        raise precondition_failed("channel is not transactional")
    work, channel.tx = channel.tx, []
    stored = False
    for item in work:
        if isinstance(item[1], Message):
            route(session, channel, *item)
            stored = stored or item[1].durable or item[1].has_stored_copy
        else:
            tag, multiple, requeue = item
            if requeue is None:
                channel.ack(Ack(tag, multiple))
            else:
                _settle_rejected(channel, channel.take_unacked(tag, multiple), requeue)
    journal = session.broker.journal
    if not stored or not journal.enabled:
        channel.send(commands.Tx.CommitOk())
        return
    if journal.failed:
        raise ChannelError(ReplyCode.INTERNAL_ERROR, COMMIT_NOT_DURABLE, 90, 20)
    # commit-ok only once the committed persistent messages are synced, as RabbitMQ: a crash
    # right after it must not lose them; what the client sends next waits meanwhile
    session.connection.pause()
    journal.wait_for_sync(_CommitWaiter(session, channel), 0, _SYNC_MARK)


def _tx_rollback(session: Session, channel: Channel, m: commands.Tx.Rollback) -> None:
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


HANDLERS: dict[type, Callable[[Session, Channel, Any], None]] = {
    commands.Channel.Flow: _channel_flow,
    commands.Channel.FlowOk: _channel_flow_ok,
    commands.Exchange.Declare: _exchange_declare,
    commands.Exchange.Delete: _exchange_delete,
    commands.Exchange.Bind: _exchange_bind,
    commands.Exchange.Unbind: _exchange_unbind,
    commands.Queue.Declare: _queue_declare,
    commands.Queue.Bind: _queue_bind,
    commands.Queue.Unbind: _queue_unbind,
    commands.Queue.Purge: _queue_purge,
    commands.Queue.Delete: _queue_delete,
    commands.Basic.Qos: _basic_qos,
    commands.Basic.Consume: _basic_consume,
    commands.Basic.Cancel: _basic_cancel,
    commands.Basic.Get: _basic_get,
    Ack: _basic_ack,
    commands.Basic.Ack: _basic_ack,
    commands.Basic.Reject: _basic_reject,
    commands.Basic.Nack: _basic_nack,
    commands.Basic.Recover: _basic_recover,
    commands.Basic.RecoverAsync: _basic_recover_async,
    commands.Confirm.Select: _confirm_select,
    commands.Tx.Select: _tx_select,
    commands.Tx.Commit: _tx_commit,
    commands.Tx.Rollback: _tx_rollback,
}
