"""Message deduplication, with LavinMQ's (and the RabbitMQ plugin's) arguments.

A queue or an exchange declared with ``x-message-deduplication: true`` remembers the value of
each message's deduplication header (``x-deduplication-header`` names it; by default the header
``x-deduplication-header``); a later message with a value it remembers is a duplicate: confirmed
to its publisher and dropped (not enqueued; an exchange does not route it). ``x-cache-size``
bounds how many values are remembered (the oldest go first; default 10,000), ``x-cache-ttl``
how long (ms; a message's own ``x-cache-ttl`` header overrides it; none: until pushed out).
A message without the header is never a duplicate.

Unlike LavinMQ's in-memory cache, a durable queue's or exchange's cache is stored (journal
records ``("dedup", owner, key, expires, remembered at)`` / ``("dedup-", owner, key)``) and survives
a restart, oldest first as before it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["Deduplication", "deduplication_error", "DEFAULT_CACHE_SIZE", "DEFAULT_HEADER"]

DEFAULT_CACHE_SIZE = 10_000
DEFAULT_HEADER = "x-deduplication-header"
_NEVER = 0.0  # stored expiry of an entry without a TTL


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def deduplication_error(arguments: dict[str, Any]) -> str | None:
    """What is wrong with the deduplication arguments (as a 406 reason), or None."""
    enabled = arguments.get("x-message-deduplication")
    if enabled is None:
        return None
    if not isinstance(enabled, bool):
        return "x-message-deduplication must be a boolean"
    size = arguments.get("x-cache-size")
    if size is not None and (not _is_int(size) or size <= 0):
        return "x-cache-size must be a positive integer"
    ttl = arguments.get("x-cache-ttl")
    if ttl is not None and (not _is_int(ttl) or ttl < 0):
        return "x-cache-ttl must be a non-negative integer (ms)"
    header = _text(arguments.get("x-deduplication-header", DEFAULT_HEADER))
    if not isinstance(header, str) or not header:
        return "x-deduplication-header must be a header name"
    return None


class Deduplication:
    """One queue's or exchange's cache of deduplication values (``owner`` names it in the store,
    or is None where nothing is stored)."""

    __slots__ = ("header", "size", "ttl", "owner", "journal", "_seen", "duplicates")

    def __init__(self, arguments: dict[str, Any], *, owner: str | None, journal: Any) -> None:
        self.header = _text(arguments.get("x-deduplication-header", DEFAULT_HEADER))
        self.size: int = arguments.get("x-cache-size") or DEFAULT_CACHE_SIZE
        ttl = arguments.get("x-cache-ttl")
        self.ttl: float | None = ttl / 1000 if ttl else None
        self.owner = owner
        self.journal = journal
        self._seen: OrderedDict[str, float] = OrderedDict()  # value -> expiry (0.0: never)
        self.duplicates = 0

    @classmethod
    def of(cls, arguments: dict[str, Any], *, owner: str | None, journal: Any) -> Deduplication | None:
        return cls(arguments, owner=owner, journal=journal) if arguments.get("x-message-deduplication") else None

    def __len__(self) -> int:
        return len(self._seen)

    def is_duplicate(self, headers: dict[str, Any] | None, now: float, *, remember: bool = True) -> bool:
        """Is this message (its headers) a duplicate? If not, its value is remembered from now
        (``remember`` False: only once :meth:`remember` is called, when the message was taken)."""
        if not headers or self.header not in headers:
            return False
        expires = self._seen.get(_key(headers[self.header]))
        if expires is not None and (expires == _NEVER or expires > now):
            self.duplicates += 1
            return True
        if remember:
            self.remember(headers, now)
        return False

    def remember(self, headers: dict[str, Any] | None, now: float) -> None:
        """Remember the message's value (a message without the header: nothing)."""
        if not headers or self.header not in headers:
            return
        ttl = headers.get("x-cache-ttl")
        seconds = ttl / 1000 if _is_int(ttl) and ttl > 0 else self.ttl
        self._remember(_key(headers[self.header]), now + seconds if seconds else _NEVER, now)

    def _remember(self, key: str, expires: float, now: float) -> None:
        seen = self._seen
        seen.pop(key, None)
        seen[key] = expires
        if self.owner is not None:
            self.journal.definition(("dedup", self.owner, key, expires, now))
        while len(seen) > self.size:
            old, _ = seen.popitem(last=False)
            if self.owner is not None:
                self.journal.definition(("dedup-", self.owner, old))

    def restore(self, entries: list[tuple[str, float, float]], now: float) -> list[str]:
        """Recovery: the stored ``(value, expires, remembered at)``; returns the values to drop
        from the store (expired, or past the cache's size)."""
        dropped = []
        for key, expires, _ in sorted(entries, key=lambda entry: entry[2]):
            if expires != _NEVER and expires <= now:
                dropped.append(key)
            else:
                self._seen[key] = expires
        while len(self._seen) > self.size:
            dropped.append(self._seen.popitem(last=False)[0])
        return dropped

    def view(self) -> dict[str, Any]:
        return {"header": self.header, "cache_size": self.size, "cached": len(self._seen),
                "duplicates": self.duplicates}


def _key(value: Any) -> str:
    """A header value as a cache key: text as it is, bytes in hex (distinct values stay
    distinct), anything else by its type and repr."""
    if isinstance(value, bytes):
        return "bytes:" + value.hex()
    return value if isinstance(value, str) else f"{type(value).__name__}:{value!r}"
