"""A session: one client connection's view of the broker.

It is the connection machine's handler: it logs the client in, opens its virtual host, opens and
releases channels, and owns the connection's output (batches, confirms, blocking, deferred
replies). What each method does lives in :mod:`amqpbroker.broker.methods` (the method table) and
what a publish does in :mod:`amqpbroker.broker.publishing`. Errors are raised as
:class:`~amqpbroker.errors.ChannelError` / :class:`~amqpbroker.errors.ConnectionError`; the
connection machine alone turns them into close frames.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pamqp import commands

from amqpbroker.broker import publishing
from amqpbroker.broker.access import Access
from amqpbroker.broker.channel import Channel
from amqpbroker.broker.consumer import Consumer
from amqpbroker.broker.flow import PublisherFlow
from amqpbroker.broker.methods import COMMIT_NOT_DURABLE, HANDLERS
from amqpbroker.broker.queue import Queue
from amqpbroker.codec.methods import encode_method
from amqpbroker.errors import ChannelError, ConnectionError, ReplyCode, log_internal_error
from amqpbroker.protocol.connection import Connection

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker
    from amqpbroker.broker.vhost import VirtualHost

__all__ = ["Session"]

log = logging.getLogger("amqpbroker.session")

OUTPUT_PAUSE_BYTES = 8 << 20  # unsent get-ok/return bytes at which a client's input is held back


@contextlib.contextmanager
def _released(what: str) -> Iterator[None]:
    """Release one thing a closing channel or connection held; a failure is logged and the
    release of the rest goes on."""
    try:
        yield
    except Exception as exc:
        log_internal_error(log, f"releasing {what}", exc)


class Session:
    """Everything one client connection does to the broker."""

    def __init__(self, broker: Broker, *, peer: str = "", from_loopback: bool = True, tls: bool = False,
                 certificate_user: str | None = None) -> None:
        self.broker = broker
        self.peer = peer
        self.name = peer  # what operators see it as ("client -> server" address pairs)
        self.connected_at = time.time()
        self.from_loopback = from_loopback
        self.tls = tls
        self.certificate_user = certificate_user  # who a verified client certificate names (EXTERNAL)
        limits = broker.limits
        self.connection = Connection(self, cluster_name=broker.cluster_name, channel_max=limits.channel_max,
                                     frame_max=limits.frame_max,
                                     heartbeat=limits.heartbeat, max_message_size=limits.max_message_size,
                                     mechanisms="PLAIN AMQPLAIN EXTERNAL" if certificate_user else "PLAIN AMQPLAIN")
        self.out = self.connection.out
        self.channels: dict[int, Channel] = {}
        self.vhost: VirtualHost | None = None
        self.user = ""
        self.access: Access | None = None  # the user's rights in the vhost, once open
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
        if mechanism == "EXTERNAL":
            user = self.broker.users.external(self.certificate_user, from_loopback=self.from_loopback)
        else:
            user = self.broker.users.authenticate(mechanism, response, from_loopback=self.from_loopback)
        self.user = user.name
        return user.name

    def open_vhost(self, name: str) -> None:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"vhost {name} not found", 10, 40)
        access = self.broker.users.access(self.user, name)
        if access.permission is None:
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
        self._check_limits(vhost)
        self.vhost = vhost
        self.access = access
        self.broker.sessions.add(self)
        self.broker.totals.connections_opened += 1

    def _check_limits(self, vhost: VirtualHost) -> None:
        """The vhost's and the user's connection limits (RabbitMQ's vhost and user limits)."""
        most = vhost.limits.get("max-connections")
        if most is not None and sum(session.vhost is vhost for session in self.broker.sessions) >= most:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"access to vhost '{vhost.name}' refused for user "
                                  f"'{self.user}': connection limit ({most}) is reached", 10, 40)
        user = self.broker.users.users.get(self.user)
        most = user.limits.get("max-connections") if user is not None else None
        if most is not None and sum(session.user == self.user for session in self.broker.sessions) >= most:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"Connection refused for user '{self.user}'. User "
                                  f"connection limit ({most}) is reached", 10, 40)

    def channel_opened(self, number: int) -> None:
        user = self.broker.users.users.get(self.user)
        most = user.limits.get("max-channels") if user is not None else None
        if most is not None and sum(len(session.channels) for session in self.broker.sessions
                                    if session.user == self.user) >= most:
            raise ConnectionError(ReplyCode.NOT_ALLOWED, f"number of channels opened for user '{self.user}' "
                                  f"has reached the maximum allowed user limit of ({most})", 20, 10)
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
                    self.remove_consumer(channel, consumer)
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
            if self in self.broker.sessions:
                self.broker.totals.connections_closed += 1
                self.broker.sessions.discard(self)

    def vhost_deleted(self) -> None:
        """Its vhost is being deleted (connection.close 320 was sent): let go of its queues now,
        without notifying the client of anything more."""
        for number in list(self.channels):
            with _released(f"channel {number}"):
                self.channel_closed(number)
        self.exclusive_queues.clear()

    def on_method(self, number: int, method: Any) -> None:
        handler = HANDLERS.get(type(method))
        if handler is None:
            raise ConnectionError(ReplyCode.COMMAND_INVALID,
                                  f"unexpected method {type(method).__name__} from a client")
        handler(self, self.channels[number], method)

    on_publish = publishing.on_publish  # (session, channel number, publish, header, body)

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

    def remove_consumer(self, channel: Channel, consumer: Consumer) -> None:
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
    def notifications_after_reply(self) -> Iterator[None]:
        """Notifications the method being handled causes to this session go out after its reply."""
        self._held_notifications = held = []
        try:
            yield
        finally:
            self._held_notifications = None
            for channel, method in held:
                if self.channels.get(channel.number) is channel:
                    channel.send(method)

    def bound_output(self) -> None:
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
    def deferred_reply(self, what: str) -> Iterator[None]:
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

    def commit_synced(self, channel: Channel, ok: bool) -> None:
        """The store synced (or failed to sync) what a ``tx.commit`` wrote."""
        with self.deferred_reply("a deferred tx.commit-ok"):
            if self.channels.get(channel.number) is channel:
                if ok:
                    channel.send(commands.Tx.CommitOk())
                else:
                    self.connection.close_channel(channel.number, ChannelError(
                        ReplyCode.INTERNAL_ERROR, COMMIT_NOT_DURABLE, 90, 20))
                    self.mark_output()
