"""A stream's consumers (stream.py): how ``basic.consume`` makes one, where it starts, how each
is served from its offset on, and LavinMQ's automatic offset tracking.

A :class:`StreamConsumer` is served from the log's tail while it keeps up; one further behind gets
its messages from the store, read in a worker thread (never on the loop): through the runs the
stream's unfiltered consumers share (``stream_reads.py``), or, with a filter, through reads of its
own (``read_wanted`` / ``read_done``) in which the store skips what it did not ask for.
:class:`StreamConsumersMixin` is the consumer side of :class:`~amqpbroker.broker.stream.StreamQueue`;
it uses the stream's ``log``, ``reads``, ``tracked``, ``journal`` and ``consumers``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.consumer import Consumer
from amqpbroker.broker.message import Message
from amqpbroker.broker.stream_offsets import OffsetSpec, start_offset
from amqpbroker.broker.stream_reads import READ_BYTES, READ_MESSAGES, READ_RETRY_SECONDS
from amqpbroker.errors import ConnectionError, ReplyCode, precondition_failed

if TYPE_CHECKING:
    from amqpbroker.broker.channel import Channel
    from amqpbroker.broker.stream import StreamQueue

__all__ = ["StreamConsumer", "StreamConsumersMixin", "OFFSET_HEADER"]

OFFSET_HEADER = "x-stream-offset"
TRACKING = "x-stream-automatic-offset-tracking"
GENERATED_TAG = "amq.ctag-"  # consumer tags the broker made: never tracked


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
        self.buffer.extend(zip((offset for offset, _ in read), Message.many_from_store(read)))
        self.read_from = max(self.read_from, next_offset)
        self.queue.consumer_ready()

    def read_failed(self) -> None:
        self.reading = False
        if not self.cancelled and not self.queue.deleted:
            self.queue.read_missing()


class StreamConsumersMixin:
    """The consumer side of a stream (see the module's docstring)."""

    __slots__ = ()

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
        from the shared runs (no filter: a slice of either at once) or its own reads (a filter);
        ask for what is missing."""
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
            if shared:  # every message from its offset on: as many at once as there are
                tailed = offset >= log.tail_base
                if tailed:
                    index = offset - log.tail_base
                    items = log.tail[index:index + room]
                else:
                    if run is None or not run.first <= offset < run.next:
                        run = self.reads.at(offset)
                        if run is None:
                            break
                    index = offset - run.first
                    items = run.messages[index:index + room]
                if not items:  # (a run is built whole: never, but no loop without progress)
                    break
                count = channel.deliver_stream(consumer, self, offset, items, tailed)
                consumer.offset = offset + count
                if tailed:
                    consumer.read_from = consumer.offset
                sent += count
                room -= count
                if count < len(items) or not channel.can_send():
                    break
                continue
            # a filter: its own store reads (``buffer``) behind the tail, the tail's messages it wants
            header = None  # (a message read from the store has its offset in its own header)
            if buffer:
                offset, message = buffer.popleft()
                consumer.offset = offset + 1
                if offset < log.first:
                    continue
            elif offset >= log.tail_base:
                message, header, filter_value = log.tail[offset - log.tail_base]
                consumer.offset = consumer.read_from = offset + 1
                if not consumer.wants(filter_value):
                    continue
            else:
                consumer.offset = max(offset, consumer.read_from) if not consumer.reading else offset
                self._want_read(consumer)
                break
            if header is None:
                channel.deliver_stream(consumer, self, offset, (message,), False)
            else:
                channel.deliver_stream(consumer, self, offset, ((message, header, None),), True)
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
        if (consumer.reading or consumer.read_from >= self.log.tail_base or not self.journal.enabled
                or self.read_retry_at):
            return
        consumer.reading = True
        self.journal.request_stream_read(consumer)

    def read_missing(self) -> None:
        """A store read failed, or had nothing where the log says messages are (not written yet
        after a store failure): no read of this stream is asked for during ``READ_RETRY_SECONDS``
        (a record the store cannot read must not flood the log), then its consumers ask again."""
        self.read_retry_at = self.host.clock() + READ_RETRY_SECONDS
        self.host.timed.add(self)


def _filters(value: Any) -> frozenset[str] | None:
    """``x-stream-filter``: one string or a list of them; None: no filtering."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    return frozenset(item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in values)
