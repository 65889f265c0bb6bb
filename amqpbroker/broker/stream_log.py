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
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from amqpbroker.broker.message import Message

__all__ = ["StreamLog", "Chunk", "Tailed"]

TAIL_SLACK = 256  # messages the tail may pass its bound by within a batch (trimmed at its end)
TAIL_SLACK_BYTES = 1 << 20  # ... and bytes


class Chunk(NamedTuple):
    first_offset: int
    timestamp: float  # arrival of its first message (wall-clock seconds)
    count: int
    nbytes: int  # body bytes
    segment_start: bool


# A message in the tail: the message as published, the content header a consumer receives (it
# carries the offset; None: the message's own) and its filter value. A plain tuple, one per append.
Tailed = tuple["Message", "bytes | None", "str | None"]


class StreamLog:
    __slots__ = ("first", "next", "appended_bytes", "_dropped_bytes", "_firsts", "_times", "_sizes",
                 "_segment_starts", "_open_first", "_open_time", "_open_start", "segment_bytes",
                 "max_segment_bytes", "tail", "tail_base", "_tail_ends", "_tail_start", "tail_messages",
                 "tail_max_bytes", "_trim_count", "_trim_total")

    def __init__(self, *, max_segment_bytes: int, tail_messages: int, tail_bytes: int) -> None:
        self.first = 0  # oldest offset retained
        self.next = 0  # offset of the next message
        self.appended_bytes = 0  # body bytes ever appended (restored ones included)
        self._dropped_bytes = 0  # ... and removed by retention since
        self._firsts = array("q")  # per closed chunk: first offset
        self._times = array("d")  # ... timestamp
        self._sizes = array("q")  # ... body bytes
        self._segment_starts = array("b")  # ... 1 where a segment begins
        self._open_first: int | None = None  # the chunk being appended to in this batch
        self._open_time = 0.0
        self._open_start = 0  # appended_bytes when it opened
        self.segment_bytes = 0  # body bytes of the segment being written
        self.max_segment_bytes = max_segment_bytes
        # The tail: offsets tail_base .. next - 1. Its bounds are kept per batch, not per append:
        # once a chunk closes (or the batch runs past them by TAIL_SLACK), the oldest go at once.
        self.tail: list[Tailed] = []
        self.tail_base = 0
        self._tail_ends = array("q")  # per tail message: appended_bytes once it was appended
        self._tail_start = 0  # appended_bytes before the oldest tail message
        self.tail_messages = tail_messages
        self.tail_max_bytes = tail_bytes
        self._trim_count = tail_messages + TAIL_SLACK  # appends trim the tail past these
        self._trim_total = tail_bytes + TAIL_SLACK_BYTES

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

    def append(self, message: Message, filter_value: str | None, now: float, header: bytes | None = None) -> int:
        """Take the next message, whose deliveries carry ``header`` (with its offset): its offset."""
        offset = self.next
        self.next = offset + 1
        if self._open_first is None:
            self._open_first, self._open_time, self._open_start = offset, now, self.appended_bytes
        total = self.appended_bytes = self.appended_bytes + len(message.body)
        self.tail.append((message, header, filter_value))
        self._tail_ends.append(total)
        if len(self.tail) > self._trim_count or total > self._trim_total:
            self._trim_tail()
        return offset

    @property
    def tail_bytes(self) -> int:
        return self.appended_bytes - self._tail_start

    @property
    def nbytes(self) -> int:
        """Body bytes retained."""
        return self.appended_bytes - self._dropped_bytes

    def _trim_tail(self) -> None:
        """Back within the tail's bounds: the oldest messages over them go, at once."""
        ends = self._tail_ends
        drop = len(ends) - self.tail_messages
        over_bytes = self.appended_bytes - self._tail_start - self.tail_max_bytes
        if over_bytes > 0:  # the first ``n`` whose bytes cover the excess, the newest kept whatever its size
            drop = max(drop, min(bisect.bisect_left(ends, self._tail_start + over_bytes) + 1, len(ends) - 1))
        if drop > 0:
            self._drop_tail(drop)
        self._trim_total = self._tail_start + self.tail_max_bytes + TAIL_SLACK_BYTES

    def _drop_tail(self, count: int) -> None:
        """Drop the ``count`` oldest tail messages."""
        self._tail_start = self._tail_ends[count - 1]
        del self.tail[:count], self._tail_ends[:count]
        self.tail_base += count

    def clear_tail(self) -> None:
        if self.tail:
            self._drop_tail(len(self.tail))

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
        if len(self.tail) > self.tail_messages or self.tail_bytes > self.tail_max_bytes:
            self._trim_tail()
        segment_start = self._opens_segment()
        if segment_start:
            self.segment_bytes = 0
        chunk = Chunk(first, self._open_time, self.next - first, self.appended_bytes - self._open_start,
                      segment_start)
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
            self.appended_bytes += chunk.nbytes
        self._tail_start = self.appended_bytes  # (the tail is empty)
        self._trim_total = self._tail_start + self.tail_max_bytes + TAIL_SLACK_BYTES
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
            self._dropped_bytes += size
            del self._firsts[:end], self._times[:end], self._sizes[:end], self._segment_starts[:end]
            dropped = True
        if not dropped:
            return None
        if self.tail_base < self.first:  # (a tail longer than what is retained)
            drop = min(self.first - self.tail_base, len(self.tail))
            if drop:
                self._drop_tail(drop)
        return self.first
