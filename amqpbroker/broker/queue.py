"""A queue: ready messages in order, consumers served round-robin within their prefetch credit.

An entry is a tuple ``(seq, message, redelivered)``; ``seq`` is the queue's arrival order, so a
requeued message goes back to its original position among the ready ones, as RabbitMQ does.
``dispatch()`` hands ready messages to consumers that have credit, one per consumer in turn; the
broker calls it once per batch for every queue that changed (``Broker.run_pending``).

Paging (when the broker has a store): ``ready`` holds at most a window of messages
(``journal.window_messages`` / ``window_bytes``). Once it is full, arrivals are written to the
store instead (``journal.page_out``) and only counted (``paged``); from then on every arrival goes
there until the paged part is empty again, so the paged entries are always the newest ones, in
order, from ``page_next`` on. When ``ready`` falls below half the window the queue asks for the
next page (``journal.request_page``); the store writer reads it in a worker thread and hands it
back through :meth:`Queue.paged_in`.

Options (``x-`` arguments, :class:`~amqpbroker.broker.queue_options.QueueOptions`) and messages
with a per-message TTL take a separate, slower path (``_admit``,
``_dispatch_expiring``): length limits with their overflow behaviour, expiry (expired messages
are never delivered; they are dropped, or dead-lettered, when they reach the head, and a queue
TTL drops them from the head as time passes, through :meth:`Queue.tick`), queue expiry, and
dead-lettering through the host (the vhost).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from amqpbroker.broker.backlog import TaskCounters
from amqpbroker.broker.channel import OUTPUT_BYTES_HIGH_WATER, OUTPUT_HIGH_WATER
from amqpbroker.broker.consumer import Consumer
from amqpbroker.broker.deduplication import Deduplication
from amqpbroker.broker.dead_letter import DELIVERY_LIMIT, EXPIRED, MAXLEN
from amqpbroker.broker.dead_letter_hold import DeadLetterHold, HeldDeadLetter
from amqpbroker.broker.flow import FLOW_HIGH, FLOW_LOW
from amqpbroker.broker.journal import INLINE, Journal
from amqpbroker.broker.message import Message
from amqpbroker.broker.priority import PriorityReady
from amqpbroker.broker.queue_types import queue_type_of
from amqpbroker.broker.queueing import Sampler
from amqpbroker.broker.retry import DEFAULT_RETRY_LIMIT, RetryPolicy
from amqpbroker.broker.queue_options import DROP_HEAD, REJECT_PUBLISH_DLX, QueueOptions
from amqpbroker.codec.content import decode_properties, encode_content_header
from amqpbroker.codec.tables import TableError

__all__ = ["Queue", "Entry"]

log = logging.getLogger("amqpbroker.queue")
LIMIT_WARNING_SECONDS = 10.0

Entry = tuple  # (seq: int, message: Message, redelivered: bool)


class Queue:
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

    def _drop_over_limits(self) -> None:
        """``drop-head``: drop (or dead-letter) the oldest messages while a length limit is
        broken. Only in-memory ones: when the head is still on disk the queue stays over its limit
        until the page read under way brings it back (``paged_in`` calls this again)."""
        while self.message_count and self._over_limits():
            entry = self.get()
            if entry is None:
                return
            self.discard(entry, reason=MAXLEN)

    def _admit(self, message: Message) -> bool | None:
        """Before a queue with options (or a message with a TTL) takes a message: note its
        arrival for TTLs; False when a length limit refuses it (``reject-publish``), None when it
        is a duplicate."""
        options = self.options
        dedup = self.dedup
        if dedup is not None and dedup.is_duplicate(message.headers, self.host.clock(), remember=False):
            return None
        if message.arrived is None:
            message.arrived = self.host.clock()
        if message.ttl is not None:
            self._holds_ttl()
        if options is not None and options.limited and options.overflow != DROP_HEAD and self._full(message):
            if options.overflow == REJECT_PUBLISH_DLX:
                self.host.dead_letter(self, [message], MAXLEN)
            return False  # refused: its value is not remembered, so the publisher may try again
        if dedup is not None:
            dedup.remember(message.headers, self.host.clock())
        return True

    def _holds_ttl(self) -> None:
        """A message with its own TTL is here: check heads for expiry from now on."""
        if not self.expiring:
            self.expiring = True
            self.host.timed.add(self)
            self._update_dispatch()

    def apply_arguments(self, arguments: dict[str, Any]) -> None:
        """Its policies changed: its options are now its own arguments merged with theirs
        (``policies.effective``), from the next message on; a lowered length limit drops (or
        dead-letters) the excess at once, as RabbitMQ applies a policy to a live queue."""
        self.options = options = QueueOptions.from_arguments(arguments)
        self.retry = RetryPolicy.of(arguments)
        self.delivery_limit = self._delivery_limit(arguments)
        self._options_changed()
        if options is not None:
            if options.message_ttl is not None:
                self._drop_expired_head(self.host.clock())
            if options.limited:
                self._drop_over_limits()

    def _options_changed(self) -> None:
        """A TTL makes it check heads for expiry, a TTL or ``x-expires`` makes it timed; the
        at-least-once dead-letter strategy gives it a hold (its end releases what it held)."""
        options = self.options
        if options is not None:
            if options.message_ttl is not None:
                self.expiring = True
            if options.message_ttl is not None or options.expires is not None:
                self.host.timed.add(self)
        at_least_once = options is not None and options.dead_letter_at_least_once and self.type.dead_letters_at_least_once
        if at_least_once and self.dead_letter_hold is None:
            self.dead_letter_hold = DeadLetterHold()
        elif not at_least_once and self.dead_letter_hold is not None:
            hold, self.dead_letter_hold = self.dead_letter_hold, None
            for held in hold.take_all():  # dead-lettered at most once now, as RabbitMQ does
                self._release_held(held)
                if options is not None and options.dead_letter_exchange is not None:
                    self.host.dead_letter(self, [held.entry[1]], held.reason)
                self._forget(held.entry)
        self._update_dispatch()

    def _update_dispatch(self) -> None:
        """Does ``dispatch`` need the general path (TTLs, consumer priorities, single active
        consumer, delivery-count headers)?"""
        self.general_dispatch = (self.expiring or bool(self._consumer_groups) or self.type.counts_every_delivery
                                 or bool(self.delivery_counts))

    def _delivery_limit(self, arguments: dict[str, Any]) -> int | None:
        """``x-delivery-limit`` (effective: its policies merged), else the default for its type;
        negative: none (RabbitMQ 4's -1)."""
        limit = arguments.get("x-delivery-limit")
        if limit is None:
            limit = (DEFAULT_RETRY_LIMIT if self.retry is not None
                     else self.type.default_delivery_limit(self.host.delivery_limit_defaults))
        return None if limit is None or limit < 0 else limit

    def delivery_header(self, entry: Entry) -> bytes | None:
        """The content header to deliver ``entry`` with, if not the message's own: how often the
        message was returned before (``x-delivery-count``; a quorum queue says it every time, as
        RabbitMQ's, other queues once it was returned)."""
        count = self.delivery_counts.get(entry[0], 0)
        if not count and not self.type.counts_every_delivery:
            return None
        message = entry[1]
        properties = decode_properties(message.header)
        properties.headers = {**(properties.headers or {}), "x-delivery-count": count}
        try:
            return encode_content_header(len(message.body), properties)
        except TableError:  # cannot carry the count: delivered as published
            return None

    def _full(self, message: Message) -> bool:
        """Would one more message break a length limit? (Messages backing off or held for
        dead-lettering count, as RabbitMQ counts them.)"""
        options = self.options
        hold = self.dead_letter_hold
        if options.max_length is not None and (self.message_count + len(self.retrying)
                                               + (len(hold) if hold is not None else 0)) >= options.max_length:
            return True
        return (options.max_length_bytes is not None
                and self._limited_bytes() + len(message.body) > options.max_length_bytes)

    def _over_limits(self) -> bool:
        options = self.options
        hold = self.dead_letter_hold
        if options.max_length is not None and (self.message_count + len(self.retrying)
                                               + (len(hold) if hold is not None else 0)) > options.max_length:
            return True
        return options.max_length_bytes is not None and self._limited_bytes() > options.max_length_bytes

    def _limited_bytes(self) -> int:
        hold = self.dead_letter_hold
        return self.ready_bytes + self.paged_bytes + (hold.bytes if hold is not None else 0)

    def expires_at(self, message: Message) -> float | None:
        """When ``message`` expires in this queue (the lower of the queue's and its own TTL)."""
        ttl = self.options.message_ttl if self.options is not None else None
        if message.ttl is not None:
            ttl = message.ttl if ttl is None else min(ttl, message.ttl)
        if ttl is None or message.arrived is None:
            return None
        return message.arrived + ttl

    def _expired(self, message: Message, now: float) -> bool:
        expiry = self.expires_at(message)
        # a TTL of 0 still lets a message go to a consumer that is ready in the same batch
        return expiry is not None and now > expiry + _TTL_GRACE

    def _drop_expired_head(self, now: float) -> None:
        """Expire messages at the head of the in-memory part (a queue TTL expires them in order;
        others wait there). Paged-out ones are looked at when their page comes in."""
        ready = self.ready
        while ready and self._expired(ready[0][1], now):
            entry = ready.popleft()
            self.ready_bytes -= len(entry[1].body)
            self.discard(entry, reason=EXPIRED)

    def tick(self, now: float) -> bool:
        """Timed work: expire messages from the head, and tell whether the queue itself expired
        (``x-expires``: no consumers and no use for that long)."""
        if self.expiring:
            self._drop_expired_head(now)
            if self.paged:
                self._want_page()
        if self.retrying:
            self._release_due(now)
        hold = self.dead_letter_hold
        if hold is not None and hold.due(now):
            self._settle_held(now)
        expires = self.options.expires if self.options is not None else None
        return expires is not None and not self.consumers and now - self.last_used >= expires

    def requeue(self, entries: Iterable[Entry], *, failed: bool = False, counted: bool = True) -> None:
        """Put delivered-but-unacked entries back at their original positions, redelivered
        (``failed``: rejected or nacked; ``counted`` False: a peek that is no delivery). With a
        backoff (``x-delayed-retry-*``) they wait in ``retrying`` first."""
        returned = sorted((seq, message, True) for seq, message, _ in entries)
        retry = self.retry
        backoff = retry is not None and counted and retry.applies(failed) and not self.deleted
        now = self.host.clock() if backoff else 0.0
        if counted:
            returned = self._count_returns(returned, retry if backoff else None, now)
        if not returned:
            return
        if backoff:
            for entry in returned:
                heapq.heappush(self.retrying, (now + retry.delay(self.delivery_counts.get(entry[0], 1)), entry[0], entry))
            self.host.timed.add(self)
            return
        self._put_back(returned)

    def _release_due(self, now: float) -> None:
        """Backed-off messages whose wait is over go back to their places among the ready ones."""
        retrying = self.retrying
        due = []
        while retrying and retrying[0][0] <= now:
            due.append(heapq.heappop(retrying)[2])
        if due:
            self._put_back(sorted(due))
        self._untime_if_idle()

    def _untime_if_idle(self) -> None:
        """Leave the vhost's timer once there is no timed work (expiry, backoff, held messages)."""
        if (not self.retrying and not self.expiring and not self.dead_letter_hold
                and (self.options is None or self.options.expires is None)):
            self.host.timed.discard(self)

    def _put_back(self, returned: list[Entry]) -> None:
        self.ready_bytes += sum(len(entry[1].body) for entry in returned)
        ready = self.ready
        if self.prioritised:
            ready.put_back(returned)
        elif not ready or returned[-1][0] < ready[0][0]:
            ready.extendleft(reversed(returned))
        else:
            merged = list(ready)
            for entry in returned:
                bisect.insort(merged, entry, key=lambda item: item[0])
            self.ready = deque(merged)
        if self.consumers:
            self._mark_dirty(self)

    # ---------------------------------------------------------------- messages out

    def _count_returns(self, returned: list[Entry], retry: RetryPolicy | None = None, now: float = 0.0) -> list[Entry]:
        """Count each message's returns (kept with a stored message, with the end of its backoff
        when ``retry`` makes it wait, so a restart keeps both); past ``x-delivery-limit`` it is
        dead-lettered (``delivery_limit``), or dropped with a warning, instead of requeued."""
        counts, limit = self.delivery_counts, self.delivery_limit
        stored = self.queue_id is not None and not self.deleted
        kept = []
        for entry in returned:
            count = counts[entry[0]] = counts.get(entry[0], 0) + 1
            if limit is not None and count > limit:
                dead_letter_exchange = self.options.dead_letter_exchange if self.options is not None else None
                if dead_letter_exchange is None or dead_letter_exchange not in self.host.exchanges:
                    self._dropped_by_limit(limit)  # (a dead-letter exchange that does not exist drops it)
                else:
                    self.counters.dead_lettered_by_delivery_limit += 1
                self.discard(entry, reason=DELIVERY_LIMIT)
                continue
            if stored and entry[1].message_id is not None:
                self.journal.count_delivery(self, entry, count,
                                            now + retry.delay(count) if retry is not None else None)
            kept.append(entry)
        if counts and not self.general_dispatch:
            self._update_dispatch()
        return kept

    def _dropped_by_limit(self, limit: int) -> None:
        counters = self.counters
        counters.dropped_by_delivery_limit += 1
        now = time.monotonic()  # (one warning per queue every LIMIT_WARNING_SECONDS: a poison loop must not flood the log)
        if counters.drop_warned_at is None or now - counters.drop_warned_at >= LIMIT_WARNING_SECONDS:
            counters.drop_warned_at = now
            log.warning("queue '%s' in vhost '%s': a message returned more than its delivery limit (%d) "
                        "was dropped (no dead-letter exchange); %d so far", self.name, self.vhost, limit,
                        counters.dropped_by_delivery_limit)

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

    def _settle_held(self, now: float) -> None:
        """Dead-letter held messages, in order, until one still cannot go (``dead_letter_hold``);
        those that went are forgotten in this batch, those newly held are stored as held."""
        hold = self.dead_letter_hold
        host = self.host
        for held in hold.settle(lambda held: host.dead_letter_once(self, held.entry[1], held.reason, held.taken), now):
            self._release_held(held)
            self._forget(held.entry)
        if not hold and not (self.options is not None and self.options.dead_letter_at_least_once
                             and self.type.dead_letters_at_least_once):
            self.dead_letter_hold = None  # what recovery held, gone after a strategy change
        if hold:
            if self.queue_id is not None:
                for held in reversed(hold.held):
                    if held.stored:
                        break
                    if held.entry[1].message_id is not None:
                        self.journal.hold_dead_letter(self, held.entry, held.reason)
                        held.stored = True
            host.timed.add(self)
        else:
            self._untime_if_idle()

    def _release_held(self, held: HeldDeadLetter) -> None:
        if held.stored and not self.deleted:
            self.journal.release_dead_letter(self, held.entry)

    def restore_held(self, held: list[tuple[Entry, str]]) -> None:
        """Recovery: entries the store held for dead-lettering at least once, in order; tried
        from the first tick on (when every queue is back), even if the queue's strategy changed."""
        if self.dead_letter_hold is None:
            self.dead_letter_hold = DeadLetterHold()  # (dropped once empty: _settle_held)
        hold = self.dead_letter_hold
        now = self.host.clock()
        for entry, reason in held:
            hold.add(entry, reason, now).stored = True
        if hold:
            self.host.timed.add(self)

    def restore_retrying(self, waiting: list[tuple[float, Entry]]) -> None:
        """Recovery: entries whose redelivery backoff had not ended, with its end."""
        for due, entry in waiting:
            heapq.heappush(self.retrying, (due, entry[0], entry))
        if waiting:
            self.host.timed.add(self)

    def restore(self, entries: list[Entry], *, paged: int = 0, page_next: int = 0, last_seq: int = 0) -> None:
        """Recovery: the entries the store held, in order, and how many more it holds from
        ``page_next`` on (``last_seq`` the newest)."""
        self.ready.extend(entries)
        self.ready_bytes += sum(len(entry[1].body) for entry in entries)
        if any(entry[1].ttl is not None for entry in entries):
            self._holds_ttl()
        self.paged, self.page_next = paged, page_next
        self._next_seq = max(self._next_seq, last_seq, entries[-1][0] if entries else 0)
        if self.delivery_counts:  # (set by recovery: redeliveries say how often)
            self._update_dispatch()

    # ---------------------------------------------------------------- paging

    @property
    def head_on_disk(self) -> bool:
        """Nothing ready in memory, but paged-out messages in the store."""
        return not self.ready and self.paged > 0

    def when_paged_in(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(read_ok)`` once the page read under way (asked for here if none is)
        is over, whatever its outcome: ``basic.get`` on a queue whose head is on disk waits for it, as
        RabbitMQ's queue process defers its reply, instead of reading the store on the loop."""
        self.page_waiters.append(callback)
        if not self.paging_in:
            self.paging_in = True
            self.journal.request_page(self)

    def _page_read_over(self, read_ok: bool = True) -> None:
        waiters, self.page_waiters = self.page_waiters, []
        for callback in waiters:  # each guards itself (Session._deferred_reply)
            callback(read_ok)

    def page_read_failed(self) -> None:
        """The store could not read the page: nothing is dropped; waiting ``basic.get`` s are
        answered with what is in memory, and the read is asked for again later."""
        self.paging_in = False
        self._page_read_over(False)

    def _want_page(self) -> None:
        """Ask for the next page once the in-memory part is down to half the window."""
        if not self.paging_in and len(self.ready) <= self.journal.window_messages // 2:
            self.paging_in = True
            self.journal.request_page(self)

    def page_wanted(self) -> tuple[int, bool, int, int, int, int] | None:
        """What to read for this queue now, or None:
        ``(epoch, durable, page id, from seq, at most count, at most bytes)``."""
        if self.deleted or not self.paged:
            self.paging_in = False
            self._page_read_over()
            return None
        journal = self.journal
        durable = self.queue_id is not None
        room = max(journal.window_messages - len(self.ready), 1)
        return (self.page_epoch, durable, self.queue_id if durable else self.page_id, self.page_next,
                min(room, self.paged), max(journal.window_bytes - self.ready_bytes, 1))

    def paged_in(self, epoch: int, page: list[tuple[int, Any]]) -> None:
        """A page read begun at ``epoch`` came back as ``(seq, stored message)`` pairs (a
        ``StoredMessage``: routing bytes, header, body, arrival): its messages join the
        in-memory part."""
        if epoch != self.page_epoch or self.deleted:
            self._page_read_over()
            return  # purged or deleted meanwhile; the purge dropped those pages
        self.paging_in = False
        if not page:
            self.paged = 0  # the store lost them (only if the data dir was altered underneath)
            self._page_read_over()
            return
        stored_inline = self.queue_id is not None
        entries = []
        for seq, stored in page:
            message = Message.from_store(*stored)
            if stored_inline:
                message.message_id = INLINE
            self.ready_bytes += len(message.body)
            if message.ttl is not None:
                self._holds_ttl()
            entries.append((seq, message, False))
        self.ready.extend(entries)
        self.paged = max(self.paged - len(entries), 0)
        self.paged_bytes = max(self.paged_bytes - sum(len(entry[1].body) for entry in entries), 0) if self.paged else 0
        last = entries[-1][0]
        self.journal.paged_in(self, self.page_next, last + 1)
        self.page_next = last + 1
        if self.consumers:
            self._mark_dirty(self)
        if self.options is not None and self.options.limited:
            self._drop_over_limits()
        self._page_read_over()
        if self.paged:
            self._want_page()

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

    def _dispatch_general(self) -> None:
        """``dispatch`` for a queue that may hold messages with a TTL (the head is checked before
        every delivery, so an expired message is never handed out), or whose consumers have
        priorities (the highest with credit first, round-robin among equals) or take turns as
        the single active consumer (only the first one gets messages)."""
        consumers = self.consumers
        if not consumers:
            return
        groups = [consumers[:1]] if self.single_active else (self._consumer_groups or [consumers])
        now = self.host.clock() if self.expiring else 0.0
        ready = self.ready
        sent = 0
        while True:
            if self.expiring:
                self._drop_expired_head(now)
            if not ready:
                break
            consumer = self._next_consumer(groups)
            if consumer is None:
                break
            entry = ready.popleft()
            self.ready_bytes -= len(entry[1].body)
            consumer.channel.deliver(consumer, self, entry, self.delivery_header(entry))
            sent += 1
        self._after_dispatch(sent)

    def _next_consumer(self, groups: list[list[Consumer]]) -> Consumer | None:
        """The next consumer with credit: from the highest priority group that has one, taking
        turns within the group."""
        for group in groups:
            count = len(group)
            start = self._turn % count
            for step in range(count):
                consumer = group[(start + step) % count]
                if consumer.has_credit():
                    self._turn = start + step + 1
                    return consumer
        return None

    # ---------------------------------------------------------------- consumers

    def consumer_for(self, tag: str, channel: Any, *, no_ack: bool, exclusive: bool, prefetch: int,
                     arguments: dict[str, Any]) -> Consumer:
        """The consumer a ``basic.consume`` makes (a stream checks and keeps more: stream.py)."""
        return Consumer(tag, self, channel, no_ack=no_ack, exclusive=exclusive, prefetch=prefetch,
                        arguments=arguments)

    def add_consumer(self, consumer: Consumer, exclusive: bool) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        if exclusive:
            self.exclusive_consumer = consumer
        self._group_consumers()
        self._mark_dirty(self)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._group_consumers()
            if not self.consumers:
                self.touch()
            elif self.single_active:
                self._mark_dirty(self)  # the next one in line takes over
        if self.exclusive_consumer is consumer:
            self.exclusive_consumer = None

    def _group_consumers(self) -> None:
        """Consumers by priority (``x-priority``), highest first; empty (the plain round-robin)
        when they all have the same one and the queue has no single active consumer."""
        priorities = sorted({consumer.priority for consumer in self.consumers}, reverse=True)
        if len(priorities) <= 1 and not self.single_active:
            self._consumer_groups = []
        else:
            self._consumer_groups = [[consumer for consumer in self.consumers if consumer.priority == level]
                                     for level in priorities]
        self._update_dispatch()

    def consumer_ready(self) -> None:
        """A consumer of this queue got credit back: serve it in the next dispatch round."""
        if self.ready:
            self._mark_dirty(self)


_TTL_GRACE = 0.001  # seconds: RabbitMQ's TTLs are in milliseconds


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
