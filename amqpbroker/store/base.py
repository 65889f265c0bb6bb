"""The store's narrow interface. It knows keys and values, not consumers or requeue policy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

__all__ = ["Store", "Recovered", "StoredMessage", "StoredEntry", "StoreError", "StreamChunk"]


class StoreError(Exception):
    """The store cannot be opened, read or written (corrupt, locked, disk full, I/O error)."""


class StoredMessage(NamedTuple):
    routing_raw: bytes  # exchange and routing key as two shortstrs
    header: bytes  # content header payload as published
    body: bytes
    arrived: float | None  # wall-clock seconds it arrived, where a TTL needed it


class StoredEntry(NamedTuple):
    """One entry of a durable queue, as the store holds it."""

    seq: int
    message_id: int  # the shared message it refers to, or 0 when the message is inline
    delivered: bool  # handed out at least once
    persistent: bool  # inline entries only: transient ones do not outlive a restart
    inline: StoredMessage | None  # the entry's own copy of its message (paged-out entries)


class StreamChunk(NamedTuple):
    """The index record of one chunk of a stream (a run of messages written together)."""

    first_offset: int
    timestamp: float  # wall-clock seconds of the chunk's first message
    count: int  # messages in the chunk
    nbytes: int  # body bytes of the chunk
    segment_start: bool  # the chunk starts a new segment (the unit retention drops)


@dataclass
class Recovered:
    """The definitions and shared messages a restart needs, read once before the broker serves.
    Queue entries are read per queue with :meth:`Store.queue_entries`."""

    exchanges: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    bindings: list[dict[str, Any]] = field(default_factory=list)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    # deduplication caches: owner -> [(value, expires, remembered at)]
    deduplication: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    # (queue id, seq) -> times returned, for entries that were
    delivery_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    # (queue id, seq) -> when its redelivery backoff ends (wall clock), for entries that back off
    retry_due: dict[tuple[int, int], float] = field(default_factory=dict)
    # (queue id, seq) -> reason, for entries held for dead-lettering at least once
    held_dead_letters: dict[tuple[int, int], str] = field(default_factory=dict)
    delivered_marks: set[tuple[int, int]] = field(default_factory=set)  # (queue id, seq) of inline entries
    # messages held by delayed exchanges: (delay id, vhost, exchange, due time, message)
    delayed: list[tuple[int, str, str, float, StoredMessage]] = field(default_factory=list)
    # access metadata records: (kind, key, value), the broker's encoding
    metadata: list[tuple[str, str, bytes]] = field(default_factory=list)
    # definition records that could not be read, each named for the operator (they are skipped)
    unreadable: list[str] = field(default_factory=list)


class Store(Protocol):
    def recover(self) -> Recovered:
        """Read definitions and shared messages, drop transient pages (blocking; before serving)."""

    def queue_entries(self, queue_id: int, *, with_messages: bool) -> Iterator[StoredEntry]:
        """A durable queue's entries in order (blocking; before serving). Without
        ``with_messages`` the ``inline`` copies are left unread (None)."""

    def write(self, ops: list[tuple]) -> None:
        """Apply journal operations as one atomic batch, without waiting for the disk."""

    def write_pages(self, pages: list[tuple]) -> None:
        """Apply transient page operations, without the WAL (they never outlive a restart)."""

    def read_page(self, durable: bool, page_id: int, from_seq: int, count: int,
                  max_bytes: int) -> list[tuple[int, StoredMessage]]:
        """Up to ``count`` paged-out entries ``(seq, message)`` of a queue from ``from_seq`` on,
        stopping once ``max_bytes`` of bodies were read (blocking: a worker thread calls it)."""

    def stream_chunks(self, stream_id: int) -> list[StreamChunk]:
        """A stream's chunk index records in offset order (blocking; at recovery)."""

    def stream_offsets(self, stream_id: int) -> dict[str, int]:
        """The offsets a stream's named consumers tracked, by name (blocking; at recovery)."""

    def read_stream(self, stream_id: int, from_offset: int, count: int, max_bytes: int,
                    filters: frozenset[str] | None,
                    match_unfiltered: bool) -> tuple[list[tuple[int, StoredMessage]], int]:
        """Scan a stream's messages from ``from_offset`` on, in order (blocking: a worker thread
        calls it). A message is included when ``filters`` is None, when its filter value is in
        ``filters``, or when it has none and ``match_unfiltered`` is true. Stops after ``count``
        included messages, once included bodies reach ``max_bytes`` (one message at least), or
        after scanning ``50 * count`` messages. Returns the included ``(offset, message)`` pairs
        and the offset after the last one scanned (``from_offset`` when none was: the end)."""

    def sync(self) -> None:
        """Make every write so far durable (blocking; called from a worker thread)."""

    def close(self) -> None: ...
