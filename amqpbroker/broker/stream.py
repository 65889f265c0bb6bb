"""Streams (``x-queue-type: stream``): an append-only log that consumers read without removing
anything, each from its own offset, as RabbitMQ's stream queues over AMQP 0-9-1.

:class:`StreamQueue` takes the place of a :class:`~amqpbroker.broker.queue.Queue` for the rest of
the broker (routing, bindings, listings, consumers, acks): the same interface, its own behaviour.

- **Publish** appends: the message gets the next offset and its arrival time; its content header
  gets an ``x-stream-offset`` header (once per message, shared by every delivery); it is stored
  whatever its delivery mode, so a publisher confirm waits for the sync. Messages of one batch of
  input form a chunk (``stream_log.py``).
- **Consume** (:class:`StreamConsumer`, ``stream_consumers.py``): manual acks and a prefetch are required, as RabbitMQ;
  ``x-stream-offset`` says where to start (``stream_offsets.py``). A consumer is served from the
  log's tail while it keeps up; one further behind gets its messages from the store, read in a
  worker thread a window at a time, never on the loop: shared by the consumers that take every
  message (``stream_reads.py``), per consumer for filtered ones (``StreamConsumer.read_wanted``). An ack only returns credit; a consumer at the end waits for new messages.
- **Filtering**: a message's ``x-stream-filter-value`` header against a consumer's
  ``x-stream-filter`` values (and ``x-stream-match-unfiltered``), exactly and on the server: a
  consumer gets only the messages it asked for (RabbitMQ filters chunks through a Bloom filter
  and leaves false positives to the client; a client that filters again still works here).
- **Offset tracking** (LavinMQ's extension): a consumer whose tag the client chose and that asks
  with ``x-stream-automatic-offset-tracking: true`` (or a void ``x-stream-offset``) has its
  position stored, durably, under its tag; consuming again with that tag goes on from there.
- **Retention** (``x-max-length-bytes``, ``x-max-age``) drops whole segments from the start,
  after appends and every tick; a consumer whose offset went continues from the oldest message.
"""

from __future__ import annotations

from typing import Any

from amqpbroker.broker.message import Message
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.stream_consumers import OFFSET_HEADER, StreamConsumer, StreamConsumersMixin
from amqpbroker.broker.stream_log import Chunk, StreamLog
from amqpbroker.broker.stream_offsets import parse_max_age
from amqpbroker.broker.stream_reads import SharedReads
from amqpbroker.codec.content import StreamStamp
from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = ["StreamQueue", "StreamConsumer", "OFFSET_HEADER", "DEFAULT_SEGMENT_BYTES"]

DEFAULT_SEGMENT_BYTES = 500_000_000  # RabbitMQ's default x-stream-max-segment-size-bytes
AGE_CHECK_SECONDS = 1.0  # how often x-max-age retention is looked at (and after every batch when over size)
TAIL_MESSAGES = 4096  # the tail a stream keeps in memory, at most (and the paging window's bytes)


