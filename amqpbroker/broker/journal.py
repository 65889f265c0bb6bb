"""The journal: durable effects the domain produced, waiting for the store writer.

The broker's domain stays sans-IO: instead of writing to disk, it appends operations here and
registers publisher confirms that must wait until those operations are synced. The store writer
(``amqpbroker/store/writer.py``) takes both once per batch of input, writes the operations
unsynced, syncs in a worker thread, and then releases the confirms.

Operations are tuples, first element a tag:

=================================================  ============================================
``("exchange", vhost, name, definition)``          durable exchange declared
``("exchange-", vhost, name)``                      durable exchange deleted
``("queue", vhost, name, queue_id, definition)``    durable queue declared
``("queue-", vhost, name, queue_id)``               durable queue deleted (with its entries)
``("binding", vhost, key, definition)``             binding between durable ends added
``("binding-", vhost, key)``                        binding removed
``("message", message_id, message)``                persistent message stored (once)
``("message-", message_id)``                        last queue entry of that message gone
``("entry", queue_id, seq, message_id, delivered)``  message in a durable queue (delivered: bool)
``("entry-", queue_id, seq)``                       entry acked or dropped
``("purge", queue_id)``                             every entry of a queue dropped
=================================================  ============================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amqpbroker.broker.channel import Channel
    from amqpbroker.broker.message import Message
    from amqpbroker.broker.queue import Entry, Queue

__all__ = ["Journal"]


class Journal:
    """Outbox of durable operations and of the confirms that wait for them."""

    __slots__ = ("enabled", "ops", "waiters", "next_message_id", "next_queue_id", "on_pending", "failed")

    def __init__(self, *, enabled: bool = False) -> None:
        self.enabled = enabled
        self.ops: list[tuple] = []
        self.waiters: list[tuple[Channel, int]] = []
        self.next_message_id = 1
        self.next_queue_id = 1
        self.failed = False  # the store refused a write: persistent publishes are nacked
        self.on_pending: Callable[[], None] = lambda: None

    @property
    def pending(self) -> bool:
        return bool(self.ops or self.waiters)

    def take(self) -> tuple[list[tuple], list[tuple[Channel, int]]]:
        ops, waiters = self.ops, self.waiters
        self.ops, self.waiters = [], []
        return ops, waiters

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
        """A persistent message entered a durable queue."""
        message_id = message.message_id
        if message_id is None:
            message_id = message.message_id = self.next_message_id
            self.next_message_id += 1
            self.ops.append(("message", message_id, message))
        message.refs += 1
        self.ops.append(("entry", queue.queue_id, seq, message_id, False))

    def mark_delivered(self, queue: Queue, entry: Entry) -> None:
        """Remember a delivery, so a restart hands the message out as redelivered."""
        self.ops.append(("entry", queue.queue_id, entry[0], entry[1].message_id, True))

    def forget_entry(self, queue: Queue, entry: Entry, *, entry_gone: bool = False) -> None:
        """An entry left its durable queue for good (acked, dropped, purged)."""
        message = entry[1]
        if not entry_gone:
            self.ops.append(("entry-", queue.queue_id, entry[0]))
        message.refs -= 1
        if message.refs == 0:
            self.ops.append(("message-", message.message_id))

    def wait_for_sync(self, channel: Channel, seq: int) -> None:
        self.waiters.append((channel, seq))


def is_stored(queue: Queue, entry: Any) -> bool:
    """Does this queue entry live in the store?"""
    return queue.queue_id is not None and entry[1].message_id is not None
