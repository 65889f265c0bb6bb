"""``x-dead-letter-strategy: at-least-once``: a quorum queue keeps what it dead-letters until
the queues its dead-letter exchange routes it to have taken it.

As RabbitMQ's quorum queues, the strategy applies only with ``x-overflow: reject-publish`` (with
any other overflow the queue dead-letters at most once, as RabbitMQ falls back to). A message
that dies (rejected, expired, past its delivery limit) is republished to the dead-letter
exchange at once; when the exchange is missing, routes it nowhere, or a target queue refuses it
(full, ``reject-publish``), the source keeps the message here instead of dropping it, and tries
again every ``RETRY_INTERVAL`` seconds and whenever it dead-letters another message. A target
that took a message is not given it again. The source removes its entry in the same store batch
in which the last target stored its copy, so a crash at any point leaves the message in one of
them (or briefly both: at least once).

Held messages are not delivered to consumers but still count towards the source's length
limits, as RabbitMQ counts them: with ``reject-publish`` the source refuses new publishes instead
of growing without bound while its dead-letter target is full. They are tried in order, and the
first one that still cannot go stops the round (RabbitMQ's worker keeps them in order too): a
message for a full target holds back later ones for other targets until there is room.
The hold is stored with a durable queue (``h`` records) and survives a restart.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["DeadLetterHold", "HeldDeadLetter", "RETRY_INTERVAL"]

RETRY_INTERVAL = 1.0  # seconds between tries while messages are held


class HeldDeadLetter:
    """One held message: its queue entry, why it died, and the queues that took it already."""

    __slots__ = ("entry", "reason", "taken", "stored")

    def __init__(self, entry: Any, reason: str) -> None:
        self.entry = entry
        self.reason = reason
        self.taken: set[str] = set()
        self.stored = False  # its entry is marked held in the store


class DeadLetterHold:
    """The messages one queue dead-lettered that no target has taken yet, in order."""

    __slots__ = ("held", "bytes", "next_try")

    def __init__(self) -> None:
        self.held: deque[HeldDeadLetter] = deque()
        self.bytes = 0  # body bytes held
        self.next_try = 0.0

    def __len__(self) -> int:
        return len(self.held)

    def __bool__(self) -> bool:
        return bool(self.held)

    def add(self, entry: Any, reason: str, now: float) -> HeldDeadLetter:
        held = HeldDeadLetter(entry, reason)
        if not self.held:
            self.next_try = now + RETRY_INTERVAL
        self.held.append(held)
        self.bytes += len(entry[1].body)
        return held

    def settle(self, try_one: Any, now: float) -> list[HeldDeadLetter]:
        """Try the held messages in order with ``try_one(held) -> bool`` (True: every target has
        it) until one still cannot go; the ones that went, to be forgotten."""
        gone = []
        held = self.held
        while held:
            if not try_one(held[0]):
                break
            first = held.popleft()
            self.bytes -= len(first.entry[1].body)
            gone.append(first)
        self.next_try = now + RETRY_INTERVAL
        return gone

    def due(self, now: float) -> bool:
        return bool(self.held) and now >= self.next_try

    def take_all(self) -> list[HeldDeadLetter]:
        """Empty it (the strategy no longer applies, or the queue is gone)."""
        held = list(self.held)
        self.held.clear()
        self.bytes = 0
        return held

    def view(self, limit: int) -> list[dict[str, Any]]:
        return [{"reason": held.reason, "taken_by": sorted(held.taken)} for held in list(self.held)[:limit]]
