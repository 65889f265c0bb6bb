"""A queue: ready messages in order, consumers served round-robin within their prefetch credit.

An entry is a tuple ``(seq, message, redelivered)``; ``seq`` is the queue's arrival order, so a
requeued message goes back to its original position among the ready ones, as RabbitMQ does.
``dispatch()`` hands ready messages to consumers that have credit, one per consumer in turn; the
broker calls it once per batch for every queue that changed (``Broker.run_pending``).

This module keeps the queue's state (every slot is declared here), the way in (``enqueue``), the
way out (the plain ``dispatch``, ``get``, ``purge``, ``discard``) and the choice between the
plain dispatch path and the general one (``_update_dispatch``). The rest of its behaviour is in
mixins that hold no state of their own, each saying in its docstring which attributes it uses:

- ``queue_paging.py`` (:class:`PagingMixin`): paging to and from the store, and recovery;
- ``queue_limits.py`` (:class:`LimitsMixin`): options, length limits, TTLs, queue expiry, the
  timed work (``tick``) and the at-least-once dead-letter hold;
- ``queue_redelivery.py`` (:class:`RedeliveryMixin`): requeue, redelivery backoff, delivery
  counts and the delivery limit;
- ``queue_consumers.py`` (:class:`ConsumersMixin`): consumers, their priorities, the single
  active consumer, and the general dispatch path.

The hot path (``enqueue``, ``dispatch``, ``_dispatch_to_one``, ``_after_dispatch``) stays here;
a mixin's method costs the same call as one defined here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.backlog import TaskCounters
from amqpbroker.broker.channel import OUTPUT_BYTES_HIGH_WATER, OUTPUT_HIGH_WATER
from amqpbroker.broker.deduplication import Deduplication
from amqpbroker.broker.flow import FLOW_HIGH, FLOW_LOW
from amqpbroker.broker.journal import INLINE, Journal
from amqpbroker.broker.priority import PriorityReady
from amqpbroker.broker.queue_consumers import ConsumersMixin
from amqpbroker.broker.queue_limits import LimitsMixin
from amqpbroker.broker.queue_options import QueueOptions
from amqpbroker.broker.queue_paging import PagingMixin
from amqpbroker.broker.queue_redelivery import RedeliveryMixin
from amqpbroker.broker.queue_types import queue_type_of
from amqpbroker.broker.queueing import Sampler
from amqpbroker.broker.retry import RetryPolicy

if TYPE_CHECKING:
    from amqpbroker.broker.consumer import Consumer
    from amqpbroker.broker.dead_letter_hold import DeadLetterHold
    from amqpbroker.broker.message import Message

__all__ = ["Queue", "Entry"]

Entry = tuple  # (seq: int, message: Message, redelivered: bool)


class Queue(PagingMixin, LimitsMixin, RedeliveryMixin, ConsumersMixin):
    __slots__ = (
        "name", "vhost", "durable", "exclusive_owner", "auto_delete", "arguments",
        "ready", "unacked_count", "consumers", "_next_seq", "_turn", "_mark_dirty",
        "had_consumers", "deleted", "exclusive_consumer", "queue_id", "journal",
        "ready_bytes", "paged", "page_next", "page_id", "paging_in", "page_epoch", "paged_bytes",
        "options", "host", "expiring", "last_used", "single_active", "_consumer_groups",
        "general_dispatch", "type", "delivery_limit", "delivery_counts", "counters", "dedup", "retry", "retrying",
        "completed", "sampler", "page_waiters", "dead_letter_hold",
        "delivered", "dispatched_at", "flow_on", "flow_publishers", "policy", "operator_policy",
    )

    def __init__(self, name: str, vhost: str, *, durable: bool = False, exclusive_owner: Any = None,
                 auto_delete: bool = False, arguments: dict[str, Any] | None = None,
                 mark_dirty: Callable[[Queue], None] = lambda queue: None,
                 journal: Journal | None = None, queue_id: int | None = None, host: Any = None) -> None:
        self.name = name
        self.vhost = vhost
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.ready: deque[Entry] | PriorityReady = deque()
        self.unacked_count = 0
        self.consumers: list[Consumer] = []
        self.exclusive_consumer: Consumer | None = None
        self.had_consumers = False
        self.deleted = False
        self._next_seq = 0
        self._turn = 0
        self._mark_dirty = mark_dirty
        self.journal = journal if journal is not None else Journal()
        self.queue_id = queue_id  # set when the queue lives in the store (durable, not exclusive)
        self.ready_bytes = 0  # body bytes in ``ready``
        self.paged = 0  # entries written out to the store, not in memory
        self.page_next = 0  # seq of the first paged entry
        self.page_id: int | None = None  # a non-durable queue's page space, once it paged
        self.paging_in = False  # a page read is under way
        # called once the page read under way is over (basic.get waits for it, off the loop)
        self.page_waiters: list[Callable[[bool], None]] = []
        self.page_epoch = 0  # bumped by purge and delete: a page read begun before is stale
        self.paged_bytes = 0  # body bytes of the paged entries
        # the vhost: clock(), dead_letter(queue, messages, reason), timed (queues to tick)
        self.host = host if host is not None else _NoHost()
        self.options = QueueOptions.from_arguments(self.arguments)
        self.policy: Any = None  # the policies applying to it (policies.py), set by its vhost
        self.operator_policy: Any = None
        self.single_active = self.arguments.get("x-single-active-consumer") is True
        self._consumer_groups: list[list[Consumer]] = []  # see _group_consumers
        # classic or quorum (queue_types.py): what differs between them is decided there
        self.type = queue_type_of(self.arguments)
        # redelivery backoff (retry.py): returned messages wait here, (due, seq, entry), a heap
        self.retry = RetryPolicy.of(self.arguments)
        self.retrying: list[tuple[float, int, Entry]] = []
        # every queue counts returns (x-delivery-count) and drops or dead-letters a message
        # returned more than x-delivery-limit times (the vhost's default for its type otherwise)
        self.delivery_limit = self._delivery_limit(self.arguments)
        self.delivery_counts: dict[int, int] = {}  # seq -> times returned, for returned messages only
        self.counters = TaskCounters()  # what the delivery limit and consumer timeouts did (backlog.py)
        # x-message-deduplication: the values seen (deduplication.py; stored with a durable queue)
        self.dedup = Deduplication.of(self.arguments, journal=self.journal,
                                      owner=f"q:{queue_id}" if queue_id is not None else None)
        self.general_dispatch = False
        # for the queueing figures (queueing.py): messages gone through a consumer; arrivals are
        # counted by the sequence numbers (``arrivals``)
        self.completed = 0
        self.sampler = Sampler()
        # publisher flow control (flow.py): deliveries so far and when the last one went out;
        # behind (``flow_on``) from above FLOW_HIGH ready (or paging) down to FLOW_LOW; how
        # many publishers are held for it
        self.delivered = 0
        self.dispatched_at = 0.0
        self.flow_on = False
        self.flow_publishers = 0
        max_priority = self.arguments.get("x-max-priority")
        if max_priority:
            self.ready = PriorityReady(max_priority)
        self.expiring = False  # may hold messages with a TTL: check the head before handing out
        self.last_used = self.host.clock()
        # x-dead-letter-strategy: at-least-once (dead_letter_hold.py): what no target took yet
        self.dead_letter_hold: DeadLetterHold | None = None
        self._options_changed()

    @property
    def arrivals(self) -> int:
        """Messages enqueued so far (since recovery, plus the sequence numbers the store had):
        a counter whose differences are arrivals."""
        return self._next_seq

    @property
    def prioritised(self) -> bool:
        """A priority queue (``x-max-priority``): it keeps every ready message in memory, since a
        paged-out one could not overtake older ones of lower priority."""
        return type(self.ready) is PriorityReady

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        """Ready messages, in memory and paged out."""
        return len(self.ready) + self.paged

    @property
    def messages_total(self) -> int:
        """Ready and unacknowledged messages (RabbitMQ's ``messages``)."""
        return len(self.ready) + self.paged + self.unacked_count

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.ready)} unacked={self.unacked_count}>"

    # ---------------------------------------------------------------- messages in

    def enqueue(self, message: Message) -> bool:
        """Take a published message; False if the queue refused it (full, ``reject-publish``);
        True for a duplicate too (``x-message-deduplication``: confirmed, dropped)."""
        options = self.options
        if options is not None or message.ttl is not None:
            admitted = self._admit(message)
            if not admitted:
                return admitted is None
        seq = self._next_seq = self._next_seq + 1
        journal = self.journal
        size = len(message.body)
        if self.paged or ((len(self.ready) >= journal.window_messages or self.ready_bytes >= journal.window_bytes)
                          and not self.prioritised):
            if not self.paged:
                self.page_next = seq
            self.paged += 1
            self.paged_bytes += size
            journal.page_out(self, seq, message)
            self.flow_on = True
        else:
            ready = self.ready
            ready.append((seq, message, False))
            self.ready_bytes += size
            if self.queue_id is not None and message.persistent:
                journal.store_entry(self, seq, message)
            if self.consumers:
                self._mark_dirty(self)
                if len(ready) > FLOW_HIGH:
                    self.flow_on = True
        if options is not None and options.limited:
            self._drop_over_limits()
        return True

    def _update_dispatch(self) -> None:
        """Does ``dispatch`` need the general path (TTLs, consumer priorities, single active
        consumer, delivery-count headers)?"""
        self.general_dispatch = (self.expiring or bool(self._consumer_groups) or self.type.counts_every_delivery
                                 or bool(self.delivery_counts))

    # ---------------------------------------------------------------- messages out

    def get(self) -> Entry | None:
        """The next ready message in memory, or None (see :meth:`head_on_disk`: the head may be
        paged out, and then a caller that must not say "empty" waits for :meth:`when_paged_in`)."""
        if self.expiring:
            self._drop_expired_head(self.host.clock())
        if not self.ready:
            if self.paged:
                self._want_page()
            return None
        entry = self.ready.popleft()
        self.ready_bytes -= len(entry[1].body)
        if self.paged:
            self._want_page()
        return entry

    def touch(self) -> None:
        """The queue was used (declared, consumed from, polled): its ``x-expires`` starts again."""
        self.last_used = self.host.clock()

    def purge(self) -> int:
        """Drop every ready message (in memory, paged out, backing off); unacked ones stay."""
        count = self.message_count + len(self.retrying)
        for entry in self.ready:
            self.discard(entry)
        for _, _, entry in self.retrying:
            self.discard(entry)
        self.retrying.clear()
        if self.deleted and self.dead_letter_hold:  # (a live queue's purge leaves them held)
            for held in self.dead_letter_hold.take_all():
                self._forget(held.entry)
        if self.paged:
            if self.queue_id is None or not self.deleted:  # a durable queue's delete dropped them
                self.journal.drop_paged(self, self.page_next)
            for seq in [seq for seq in self.delivery_counts if seq >= self.page_next]:
                del self.delivery_counts[seq]  # (their stored counts went with the range)
            self._update_dispatch()
            self.paged = self.paged_bytes = 0
            self.paging_in = False
            self.page_epoch += 1
        self.ready.clear()
        self.ready_bytes = 0
        return count

    def discard(self, entry: Entry, reason: str | None = None) -> None:
        """An entry left the queue for good: acked, auto-acked or purged (``reason`` None), or
        rejected, expired or pushed out by a length limit (dead-lettered for that ``reason``)."""
        message = entry[1]
        if self.delivery_counts and self.delivery_counts.pop(entry[0], None) is not None:
            if self.queue_id is not None and message.message_id is not None and not self.deleted:
                self.journal.forget_count(self, entry)
            if not self.delivery_counts:
                self._update_dispatch()
        if reason is not None and self.options is not None and self.options.dead_letter_exchange is not None:
            if self.dead_letter_hold is not None and not self.deleted:
                self.dead_letter_hold.add(entry, reason, self.host.clock())
                self._settle_held(self.host.clock())
                return  # its entry stays until every target has the message
            self.host.dead_letter(self, [message], reason)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """Its stored entry goes (the message too, once no queue holds it)."""
        message = entry[1]
        if self.queue_id is None or message.message_id is None:
            return
        if not self.deleted:
            self.journal.forget_entry(self, entry)
        elif message.message_id != INLINE:  # the queue's entries went with it; the message may not
            self.journal.release(message)

    # ---------------------------------------------------------------- dispatch

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with credit, round-robin, until either runs out."""
        if self.general_dispatch:
            self._dispatch_general()
            return
        ready = self.ready
        consumers = self.consumers
        if not ready or not consumers:
            self._after_dispatch(0)
            return
        count = len(consumers)
        if count == 1:
            self._dispatch_to_one(consumers[0])
            return
        turn = self._turn % count
        idle = 0
        sent = sent_bytes = 0
        popleft = ready.popleft
        while ready and idle < count:
            consumer = consumers[turn]
            turn = turn + 1 if turn + 1 < count else 0
            if consumer.has_credit():
                entry = popleft()
                sent += 1
                sent_bytes += len(entry[1].body)
                consumer.channel.deliver(consumer, self, entry)
                idle = 0
            else:
                idle += 1
        self._turn = turn
        self.ready_bytes -= sent_bytes
        self._after_dispatch(sent)

    def _dispatch_to_one(self, consumer: Consumer) -> None:
        """``dispatch`` with one consumer: as many as its credit allows, in a row (its
        connection's output bound still looked at per message)."""
        ready = self.ready
        room = consumer.credit()
        sent = sent_bytes = 0
        if room > 0:
            deliver = consumer.channel.deliver
            session = consumer.channel.session
            out = consumer.channel.out
            popleft = ready.popleft
            while ready:
                entry = popleft()
                sent += 1
                sent_bytes += len(entry[1].body)
                deliver(consumer, self, entry)
                if sent == room or len(out) >= OUTPUT_HIGH_WATER or session.out_bytes >= OUTPUT_BYTES_HIGH_WATER:
                    break
        self.ready_bytes -= sent_bytes
        if ready and 0 < sent < room:
            session.output_saturated = True  # resumed when the transport took the output
        self._after_dispatch(sent)

    def _after_dispatch(self, sent: int) -> None:
        """After a dispatch that handed out ``sent`` messages: count them for flow control, ask
        for the next page, and end the queue's flow once it caught up."""
        if sent:
            self.delivered += sent
            self.dispatched_at = time.monotonic()
        if self.paged:
            self._want_page()
        elif self.flow_on and len(self.ready) <= FLOW_LOW:
            self.flow_on = False


class _NoHost:
    """For a queue outside a vhost (unit tests): a real clock, no dead-lettering, no timer."""

    delivery_limit_defaults: tuple[int | None, int | None] = (None, None)  # (classic, quorum)
    exchanges: dict[str, Any] = {}  # (none: nothing is dead-lettered)

    def __init__(self) -> None:
        self.timed: set[Queue] = set()

    @staticmethod
    def clock() -> float:
        return time.time()

    @staticmethod
    def dead_letter(queue: Queue, messages: list[Message], reason: str) -> None:
        pass

    @staticmethod
    def dead_letter_once(queue: Queue, message: Message, reason: str, taken: set[str]) -> bool:
        return True
