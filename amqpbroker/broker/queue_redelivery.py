"""A queue's returned messages: the part of :class:`~amqpbroker.broker.queue.Queue` that takes back
what consumers rejected, nacked or left unacked.

A returned entry goes back to its original position among the ready ones (by ``seq``), marked
redelivered, as RabbitMQ does. Every queue counts returns per message (``delivery_counts``, kept
with a stored message): past ``x-delivery-limit`` (the vhost's default for its type otherwise) a
message is dead-lettered, or dropped with a rate-limited warning, instead of requeued; a count
makes the general dispatch path add ``x-delivery-count`` to the delivery (``delivery_header``).
With a redelivery backoff (``x-delayed-retry-*``, retry.py) returned entries wait in
``retrying``, a heap of ``(due, seq, entry)``, until the queue's tick (queue_limits.py) releases
them (:meth:`RedeliveryMixin._release_due`).

:class:`RedeliveryMixin` holds no state of its own (``__slots__ = ()``): it works on the Queue's
``ready``, ``ready_bytes``, ``retry``, ``retrying``, ``delivery_counts``, ``delivery_limit``,
``counters``, ``type``, ``options``, ``host``, ``consumers``, ``queue_id``, ``journal``,
``deleted``, ``general_dispatch``, ``name`` and ``vhost``, and calls its ``discard``,
``_mark_dirty``, ``_update_dispatch`` and ``_untime_if_idle`` (queue_limits.py).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.dead_letter import DELIVERY_LIMIT
from amqpbroker.broker.retry import DEFAULT_RETRY_LIMIT, RetryPolicy
from amqpbroker.codec.content import decode_properties, encode_content_header
from amqpbroker.codec.tables import TableError

if TYPE_CHECKING:
    from amqpbroker.broker.queue import Entry

__all__ = ["RedeliveryMixin", "LIMIT_WARNING_SECONDS"]

log = logging.getLogger("amqpbroker.queue")
LIMIT_WARNING_SECONDS = 10.0


class RedeliveryMixin:
    """Requeue, redelivery backoff, delivery counts and the delivery limit (see the module's
    docstring); mixed into ``Queue``."""

    __slots__ = ()

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

    def restore_retrying(self, waiting: list[tuple[float, Entry]]) -> None:
        """Recovery: entries whose redelivery backoff had not ended, with its end."""
        for due, entry in waiting:
            heapq.heappush(self.retrying, (due, entry[0], entry))
        if waiting:
            self.host.timed.add(self)

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

    # ---------------------------------------------------------------- delivery counts and limit

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
