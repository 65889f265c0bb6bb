"""A stream's log, as the broker holds it: which offsets exist, where its chunks and segments
begin, and the newest messages (the tail). Sans-IO: the messages themselves are in the store.

Offsets count up from 0, one per message, and are never reused. A **chunk** is the messages a
stream took in one batch of the broker's input (one store write batch): the unit of ``last`` (its
first offset) and of the timestamp index (its first message's arrival). A **segment** is a run of
chunks of about ``x-stream-max-segment-size-bytes``: the unit of retention, which drops whole
segments from the start, never the one being written, as RabbitMQ does.

The chunk index is four arrays (8 bytes per chunk and field), so a stream of a million messages
in chunks of a hundred costs about 300 KB here; message bodies stay in the store, except the tail:
the newest messages up to a window (``tail_messages``, ``tail_bytes``), from which consumers that
keep up are served without a store read.
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from amqpbroker.broker.message import Message

__all__ = ["StreamLog", "Chunk", "Tailed"]

TAIL_SLACK = 256  # messages the tail may pass its bound by within a batch (trimmed at its end)


class Chunk(NamedTuple):
    first_offset: int
    timestamp: float  # arrival of its first message (wall-clock seconds)
    count: int
    nbytes: int  # body bytes
    segment_start: bool


class Tailed(NamedTuple):
    """A message in the tail, as a consumer receives it (its header carries its offset)."""

    message: Message
    filter_value: str | None


class StreamLog:
    __slots__ = ("first", "next", "nbytes", "_firsts", "_times", "_sizes", "_segment_starts",
                 "_open_first", "_open_time", "_open_bytes", "segment_bytes", "max_segment_bytes",
                 "tail", "tail_base", "tail_bytes", "tail_messages", "tail_max_bytes")

    def __init__(self, *, max_segment_bytes: int, tail_messages: int, tail_bytes: int) -> None:
        self.first = 0  # oldest offset retained
        self.next = 0  # offset of the next message
        self.nbytes = 0  # body bytes retained
        self._firsts = array("q")  # per closed chunk: first offset
        self._times = array("d")  # ... timestamp
        self._sizes = array("q")  # ... body bytes
        self._segment_starts = array("b")  # ... 1 where a segment begins
        self._open_first: int | None = None  # the chunk being appended to in this batch
        self._open_time = 0.0
        self._open_bytes = 0
        self.segment_bytes = 0  # body bytes of the segment being written
        self.max_segment_bytes = max_segment_bytes
        self.tail: deque[Tailed] = deque()  # offsets tail_base .. next - 1
        self.tail_base = 0
        self.tail_bytes = 0
        self.tail_messages = tail_messages
        self.tail_max_bytes = tail_bytes

    @property
    def count(self) -> int:
        """Messages retained."""
        return self.next - self.first

    @property
    def chunk_count(self) -> int:
        return len(self._firsts) + (self._open_first is not None)

    @property
    def segment_count(self) -> int:
        segments = sum(self._segment_starts)
        if self._open_first is not None and self._opens_segment():
            segments += 1
        return segments

    # ---------------------------------------------------------------- writing

    def append(self, message: Message, filter_value: str | None, now: float) -> int:
        """Take the next message (its header already carries its offset): its offset."""
        offset = self.next
        self.next = offset + 1
        size = len(message.body)
        if self._open_first is None:
            self._open_first, self._open_time, self._open_bytes = offset, now, 0
        self._open_bytes += size
        self.nbytes += size
        tail = self.tail
        tail.append(Tailed(message, filter_value))
        self.tail_bytes += size
        if len(tail) > self.tail_messages + TAIL_SLACK or self.tail_bytes > self.tail_max_bytes:
            self._trim_tail()
        return offset

    def _trim_tail(self) -> None:
        """Back within the tail's bounds (trimmed once it is ``TAIL_SLACK`` messages over, not per append)."""
        tail = self.tail
        while len(tail) > self.tail_messages or (self.tail_bytes > self.tail_max_bytes and len(tail) > 1):
            self.tail_bytes -= len(tail.popleft().message.body)
            self.tail_base += 1

    @property
    def chunk_open(self) -> bool:
        return self._open_first is not None

    def _opens_segment(self) -> bool:
        return not self._firsts or self.segment_bytes >= self.max_segment_bytes

    def close_chunk(self) -> Chunk | None:
        """End the chunk of this batch: its index entry (for the store), or None if none is open."""
        first = self._open_first
        if first is None:
            return None
        if len(self.tail) > self.tail_messages:
            self._trim_tail()
        segment_start = self._opens_segment()
        if segment_start:
            self.segment_bytes = 0
        chunk = Chunk(first, self._open_time, self.next - first, self._open_bytes, segment_start)
        self._add(chunk)
        self._open_first = None
        return chunk

    def _add(self, chunk: Chunk) -> None:
        self._firsts.append(chunk.first_offset)
        self._times.append(chunk.timestamp)
        self._sizes.append(chunk.nbytes)
        self._segment_starts.append(1 if chunk.segment_start else 0)
        self.segment_bytes += chunk.nbytes

    # ---------------------------------------------------------------- recovery

    def restore(self, chunks: list[Chunk]) -> None:
        """The store's chunk index, in order (before any append); the tail stays empty."""
        for chunk in chunks:
            if chunk.segment_start:
                self.segment_bytes = 0
            self._add(chunk)
            self.nbytes += chunk.nbytes
        if chunks:
            self.first = chunks[0].first_offset
            self.next = self.tail_base = chunks[-1].first_offset + chunks[-1].count
            if not self._segment_starts[0]:
                self._segment_starts[0] = 1

    # ---------------------------------------------------------------- reading

    def tailed(self, offset: int) -> Tailed | None:
        """The message at ``offset`` if it is in the tail."""
        index = offset - self.tail_base
        if 0 <= index < len(self.tail):
            return self.tail[index]
        return None

    def last_chunk_start(self) -> int:
        """``x-stream-offset: last``: the first offset of the newest chunk (``next`` if empty)."""
        if self._open_first is not None:
            return self._open_first
        if self._firsts and self.count:
            return max(self._firsts[-1], self.first)
        return self.next

    def offset_at(self, timestamp: float) -> int:
        """The first offset of the first chunk that began at or after ``timestamp`` (RabbitMQ
        starts at a chunk boundary); ``next`` when every chunk is older."""
        index = bisect.bisect_left(self._times, timestamp)
        if index < len(self._firsts):
            return max(self._firsts[index], self.first)
        if self._open_first is not None and self._open_time >= timestamp:
            return self._open_first
        return self.next

    def first_timestamp(self) -> float | None:
        return self._times[0] if self._times else (self._open_time if self._open_first is not None else None)

    def last_timestamp(self) -> float | None:
        if self._open_first is not None:
            return self._open_time
        return self._times[-1] if self._times else None

    # ---------------------------------------------------------------- retention

    def retain(self, now: float, max_bytes: int | None, max_age: float | None) -> int | None:
        """Drop the oldest whole segments while the stream is over ``max_bytes`` or a segment's
        newest chunk is older than ``max_age`` seconds; never the segment being written. The new
        first offset when something went, else None."""
        dropped = False
        while True:
            try:  # chunks [0, end) are the oldest segment (the first chunk always starts one)
                end = self._segment_starts.index(1, 1)
            except ValueError:  # one segment: the one being written stays
                break
            size = sum(self._sizes[:end])
            too_big = max_bytes is not None and self.nbytes > max_bytes
            too_old = max_age is not None and self._times[end - 1] < now - max_age
            if not (too_big or too_old):
                break
            self.first = self._firsts[end]
            self.nbytes -= size
            del self._firsts[:end], self._times[:end], self._sizes[:end], self._segment_starts[:end]
            dropped = True
        if not dropped:
            return None
        if self.tail_base < self.first:  # (a tail longer than what is retained)
            drop = min(self.first - self.tail_base, len(self.tail))
            for _ in range(drop):
                self.tail_bytes -= len(self.tail.popleft().message.body)
            self.tail_base += drop
        return self.first
