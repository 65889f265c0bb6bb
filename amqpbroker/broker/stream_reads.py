"""Store reads a stream's consumers share: consumers behind the tail that take every message
(no filter) are served from runs of messages read once for all of them.

A run is the messages from one store read (at most ``READ_MESSAGES`` or ``READ_BYTES``), kept in
memory while consumers go through it; the newest ``RUNS_KEPT`` runs stay, older ones go. A
consumer that needs an offset no run holds asks for a read starting there (unless one under way
covers it); a consumer past the middle of a run asks for the next one, so that it is usually in
memory when the consumer gets there. Three consumers reading a stream from ``first`` together
cost one store read and one decode per message, not three. Filtered consumers read for
themselves (``StreamConsumer.read_wanted``): the store skips what they did not ask for.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from amqpbroker.broker.message import Message

if TYPE_CHECKING:
    from amqpbroker.broker.stream import StreamQueue

__all__ = ["Run", "SharedReads", "READ_MESSAGES", "READ_BYTES", "READ_RETRY_SECONDS"]

log = logging.getLogger("amqpbroker.streams")

READ_MESSAGES = 1024  # a store read: at most this many messages
READ_BYTES = 4 << 20  # ... or this many body bytes
READ_RETRY_SECONDS = 1.0  # how long after a failed store read of a stream the next one may be asked for
RUNS_KEPT = 4  # runs a stream keeps for its consumers (at most RUNS_KEPT x READ_BYTES of bodies)


class Run(NamedTuple):
    first: int  # offset of its first message
    messages: list[Message]  # offsets first .. next - 1
    next: int


class SharedRead:
    """One store read for a stream's unfiltered consumers (persistence.py runs it)."""

    __slots__ = ("reads", "start", "queue", "tag")

    def __init__(self, reads: SharedReads, start: int) -> None:
        self.reads = reads
        self.start = start
        self.queue = reads.stream  # (for the store writer's log lines)
        self.tag = "(shared read)"

    def read_wanted(self) -> tuple[int, int, int, int, None, bool] | None:
        stream = self.queue
        if stream.deleted or self.start >= stream.log.tail_base:
            self.reads.pending.pop(self.start, None)
            return None
        return (stream.queue_id, max(self.start, stream.log.first), READ_MESSAGES, READ_BYTES, None, False)

    def read_done(self, read: list[tuple[int, Any]], next_offset: int) -> None:
        reads = self.reads
        reads.pending.pop(self.start, None)
        stream = self.queue
        if stream.deleted:
            return
        if not read or read[-1][0] - read[0][0] + 1 != len(read):  # nothing, or offsets missing
            if read:
                log.error("stream %r: a store read from offset %d skipped offsets; read again later",
                          stream.name, read[0][0])
            stream.read_missing()
            return
        reads.add(Run(read[0][0], Message.many_from_store(read), read[-1][0] + 1))
        stream.consumer_ready()

    def read_failed(self) -> None:
        self.reads.pending.pop(self.start, None)
        if not self.queue.deleted:
            self.queue.read_missing()


class SharedReads:
    __slots__ = ("stream", "runs", "pending")

    def __init__(self, stream: StreamQueue) -> None:
        self.stream = stream
        self.runs: deque[Run] = deque()
        self.pending: dict[int, SharedRead] = {}  # reads under way, by the offset they start at

    def at(self, offset: int) -> Run | None:
        """The run holding ``offset``, if any."""
        for run in reversed(self.runs):
            if run.first <= offset < run.next:
                return run
        return None

    def want(self, offset: int) -> None:
        """Make sure a read will bring ``offset`` in (one under way may already cover it; none
        while the stream waits after a failed read)."""
        if self.stream.read_retry_at:
            return
        for start in self.pending:
            if start <= offset < start + READ_MESSAGES:
                return
        read = self.pending[offset] = SharedRead(self, offset)
        self.stream.journal.request_stream_read(read)

    def read_ahead(self, offset: int) -> None:
        """A consumer is at ``offset``: have the run after its one on the way once it is past the
        middle of its run."""
        run = self.at(offset)
        if run is None:
            self.want(offset)
        elif run.next - offset < READ_MESSAGES // 2 and run.next < self.stream.log.tail_base and self.at(run.next) is None:
            self.want(run.next)

    def add(self, run: Run) -> None:
        self.runs.append(run)
        while len(self.runs) > RUNS_KEPT:
            self.runs.popleft()

    def clear(self) -> None:
        self.runs.clear()
