"""The journal: durable effects the domain produced, waiting for the store writer.

The broker's domain stays sans-IO: instead of writing to disk, it appends operations here and
registers publisher confirms that must wait until those operations are synced. The store writer
(``amqpbroker/server/persistence.py``) takes both once per batch of input, writes the operations
unsynced, syncs in a worker thread, and then releases the confirms.

It also carries the store reads of stream consumers behind their stream's tail
(``stream_reads``), and queue paging: a queue whose ready messages pass the window (``window_messages``,
``window_bytes``) writes further arrivals out here instead of keeping them, and asks for them back
(``page_requests``) when its in-memory part runs low.

Operations (``ops``, written to the WAL and synced) are tuples, first element a tag. The put of a
message or entry that is gone again before the writer took it (consumed at once) is replaced by
None, and its delete never appended: it costs no write at all. Its publisher confirm still waits
for the next sync, which keeps confirms in order.

=====================================================  ========================================
``("exchange", vhost, name, definition)``              durable exchange declared
``("exchange-", vhost, name)``                          durable exchange deleted
``("queue", vhost, name, queue_id, definition)``        durable queue declared
``("queue-", vhost, name, queue_id)``                   durable queue deleted (with its entries)
``("binding", vhost, key, definition)``                 binding between durable ends added
``("binding-", vhost, key)``                            binding removed
``("message", message_id, message)``                    persistent message stored (once)
``("message-", message_id)``                            last queue entry of that message gone
``("entry", queue_id, seq, message_id, delivered)``     message in a durable queue (delivered: bool)
``("entry-", queue_id, seq)``                           entry acked or dropped
``("inline", queue_id, seq, message, persistent)``      paged-out entry of a durable queue, with
                                                        its own copy of the message
``("delivered", queue_id, seq)``                        an inline entry was handed out once
``("count", queue_id, seq, n, due)``                     a stored entry was returned n times (and
                                                        backs off until ``due``, or None)
``("count-", queue_id, seq)``                            ... and has left its queue
``("held", queue_id, seq, reason)``                     a stored entry is held for dead-lettering
                                                        at least once (dead_letter_hold.py)
``("held-", queue_id, seq)``                            ... its targets took it
``("dedup", owner, value, expires, at)``                 a deduplication cache remembers a value
``("dedup-", owner, value)`` / ``("dedup*", owner)``     ... forgot it / the whole cache went
``("inline-", queue_id, seq)``                          inline entry (and its mark) acked or dropped
``("entries-", queue_id, from_seq)``                    a durable queue's paged-out entries dropped
``("delayed", id, vhost, exchange, due, message)``      a message held by a delayed exchange
``("delayed-", id)``                                    it was routed (or dropped)
``("chunk", stream_id, first_offset, timestamp, count,  a stream's batch of appends (stream.py): its
nbytes, segment_start, messages)``                      ``(filter value, message, content header
                                                        with the offset)``, stored as one value,
                                                        and its index record
``("stream-", stream_id, below_offset)``                 retention dropped the offsets below
``("offset", stream_id, name, offset)``                  a named consumer's offset (tracking)
``("meta", kind, key, value)``                          a user, vhost or permission set (tenancy.py)
``("meta-", kind, key)``                                removed
=====================================================  ========================================

Transient page operations (``pages``, written without the WAL: they never need to survive):

=====================================================  ========================================
``("page", page_id, seq, message)``                     paged-out entry of a non-durable queue
``("page-", page_id, from_seq, to_seq)``                those entries read back, or purged
=====================================================  ========================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqpbroker.broker.channel import Channel
    from amqpbroker.broker.message import Message
    from amqpbroker.broker.queue import Entry, Queue
    from amqpbroker.broker.stream import StreamConsumer, StreamQueue
    from amqpbroker.broker.stream_reads import SharedRead
    from amqpbroker.broker.stream_log import Chunk

__all__ = ["Journal", "INLINE"]

INLINE = 0  # the message_id of a message that lives inline in its (paged) queue entry
UNBOUNDED = sys.maxsize


class Journal:
    """Outbox of durable operations, of the confirms that wait for them, and of page requests."""

    __slots__ = ("_enabled", "ops", "pages", "waiters", "page_requests", "stream_reads", "open_streams",
                 "next_message_id",
                 "next_queue_id", "next_page_id", "next_delay_id", "on_pending", "failed", "window_messages",
                 "window_bytes", "paging_window", "_unwritten_messages",
                 "_unwritten_entries")

    def __init__(self, *, enabled: bool = False, window_messages: int = 0, window_bytes: int = 0) -> None:
        self.ops: list[tuple] = []
        self.pages: list[tuple] = []
        self.waiters: list[tuple[Channel, int, Message]] = []
        self.page_requests: list[Queue] = []
        self.stream_reads: list[StreamConsumer | SharedRead] = []  # (each: read_wanted, read_done, read_failed)
        self.open_streams: set[StreamQueue] = set()  # streams whose chunk of this batch is open
        # where in ``ops`` the puts of messages and entries not handed to the store yet are: one
        # that is gone again before the next flush (consumed at once) is never written at all
        self._unwritten_messages: dict[int, int] = {}
        self._unwritten_entries: dict[tuple[int, int], int] = {}
        self.next_message_id = 1
        self.next_queue_id = 1
        self.next_page_id = 1
        self.next_delay_id = 1
        self.failed = False  # the store refused a write: persistent publishes are nacked
        self.on_pending: Callable[[], None] = lambda: None
        self.paging_window = (window_messages or UNBOUNDED, window_bytes or UNBOUNDED)  # as configured
        self.enabled = enabled

    @property
    def enabled(self) -> bool:
        """Is there a store? Without one nothing is journaled and queues never page."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        self.window_messages, self.window_bytes = self.paging_window if value else (UNBOUNDED, UNBOUNDED)

    def take(self) -> tuple[list[tuple | None], list[tuple], list[tuple[Channel, int]]]:
        """Hand over the operations (None where one was cancelled), pages, and the confirms that
        must wait for them to be synced. A stream's chunk still open ends here, so that a
        chunk's messages and its index entry are always in the same write.

        A persistent message that every queue gave away before it was written (an autoack
        consumer took it at once) has nothing left to sync: its confirm goes out now, as RabbitMQ
        confirms a message consumed before it was persisted."""
        if self.open_streams:
            for stream in list(self.open_streams):
                stream.close_chunk()
            self.open_streams.clear()
        ops, pages, waiters = self.ops, self.pages, self.waiters
        self.ops, self.pages, self.waiters = [], [], []
        self._unwritten_messages.clear()
        self._unwritten_entries.clear()
        waiting = []
        for channel, seq, message in waiters:
            if message.refs or message.has_stored_copy:
                waiting.append((channel, seq))
            else:
                channel.confirm_synced(seq, ok=True)
        return ops, pages, waiting

    # ---------------------------------------------------------------- definitions

    def definition(self, op: tuple) -> None:
        if self.enabled:
            self.ops.append(op)

    def new_queue_id(self) -> int:
        queue_id = self.next_queue_id
        self.next_queue_id += 1
        return queue_id

    # ---------------------------------------------------------------- messages

    def store_entry(self, queue: Queue, seq: int, message: Message) -> None:
        """A persistent message entered a durable queue (in memory)."""
        ops = self.ops
        message_id = message.message_id
        if message_id is None:
            message_id = message.message_id = self.next_message_id
            self.next_message_id += 1
            self._unwritten_messages[message_id] = len(ops)
            ops.append(("message", message_id, message))
            message.durable = True
        message.refs += 1
        self._unwritten_entries[(queue.queue_id, seq)] = len(ops)
        ops.append(("entry", queue.queue_id, seq, message_id, False))

    def mark_delivered(self, queue: Queue, entry: Entry) -> None:
        """Remember a delivery, so a restart hands the message out as redelivered."""
        message_id = entry[1].message_id
        if message_id == INLINE:
            self.ops.append(("delivered", queue.queue_id, entry[0]))
            return
        op = ("entry", queue.queue_id, entry[0], message_id, True)
        index = self._unwritten_entries.get((queue.queue_id, entry[0]))
        if index is None:
            self.ops.append(op)
        else:
            self.ops[index] = op

    def count_delivery(self, queue: Queue, entry: Entry, count: int, retry_due: float | None = None) -> None:
        """A stored entry was returned ``count`` times (kept so that a restart keeps counting),
        and waits until ``retry_due`` (wall-clock seconds) to be redelivered."""
        self.ops.append(("count", queue.queue_id, entry[0], count, retry_due))

    def hold_dead_letter(self, queue: Queue, entry: Entry, reason: str) -> None:
        """A stored entry died but no dead-letter target took it yet: a restart keeps it held."""
        self.ops.append(("held", queue.queue_id, entry[0], reason))

    def release_dead_letter(self, queue: Queue, entry: Entry) -> None:
        self.ops.append(("held-", queue.queue_id, entry[0]))

    def forget_count(self, queue: Queue, entry: Entry) -> None:
        self.ops.append(("count-", queue.queue_id, entry[0]))

    def forget_entry(self, queue: Queue, entry: Entry) -> None:
        """A stored entry left its durable queue for good (acked, dropped, purged)."""
        message = entry[1]
        if message.message_id == INLINE:
            self.ops.append(("inline-", queue.queue_id, entry[0]))
            return
        index = self._unwritten_entries.pop((queue.queue_id, entry[0]), None)
        if index is None:
            self.ops.append(("entry-", queue.queue_id, entry[0]))
        else:
            self.ops[index] = None
        self.release(message)

    def release(self, message: Message) -> None:
        """One fewer stored entry holds this shared message; the last one removes it."""
        message.refs -= 1
        if message.refs == 0:
            index = self._unwritten_messages.pop(message.message_id, None)
            if index is None:
                self.ops.append(("message-", message.message_id))
            else:
                self.ops[index] = None

    def wait_for_sync(self, channel: Channel, seq: int, message: Message) -> None:
        """Confirm publish ``seq`` of ``channel`` once the writes of ``message`` are synced."""
        self.waiters.append((channel, seq, message))

    # ---------------------------------------------------------------- streams

    def stream_chunk(self, stream: StreamQueue, chunk: Chunk,
                     messages: list[tuple[str | None, Message, bytes]]) -> None:
        """A stream's batch of appends ended: its messages, one store value, and its index record."""
        self.ops.append(("chunk", stream.queue_id, *chunk, messages))
        self.open_streams.discard(stream)

    def trim_stream(self, stream: StreamQueue, below_offset: int) -> None:
        self.ops.append(("stream-", stream.queue_id, below_offset))

    def track_offset(self, stream: StreamQueue, name: str, offset: int) -> None:
        self.ops.append(("offset", stream.queue_id, name, offset))

    def request_stream_read(self, reader: StreamConsumer | SharedRead) -> None:
        self.stream_reads.append(reader)

    # ---------------------------------------------------------------- paging

    def page_out(self, queue: Queue, seq: int, message: Message) -> None:
        """Write an arrival of a queue past its window to the store instead of memory."""
        if queue.queue_id is not None:
            persistent = message.persistent
            self.ops.append(("inline", queue.queue_id, seq, message, persistent))
            if persistent:
                message.durable = message.has_stored_copy = True
        else:
            if queue.page_id is None:
                queue.page_id = self.next_page_id
                self.next_page_id += 1
            self.pages.append(("page", queue.page_id, seq, message))

    def drop_paged(self, queue: Queue, from_seq: int) -> None:
        """A queue's paged-out entries from ``from_seq`` on are gone (purge)."""
        if queue.queue_id is not None:
            self.ops.append(("entries-", queue.queue_id, from_seq))
        else:
            self.pages.append(("page-", queue.page_id, from_seq, UNBOUNDED))

    def paged_in(self, queue: Queue, from_seq: int, to_seq: int) -> None:
        """Entries of a non-durable queue came back into memory: their pages can go."""
        if queue.queue_id is None:
            self.pages.append(("page-", queue.page_id, from_seq, to_seq))

    def request_page(self, queue: Queue) -> None:
        self.page_requests.append(queue)
