"""The broker: virtual hosts, users, live sessions, and the once-per-batch dispatch.

Work that follows a batch of input is deferred to :meth:`Broker.run_pending`: queues that gained
messages, consumers or credit are dispatched once each, then every session that got output is
woken once, so a publisher's batch costs one flush per consumer connection, not one per message.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.auth import UserDatabase
from amqpbroker.broker.compatibility import DEFAULT_PROFILE, PROFILES, Profile
from amqpbroker.broker.node import NodeFacts
from amqpbroker.broker.totals import MessageTotals
from amqpbroker.errors import log_internal_error
from amqpbroker.broker.consumer_timeouts import ConsumerTimeouts
from amqpbroker.broker.journal import Journal
from amqpbroker.broker.parameters import CLUSTER_NAME, INTERNAL_CLUSTER_ID, new_cluster_id
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.queueing import SAMPLE_SECONDS
from amqpbroker.broker.vhost import VirtualHost

if TYPE_CHECKING:
    from amqpbroker.broker.session import Session

__all__ = ["Broker", "Limits", "MessageTotals", "NODE_NAME"]

log = logging.getLogger("amqpbroker")


@dataclass(frozen=True)
class Limits:
    """What the broker offers in ``connection.tune``."""

    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    max_message_size: int = 16 << 20  # RabbitMQ 4's default; larger publishes get 406
    # 0: no limit. Refused as RabbitMQ refuses them: 530 at connection.open, 530 at basic.consume,
    # 406 at queue.declare
    connection_max: int = 0
    connection_max_per_user: int = 0
    consumer_max_per_channel: int = 0
    queue_max_per_vhost: int = 0
    consumer_timeout: int = 0  # ms a delivery may stay unacknowledged (0: no limit; broker/consumer_timeouts.py)
    # x-delivery-limit for queues without one (negative: none): RabbitMQ 4's 20 for quorum queues
    delivery_limit_classic: int = -1
    delivery_limit_quorum: int = 20
    # where RabbitMQ 3.x and 4.x differ, whose rules apply (compatibility.py; the two limits
    # above are already resolved from it)
    compatibility: Profile = PROFILES[DEFAULT_PROFILE]


HISTORY_SECONDS = 300  # how far back the overview's samples reach (RabbitMQ's UI shows the last 5 min)
NODE_NAME = "amqpbroker@localhost"  # the node's name (RabbitMQ's rabbit@host), the default cluster name


class Broker:
    def __init__(self, limits: Limits = Limits(), *, default_user: str = "guest",
                 default_password: str = "guest", loopback_users: tuple[str, ...] = ("guest",),
                 default_vhost: str = "/",
                 paging_window: tuple[int, int] = (0, 0)) -> None:
        self.limits = limits
        self.users = UserDatabase()
        # users who may log in from loopback addresses only (RabbitMQ's loopback_users)
        self.users.loopback_users.update(loopback_users)
        self.users.add(default_user, default_password, tags=("administrator",), vhosts=(default_vhost,))
        self.vhosts: dict[str, VirtualHost] = {}
        self.sessions: set[Session] = set()
        self.output_pending: list[Session] = []
        self._dirty: set[Queue] = set()
        # resource alarms in effect ("memory", "disk", "store"): publishers are blocked meanwhile
        self.alarms: set[str] = set()
        self.totals = MessageTotals()
        self.node = NodeFacts()  # the process's own facts (memory, disk, fds), sampled by the server
        self._sampled_at = 0.0
        # (time, MessageTotals.including() with the queued "ready" and "unacked") once a second,
        # for the last HISTORY_SECONDS: the overview's rates and its samples (the web UI's charts)
        self.total_samples: deque[tuple[float, dict[str, Any]]] = deque(maxlen=HISTORY_SECONDS + 1)
        self.consumer_timeouts = ConsumerTimeouts(limits.consumer_timeout)
        self.journal = Journal(window_messages=paging_window[0], window_bytes=paging_window[1])
        # RabbitMQ's global runtime parameters (broker/parameters.py): stored, exported, and two read
        self.global_parameters: dict[str, Any] = {INTERNAL_CLUSTER_ID: new_cluster_id()}
        self.add_vhost(default_vhost).description = "Default virtual host"

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = VirtualHost(name, journal=self.journal, mark_dirty=self._dirty.add,
                            on_queue_deleted=self._queue_deleted)
        vhost.max_queues = self.limits.queue_max_per_vhost
        vhost.rules = self.limits.compatibility
        vhost.totals = self.totals
        vhost.delivery_limit_defaults = tuple(None if limit < 0 else limit for limit in (
            self.limits.delivery_limit_classic, self.limits.delivery_limit_quorum))
        self.vhosts[name] = vhost
        return vhost

    def access_changed(self, user: str, vhost: str) -> None:
        """A permission changed: the user's sessions in that vhost check against it from now on."""
        for session in self.sessions:
            if session.user == user and session.vhost is not None and session.vhost.name == vhost:
                session.access = self.users.access(user, vhost)

    @property
    def cluster_name(self) -> str:
        """The ``cluster_name`` global parameter, else the node's name (as RabbitMQ)."""
        name = self.global_parameters.get(CLUSTER_NAME)
        return name if isinstance(name, str) and name else NODE_NAME

    @property
    def memory_alarm(self) -> bool:
        return "memory" in self.alarms

    @property
    def disk_alarm(self) -> bool:
        return "disk" in self.alarms

    @property
    def store_alarm(self) -> bool:
        return "store" in self.alarms

    def set_memory_alarm(self, on: bool) -> None:
        """Memory use crossed the watermark."""
        self.set_alarm("memory", on)

    def set_alarm(self, resource: str, on: bool) -> None:
        """A resource alarm (memory above the watermark, free disk below its limit, a failed
        store) is set or cleared. While any is in effect publishers are told
        (``connection.blocked`` / ``unblocked``) and the transport stops reading them, as
        RabbitMQ does."""
        if on == (resource in self.alarms):
            return
        was_blocked = bool(self.alarms)
        (self.alarms.add if on else self.alarms.discard)(resource)
        log.warning("%s alarm %s: publishers are %s", resource, "set" if on else "cleared",
                    "blocked" if self.alarms else "resumed")
        if was_blocked != bool(self.alarms):
            for session in self.sessions:
                if session.published:
                    session.block() if on else session.unblock()
                    session.mark_output()
        self.run_pending()

    def tick(self, now: float) -> None:
        """Timed work (TTLs, queue expiry, delayed messages, queueing samples), then what it
        changed goes out."""
        for vhost in list(self.vhosts.values()):
            if vhost.timed or vhost.delayed:
                vhost.tick(now)  # guards each queue itself
        if now - self._sampled_at >= SAMPLE_SECONDS:
            self._sampled_at = now
            sample = self.totals.including(self.sessions)
            ready = unacked = 0
            for vhost in self.vhosts.values():
                for queue in vhost.queues.values():
                    queue.sampler.record(now, queue.arrivals, queue.completed,
                                         queue.message_count + queue.unacked_count)
                    ready += queue.message_count
                    unacked += queue.unacked_count
            sample["ready"], sample["unacked"] = ready, unacked
            self.total_samples.append((now, sample))
        try:
            self.consumer_timeouts.check(self)
        except Exception as exc:  # a fault in the check: logged, the timer and the broker go on
            log_internal_error(log, "the consumer timeout check", exc)
        self.run_pending()

    def run_pending(self) -> None:
        """Dispatch every queue that changed, hand the journal (durable writes, pages) to the
        store writer, then send each session's confirms and wake it."""
        dirty = self._dirty
        while dirty:
            queue = dirty.pop()
            try:
                queue.dispatch()
            except Exception as exc:  # one queue's fault: logged, the queue and the broker go on
                log_internal_error(log, f"dispatch of queue '{queue.name}' in vhost '{queue.vhost}'", exc)
        journal = self.journal
        if journal.ops or journal.waiters or journal.pages or journal.page_requests or journal.stream_reads:
            journal.on_pending()
        pending = self.output_pending
        if pending:
            for session in pending:
                session.output_marked = False
                session.flush_confirms()
                session.wake()
            pending.clear()

    def _queue_deleted(self, queue: Queue) -> None:
        self.totals.queues_deleted += 1
        self._dirty.discard(queue)
        for consumer in list(queue.consumers):
            queue.remove_consumer(consumer)
            consumer.channel.session.cancel_by_broker(consumer)
