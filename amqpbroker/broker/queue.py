"""A queue: ready messages in order, consumers served round-robin within their prefetch credit.

An entry is a tuple ``(seq, message, redelivered)``; ``seq`` is the queue's arrival order, so a
requeued message goes back to its original position among the ready ones, as RabbitMQ does.
``dispatch()`` hands ready messages to consumers that have credit, one per consumer in turn; the
broker calls it once per batch for every queue that changed (``Broker.run_pending``).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.journal import Journal
from amqpbroker.broker.message import Message

if TYPE_CHECKING:
    from amqpbroker.broker.consumer import Consumer

__all__ = ["Queue", "Entry"]

Entry = tuple  # (seq: int, message: Message, redelivered: bool)


class Queue:
    __slots__ = (
        "name", "vhost", "durable", "exclusive_owner", "auto_delete", "arguments",
        "ready", "unacked_count", "consumers", "_next_seq", "_turn", "_mark_dirty",
        "had_consumers", "deleted", "exclusive_consumer", "queue_id", "journal",
    )

    def __init__(self, name: str, vhost: str, *, durable: bool = False, exclusive_owner: Any = None,
                 auto_delete: bool = False, arguments: dict[str, Any] | None = None,
                 mark_dirty: Callable[[Queue], None] = lambda queue: None,
                 journal: Journal | None = None, queue_id: int | None = None) -> None:
        self.name = name
        self.vhost = vhost
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.ready: deque[Entry] = deque()
        self.unacked_count = 0
        self.consumers: list[Consumer] = []
        self.exclusive_consumer: Consumer | None = None
        self.had_consumers = False
        self.deleted = False
        self._next_seq = 0
        self._turn = 0
        self._mark_dirty = mark_dirty
        self.journal = journal
        self.queue_id = queue_id  # set when the queue lives in the store (durable, not exclusive)

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        return len(self.ready)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.ready)} unacked={self.unacked_count}>"

    # ---------------------------------------------------------------- messages in

    def enqueue(self, message: Message) -> None:
        seq = self._next_seq = self._next_seq + 1
        self.ready.append((seq, message, False))
        if self.queue_id is not None and message.persistent:
            self.journal.store_entry(self, seq, message)
        if self.consumers:
            self._mark_dirty(self)

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Put delivered-but-unacked entries back at their original positions, redelivered."""
        returned = sorted((seq, message, True) for seq, message, _ in entries)
        if not returned:
            return
        ready = self.ready
        if not ready or returned[-1][0] < ready[0][0]:
            ready.extendleft(reversed(returned))
        else:
            merged = list(ready)
            for entry in returned:
                bisect.insort(merged, entry, key=lambda item: item[0])
            self.ready = deque(merged)
        if self.consumers:
            self._mark_dirty(self)

    # ---------------------------------------------------------------- messages out

    def get(self) -> Entry | None:
        return self.ready.popleft() if self.ready else None

    def purge(self) -> int:
        count = len(self.ready)
        if self.queue_id is not None and not self.deleted:
            for entry in self.ready:
                if entry[1].message_id is not None:
                    self.journal.forget_entry(self, entry, entry_gone=True)
            self.journal.ops.append(("purge", self.queue_id))
        self.ready.clear()
        return count

    def discard(self, entry: Entry) -> None:
        """An entry left the queue for good (acked, rejected without requeue, auto-acked)."""
        if self.queue_id is not None and entry[1].message_id is not None:
            self.journal.forget_entry(self, entry, entry_gone=self.deleted)

    def restore(self, entries: list[Entry]) -> None:
        """Recovery: the entries the store held, in order."""
        self.ready.extend(entries)
        if entries:
            self._next_seq = max(self._next_seq, entries[-1][0])

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with credit, round-robin, until either runs out."""
        ready = self.ready
        consumers = self.consumers
        if not ready or not consumers:
            return
        count = len(consumers)
        turn = self._turn % count
        idle = 0
        popleft = ready.popleft
        while ready and idle < count:
            consumer = consumers[turn]
            turn = turn + 1 if turn + 1 < count else 0
            if consumer.has_credit():
                consumer.channel.deliver(consumer, self, popleft())
                idle = 0
            else:
                idle += 1
        self._turn = turn

    # ---------------------------------------------------------------- consumers

    def add_consumer(self, consumer: Consumer, exclusive: bool) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        if exclusive:
            self.exclusive_consumer = consumer
        self._mark_dirty(self)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        if self.exclusive_consumer is consumer:
            self.exclusive_consumer = None

    def consumer_ready(self) -> None:
        """A consumer of this queue got credit back: serve it in the next dispatch round."""
        if self.ready:
            self._mark_dirty(self)