class StreamQueue(StreamConsumersMixin, Queue):
    """A queue of type stream (see the module's docstring); durable, in the store."""

    __slots__ = ("log", "max_bytes", "max_age", "tracked", "read_retry_at", "reads", "aged_at", "appended",
                 "stamp")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        arguments = self.arguments
        journal = self.journal
        self.log = StreamLog(
            max_segment_bytes=arguments.get("x-stream-max-segment-size-bytes") or DEFAULT_SEGMENT_BYTES,
            tail_messages=min(journal.window_messages, TAIL_MESSAGES) if journal.enabled else 1 << 62,
            tail_bytes=journal.window_bytes)
        self.max_bytes: int | None = None
        self.max_age: float | None = None
        self.tracked: dict[str, int] = {}  # consumer name -> offset (automatic offset tracking)
        # a store read failed or came back short: none is asked for before then (wall clock; 0: none failed)
        self.read_retry_at = 0.0
        self.reads = SharedReads(self)  # what unfiltered consumers behind the tail read together
        self.aged_at = 0.0  # when x-max-age was last looked at (once a second)
        # this batch's appends, stored as one chunk: (filter value, message, its header with the offset)
        self.appended: list[tuple[str | None, Message, bytes]] = []
        self.stamp = StreamStamp(OFFSET_HEADER)  # each append's header: its offset in, its filter value out
        self._retention(arguments)

    def _retention(self, arguments: dict[str, Any]) -> None:
        self.max_bytes = arguments.get("x-max-length-bytes")
        age = arguments.get("x-max-age")
        self.max_age = parse_max_age(age) if age is not None else None
        if self.max_age is not None:
            self.host.timed.add(self)

    def apply_arguments(self, arguments: dict[str, Any]) -> None:
        """Its policies changed (``max-age``, ``max-length-bytes``, ``stream-max-segment-size-bytes``)."""
        self._retention(arguments)
        segment = arguments.get("x-stream-max-segment-size-bytes")
        if segment:
            self.log.max_segment_bytes = segment
        self._apply_retention(self.host.clock())

    @property
    def message_count(self) -> int:
        return self.log.count

    @property
    def messages_total(self) -> int:
        """The messages in the stream (one being read is still in it: not counted twice)."""
        return self.log.count

    def view(self) -> dict[str, Any]:
        """What the management API shows of the log (``stream`` in a queue's JSON)."""
        log = self.log
        return {"first_offset": log.first if log.count else None, "last_offset": log.next - 1 if log.count else None,
                "next_offset": log.next, "bytes": log.nbytes, "segments": log.segment_count,
                "chunks": log.chunk_count, "first_timestamp": log.first_timestamp(),
                "last_timestamp": log.last_timestamp(), "max_length_bytes": self.max_bytes,
                "max_age_seconds": self.max_age, "max_segment_size_bytes": log.max_segment_bytes,
                "tail_messages": len(log.tail)}

    def __repr__(self) -> str:
        return f"<StreamQueue {self.name!r} offsets={self.log.first}..{self.log.next}>"

    # ---------------------------------------------------------------- messages in

    def enqueue(self, message: Message) -> bool:
        """Append: the message with a content header that carries its offset, stored (its confirm
        waits for the sync) and kept in the tail. The message itself is shared, not copied: the
        header is the stream's own."""
        log = self.log
        stamp = self.stamp
        header = stamp.stamp(message.header, log.next)
        filter_value = stamp.filter_value
        if filter_value is not None and len(filter_value) > 63 and len(filter_value.encode()) > 255:
            filter_value = None  # (the store keeps a filter value as a shortstr: taken as none)
        first_of_batch = not log.chunk_open
        log.append(message, filter_value, self.host.clock(), header)
        journal = self.journal
        if journal.enabled:
            self.appended.append((filter_value, message, header))
            message.durable = message.has_stored_copy = True
            if first_of_batch:
                journal.open_streams.add(self)
        if first_of_batch:  # the chunk closes at dispatch, and consumers at the end wait for it
            self._mark_dirty(self)
        return True

    def close_chunk(self) -> None:
        """The batch is over: its appends are a chunk; retention looks at the log after it."""
        chunk = self.log.close_chunk()
        if chunk is None:
            return
        if self.deleted:  # deleted in the batch that appended: nothing more for the store
            self.appended = []
            return
        self._next_seq = self.log.next
        self.ready_bytes = self.log.nbytes
        if self.journal.enabled:
            appended, self.appended = self.appended, []
            self.journal.stream_chunk(self, chunk, appended)
        if self.max_bytes is not None and self.log.nbytes > self.max_bytes:
            self._apply_retention(self.host.clock())

    def _apply_retention(self, now: float) -> None:
        first = self.log.retain(now, self.max_bytes, self.max_age)
        if first is None:
            return
        self.reads.clear()
        self.ready_bytes = self.log.nbytes
        if self.journal.enabled:
            self.journal.trim_stream(self, first)

    def tick(self, now: float) -> bool:
        if self.max_age is not None and now - self.aged_at >= AGE_CHECK_SECONDS:
            self.aged_at = now
            self._apply_retention(now)
        if self.read_retry_at:
            if now >= self.read_retry_at:
                self.read_retry_at = 0.0
                self._mark_dirty(self)  # (its consumers ask again)
        elif self.max_age is None:
            self.host.timed.discard(self)
        return False  # (x-expires is refused for streams)

    # ---------------------------------------------------------------- recovery

    def restore_stream(self, chunks: list[Chunk], tracked: dict[str, int]) -> None:
        self.log.restore(chunks)
        self._next_seq = self.log.next
        self.ready_bytes = self.log.nbytes
        self.tracked = dict(tracked)

    # ---------------------------------------------------------------- what streams refuse

    def get(self) -> None:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED,
                              f"basic.get not supported by stream queues queue '{self.name}' in vhost '{self.vhost}'",
                              60, 70)

    def purge(self) -> int:
        if self.deleted:  # (its records went with its definition; RabbitMQ reports none deleted)
            self.log.clear_tail()
            self.reads.clear()
            return 0
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED,
                              f"queue.purge not supported by stream queues queue '{self.name}' in vhost '{self.vhost}'",
                              50, 30)

    def requeue(self, entries: Any, *, failed: bool = False, counted: bool = True) -> None:
        """Nothing goes back: the message is still in the log (the ack returned the credit)."""

    def discard(self, entry: Any, reason: str | None = None) -> None:
        """Nothing leaves a stream by an ack."""

    def refuse_settle(self) -> None:
        """``basic.nack`` / ``basic.reject`` of a stream delivery: 540, as RabbitMQ."""
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "basic.nack and basic.reject not supported by stream "
                              f"queues queue '{self.name}' in vhost '{self.vhost}'", 60, 120)
