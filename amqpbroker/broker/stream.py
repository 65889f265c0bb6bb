"""Streams (``x-queue-type: stream``): an append-only log that consumers read without removing
anything, each from its own offset, as RabbitMQ's stream queues over AMQP 0-9-1.

:class:`StreamQueue` takes the place of a :class:`~amqpbroker.broker.queue.Queue` for the rest of
the broker (routing, bindings, listings, consumers, acks): the same interface, its own behaviour.

- **Publish** appends: the message gets the next offset and its arrival time; its content header
  gets an ``x-stream-offset`` header (once per message, shared by every delivery); it is stored
  whatever its delivery mode, so a publisher confirm waits for the sync. Messages of one batch of
  input form a chunk (``stream_log.py``).
- **Consume** (:class:`StreamConsumer`): manual acks and a prefetch are required, as RabbitMQ;
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

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.consumer import Consumer
from amqpbroker.broker.message import Message
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.stream_log import Chunk, StreamLog
from amqpbroker.broker.stream_offsets import OffsetSpec, parse_max_age, start_offset
from amqpbroker.broker.stream_reads import READ_BYTES, READ_MESSAGES, SharedReads
from amqpbroker.codec.content import stream_filter_value, with_long_header
from amqpbroker.errors import ConnectionError, ReplyCode, precondition_failed

if TYPE_CHECKING:
    from amqpbroker.broker.channel import Channel

__all__ = ["StreamQueue", "StreamConsumer", "OFFSET_HEADER", "DEFAULT_SEGMENT_BYTES"]

OFFSET_HEADER = "x-stream-offset"
TRACKING = "x-stream-automatic-offset-tracking"
GENERATED_TAG = "amq.ctag-"  # consumer tags the broker made: never tracked
DEFAULT_SEGMENT_BYTES = 500_000_000  # RabbitMQ's default x-stream-max-segment-size-bytes
AGE_CHECK_SECONDS = 1.0  # how often x-max-age retention is looked at (and after every batch when over size)
TAIL_MESSAGES = 4096  # the tail a stream keeps in memory, at most (and the paging window's bytes)


class StreamConsumer(Consumer):
    """A consumer of a stream: where it is (``offset``: the next to deliver), what it asked for
    (filters), and the messages read for it from the store (``buffer``, from ``read_from`` back)."""

    __slots__ = ("offset", "filters", "match_unfiltered", "buffer", "read_from", "reading", "cancelled", "tracking")

    def __init__(self, tag: str, queue: StreamQueue, channel: Channel, *, exclusive: bool, prefetch: int,
                 arguments: dict[str, Any], offset: int, filters: frozenset[str] | None,
                 match_unfiltered: bool) -> None:
        super().__init__(tag, queue, channel, no_ack=False, exclusive=exclusive, prefetch=prefetch,
                         arguments=arguments)
        self.offset = offset
        self.filters = filters
        self.match_unfiltered = match_unfiltered
        self.buffer: deque[tuple[int, Message]] = deque()  # read from the store, filter applied
        self.read_from = offset  # where the next store read starts
        self.reading = False
        self.cancelled = False
        self.tracking = False  # its offset is stored under its tag (LavinMQ's automatic offset tracking)

    def wants(self, filter_value: str | None) -> bool:
        filters = self.filters
        if filters is None:
            return True
        return filter_value in filters if filter_value is not None else self.match_unfiltered

    # ---------------------------------------------------------------- store reads (persistence.py)

    def read_wanted(self) -> tuple[int, int, int, int, frozenset[str] | None, bool] | None:
        """What to read for it now: ``(stream id, from offset, count, max bytes, filters,
        match unfiltered)``, or None (cancelled, deleted, or caught up with the tail meanwhile)."""
        queue = self.queue
        if self.cancelled or queue.deleted or self.read_from >= queue.log.tail_base:
            self.reading = False
            return None
        return (queue.queue_id, max(self.read_from, queue.log.first), READ_MESSAGES, READ_BYTES,
                self.filters, self.match_unfiltered)

    def read_done(self, read: list[tuple[int, Any]], next_offset: int) -> None:
        """A store read came back: ``(offset, StoredMessage)`` pairs that pass its filters, and
        where the next read starts."""
        self.reading = False
        if self.cancelled or self.queue.deleted:
            return
        if not read and next_offset <= self.read_from:
            self.queue.read_missing()
            return
        self.buffer.extend((offset, Message.from_store(*stored)) for offset, stored in read)
        self.read_from = max(self.read_from, next_offset)
        self.queue.consumer_ready()

    def read_failed(self) -> None:
        self.reading = False
        if not self.cancelled and not self.queue.deleted:
            self.queue.read_missing()


class StreamQueue(Queue):
    """A queue of type stream (see the module's docstring); durable, in the store."""

    __slots__ = ("log", "max_bytes", "max_age", "tracked", "stalled", "reads", "aged_at", "appended")

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
        self.stalled = False  # a store read failed or came back short: tried again at the next tick
        self.reads = SharedReads(self)  # what unfiltered consumers behind the tail read together
        self.aged_at = 0.0  # when x-max-age was last looked at (once a second)
        self.appended: list[tuple[str | None, Message]] = []  # this batch's appends, stored as one chunk
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
        """Append: a copy of the message whose header carries its offset, stored (its confirm
        waits for the sync) and kept in the tail."""
        log = self.log
        offset = log.next
        now = self.host.clock()
        copy = Message(message.exchange, message.routing_key, message.routing_raw,
                       with_long_header(message.header, OFFSET_HEADER, offset), message.body)
        copy.arrived = now
        filter_value = stream_filter_value(message.header)
        if filter_value is not None and len(filter_value) > 63 and len(filter_value.encode()) > 255:
            filter_value = None  # (the store keeps a filter value as a shortstr: taken as none)
        first_of_batch = not log.chunk_open
        log.append(copy, filter_value, now)
        journal = self.journal
        if journal.enabled:
            self.appended.append((filter_value, copy))
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
        if self.stalled:
            self.stalled = False
            self._mark_dirty(self)
        elif self.max_age is None:
            self.host.timed.discard(self)
        return False  # (x-expires is refused for streams)

    # ---------------------------------------------------------------- recovery

    def restore_stream(self, chunks: list[Chunk], tracked: dict[str, int]) -> None:
        self.log.restore(chunks)
        self._next_seq = self.log.next
        self.ready_bytes = self.log.nbytes
        self.tracked = dict(tracked)

    # ---------------------------------------------------------------- consumers

    def consumer_for(self, tag: str, channel: Channel, *, no_ack: bool, exclusive: bool, prefetch: int,
                     arguments: dict[str, Any]) -> StreamConsumer:
        """A consumer as ``basic.consume`` asked, or RabbitMQ's refusal: manual acks (540) and a
        prefetch (406) are required; ``x-stream-offset`` and the filter arguments must be valid."""
        where = f"queue '{self.name}' in vhost '{self.vhost}'"
        if no_ack:
            raise ConnectionError(ReplyCode.NOT_IMPLEMENTED,
                                  f"automatic acknowledgement not supported by stream queues {where}", 60, 20)
        if not prefetch:
            raise precondition_failed(f"consumer prefetch count is not set for '{where}'")
        spec = arguments.get(OFFSET_HEADER)
        # LavinMQ's server-side offset tracking, for a consumer tag the client chose: asked for
        # with x-stream-automatic-offset-tracking, or with an x-stream-offset that is void (null)
        void = OFFSET_HEADER in arguments and spec is None
        tracking = (arguments.get(TRACKING) in (True, "true", b"true") or void) and not tag.startswith(GENERATED_TAG)
        try:
            offset = start_offset(OffsetSpec.parse("first" if void else spec), self.log, self.host.clock())
        except ValueError as exc:
            raise precondition_failed(f"invalid x-stream-offset {where}: {exc}") from None
        if tracking and tag in self.tracked:  # the stored offset wins, as LavinMQ
            offset = min(max(self.tracked[tag], self.log.first), self.log.next)
        filters = _filters(arguments.get("x-stream-filter"))
        match_unfiltered = arguments.get("x-stream-match-unfiltered") is True
        consumer = StreamConsumer(tag, self, channel, exclusive=exclusive, prefetch=prefetch, arguments=arguments,
                                  offset=offset, filters=filters, match_unfiltered=match_unfiltered)
        consumer.tracking = tracking
        return consumer

    def _track(self, consumer: StreamConsumer) -> None:
        """Store where a tracking consumer would go on from: its oldest unacknowledged delivery,
        or its next offset when nothing is outstanding (so a restart redelivers rather than skips)."""
        resume = consumer.offset
        if consumer.unacked:
            for queue, entry, owner, _ in consumer.channel.unacked.values():
                if owner is consumer:
                    resume = entry[0]
                    break
        if self.tracked.get(consumer.tag) != resume:
            self.tracked[consumer.tag] = resume
            if self.journal.enabled:
                self.journal.track_offset(self, consumer.tag, resume)

    def add_consumer(self, consumer: Consumer, exclusive: bool) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        if exclusive:
            self.exclusive_consumer = consumer
        self._mark_dirty(self)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            if isinstance(consumer, StreamConsumer):
                if consumer.tracking and not self.deleted:
                    self._track(consumer)
                consumer.cancelled = True
                consumer.buffer.clear()
        if self.exclusive_consumer is consumer:
            self.exclusive_consumer = None

    def consumer_ready(self) -> None:
        self._mark_dirty(self)

    # ---------------------------------------------------------------- messages out

    def dispatch(self) -> None:
        """Close this batch's chunk, then give each consumer what its credit allows from its
        offset on: from the tail, from what the store read for it, or ask the store for more."""
        self.close_chunk()
        sent = 0
        for consumer in self.consumers:
            if consumer.tracking:
                self._track(consumer)
            sent += self._serve(consumer)
        if sent:
            self.delivered += sent
            self.dispatched_at = time.monotonic()

    def _serve(self, consumer: StreamConsumer) -> int:
        """Deliver to one consumer what its credit allows: from the tail when it is there, else
        from the shared runs (no filter) or its own reads (a filter); ask for what is missing."""
        log = self.log
        if consumer.offset < log.first:  # retention took what it had not read yet
            consumer.offset = consumer.read_from = log.first
            consumer.buffer.clear()
        room = consumer.credit()
        sent = 0
        channel = consumer.channel
        buffer = consumer.buffer
        shared = consumer.filters is None
        run = None
        while room > 0 and consumer.offset < log.next:
            offset = consumer.offset
            if buffer:
                offset, message = buffer.popleft()
                consumer.offset = offset + 1
                if offset < log.first:
                    continue
            elif offset >= log.tail_base:
                tailed = log.tailed(offset)
                consumer.offset = consumer.read_from = offset + 1
                if not consumer.wants(tailed.filter_value):
                    continue
                message = tailed.message
            elif shared:
                if run is None or not run.first <= offset < run.next:
                    run = self.reads.at(offset)
                    if run is None:
                        break
                message = run.messages[offset - run.first]
                consumer.offset = offset + 1
            else:
                consumer.offset = max(offset, consumer.read_from) if not consumer.reading else offset
                self._want_read(consumer)
                break
            channel.deliver(consumer, self, (offset, message, False))
            sent += 1
            room -= 1
            if not channel.can_send():
                break
        if consumer.offset < log.tail_base:
            if shared:
                self.reads.read_ahead(consumer.offset)
            else:
                if not buffer and consumer.read_from > consumer.offset and not consumer.reading:
                    consumer.offset = consumer.read_from  # (what it read past was filtered out)
                if consumer.offset < log.tail_base and len(buffer) < READ_MESSAGES // 2:
                    self._want_read(consumer)
        return sent

    def _want_read(self, consumer: StreamConsumer) -> None:
        if consumer.reading or consumer.read_from >= self.log.tail_base or not self.journal.enabled:
            return
        consumer.reading = True
        self.journal.request_stream_read(consumer)

    def read_missing(self) -> None:
        """A store read failed, or had nothing where the log says messages are (not written yet
        after a store failure): the read is asked for again at the next tick."""
        self.stalled = True
        self.host.timed.add(self)

    # ---------------------------------------------------------------- what streams refuse

    def get(self) -> None:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED,
                              f"basic.get not supported by stream queues queue '{self.name}' in vhost '{self.vhost}'",
                              60, 70)

    def purge(self) -> int:
        if self.deleted:  # (its records went with its definition; RabbitMQ reports none deleted)
            self.log.tail.clear()
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


def _filters(value: Any) -> frozenset[str] | None:
    """``x-stream-filter``: one string or a list of them; None: no filtering."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    return frozenset(item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in values)
