"""Ready messages of a priority queue (``x-max-priority``): one FIFO per priority level, the
highest served first. It offers the part of ``collections.deque``'s interface that ``Queue``
uses, so a priority queue differs from a plain one only in what its ``ready`` is.

A message's priority is its ``priority`` property, capped at the queue's maximum; a message
without one has priority 0, as in RabbitMQ.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator

from amqpbroker.codec.content import priority

__all__ = ["PriorityReady"]

Entry = tuple  # (seq, message, redelivered), as in queue.py


class PriorityReady:
    __slots__ = ("_levels", "_maximum", "_count")

    def __init__(self, maximum: int) -> None:
        self._maximum = maximum
        self._levels: list[deque[Entry]] = [deque() for _ in range(maximum + 1)]
        self._count = 0

    def _level(self, entry: Entry) -> deque[Entry]:
        return self._levels[min(priority(entry[1].header) or 0, self._maximum)]

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Entry]:
        for level in reversed(self._levels):
            yield from level

    def __getitem__(self, index: int) -> Entry:
        if index != 0:
            raise IndexError("only the head of a priority queue can be looked at")
        for level in reversed(self._levels):
            if level:
                return level[0]
        raise IndexError("empty")

    def append(self, entry: Entry) -> None:
        self._level(entry).append(entry)
        self._count += 1

    def extend(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.append(entry)

    def popleft(self) -> Entry:
        for level in reversed(self._levels):
            if level:
                self._count -= 1
                return level.popleft()
        raise IndexError("pop from an empty priority queue")

    def put_back(self, entries: list[Entry]) -> None:
        """Requeued entries go back to their original places (by arrival) in their levels."""
        for entry in entries:
            level = self._level(entry)
            if not level or entry[0] < level[0][0]:
                level.appendleft(entry)
            else:
                index = bisect.bisect_left(level, entry[0], key=lambda item: item[0])
                level.insert(index, entry)
            self._count += 1

    def clear(self) -> None:
        for level in self._levels:
            level.clear()
        self._count = 0
