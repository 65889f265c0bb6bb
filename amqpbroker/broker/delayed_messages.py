"""The messages a vhost's ``x-delayed-message`` exchanges hold until they are due.

One heap by due time (the timer pops what is due), and a count per exchange, so that an operator
sees what waits (``/api/exchanges/{vhost}/{name}/delayed``, Prometheus): how many, the next due
time, the first ones, and can purge them. A persistent message held by a durable exchange is
stored (``("delayed", ...)`` journal records) until it is routed or purged.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from amqpbroker.broker.message import Message

__all__ = ["DelayedMessages"]

Held = tuple  # (due: float, delay id: int, exchange name: str, message: Message)


class DelayedMessages:
    def __init__(self, vhost_name: str, journal: Any) -> None:
        self.vhost_name = vhost_name
        self.journal = journal
        self._heap: list[Held] = []
        self.counts: dict[str, int] = {}  # exchange name -> messages held

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, exchange: Any, message: Message, due: float, delay_id: int | None = None) -> None:
        """Keep ``message`` until ``due`` (``delay_id`` given: recovery putting a stored one back)."""
        journal = self.journal
        if delay_id is None:
            delay_id = journal.next_delay_id
            journal.next_delay_id += 1
            if journal.enabled and exchange.durable and message.persistent:
                journal.definition(("delayed", delay_id, self.vhost_name, exchange.name, due, message))
                message.durable = message.has_stored_copy = True
        else:
            message.durable = message.has_stored_copy = True
        heapq.heappush(self._heap, (due, delay_id, exchange.name, message))
        self.counts[exchange.name] = self.counts.get(exchange.name, 0) + 1

    def pop_due(self, now: float) -> Iterator[tuple[str, Message]]:
        """Each message due by ``now``, with its exchange's name, taken out (and out of the store)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, delay_id, exchange_name, message = heapq.heappop(heap)
            self._forget(delay_id, exchange_name, message)
            yield exchange_name, message

    def _forget(self, delay_id: int, exchange_name: str, message: Message) -> None:
        if message.has_stored_copy:
            self.journal.definition(("delayed-", delay_id))
        left = self.counts.get(exchange_name, 0) - 1
        if left > 0:
            self.counts[exchange_name] = left
        else:
            self.counts.pop(exchange_name, None)

    @property
    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def first(self, exchange_name: str, count: int) -> list[tuple[float, Message]]:
        """The ``count`` messages ``exchange_name`` holds that are due first, with their due times."""
        if count <= 0 or exchange_name not in self.counts:
            return []
        mine = (held for held in self._heap if held[2] == exchange_name)
        return [(held[0], held[3]) for held in heapq.nsmallest(count, mine, key=lambda held: (held[0], held[1]))]

    def purge(self, exchange_name: str) -> int:
        """Drop every message ``exchange_name`` holds; how many there were."""
        if exchange_name not in self.counts:
            return 0
        kept = []
        for held in self._heap:
            if held[2] == exchange_name:
                self._forget(held[1], exchange_name, held[3])
            else:
                kept.append(held)
        dropped = len(self._heap) - len(kept)
        heapq.heapify(kept)
        self._heap = kept
        return dropped

    def clear(self) -> None:
        """The vhost is deleted: everything goes, from the store too."""
        for _, delay_id, exchange_name, message in self._heap:
            if message.has_stored_copy:
                self.journal.definition(("delayed-", delay_id))
        self._heap.clear()
        self.counts.clear()
