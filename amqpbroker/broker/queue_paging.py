"""A queue's paging: the part of :class:`~amqpbroker.broker.queue.Queue` that moves ready messages
between memory and the store, and its recovery.

When the broker has a store, ``ready`` holds at most a window of messages
(``journal.window_messages`` / ``window_bytes``). Once it is full, arrivals are written to the
store instead (``journal.page_out``, in ``Queue.enqueue``) and only counted (``paged``); from then
on every arrival goes there until the paged part is empty again, so the paged entries are always
the newest ones, in order, from ``page_next`` on. When ``ready`` falls below half the window the
queue asks for the next page (``journal.request_page``); the store writer reads it in a worker
thread and hands it back through :meth:`PagingMixin.paged_in`. A ``basic.get`` whose head is on
disk waits for that read (:meth:`PagingMixin.when_paged_in`) instead of reading the store on the
loop.

:class:`PagingMixin` holds no state of its own (``__slots__ = ()``): it works on the Queue's
``ready``, ``ready_bytes``, ``paged``, ``paged_bytes``, ``page_next``, ``page_id``, ``paging_in``,
``page_epoch``, ``page_waiters``, ``queue_id``, ``journal``, ``consumers``, ``options``,
``deleted``, ``delivery_counts`` and ``_next_seq``, and calls its ``_mark_dirty``,
``_holds_ttl``, ``_drop_over_limits`` (queue_limits.py) and ``_update_dispatch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.journal import INLINE
from amqpbroker.broker.message import Message

if TYPE_CHECKING:
    from amqpbroker.broker.queue import Entry

__all__ = ["PagingMixin"]


class PagingMixin:
    """Paging in and out of the store (see the module's docstring); mixed into ``Queue``."""

    __slots__ = ()

    @property
    def head_on_disk(self) -> bool:
        """Nothing ready in memory, but paged-out messages in the store."""
        return not self.ready and self.paged > 0

    def when_paged_in(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(read_ok)`` once the page read under way (asked for here if none is)
        is over, whatever its outcome: ``basic.get`` on a queue whose head is on disk waits for it, as
        RabbitMQ's queue process defers its reply, instead of reading the store on the loop."""
        self.page_waiters.append(callback)
        if not self.paging_in:
            self.paging_in = True
            self.journal.request_page(self)

    def _page_read_over(self, read_ok: bool = True) -> None:
        waiters, self.page_waiters = self.page_waiters, []
        for callback in waiters:  # each guards itself (Session._deferred_reply)
            callback(read_ok)

    def page_read_failed(self) -> None:
        """The store could not read the page: nothing is dropped; waiting ``basic.get`` s are
        answered with what is in memory, and the read is asked for again later."""
        self.paging_in = False
        self._page_read_over(False)

    def _want_page(self) -> None:
        """Ask for the next page once the in-memory part is down to half the window."""
        if not self.paging_in and len(self.ready) <= self.journal.window_messages // 2:
            self.paging_in = True
            self.journal.request_page(self)

    def page_wanted(self) -> tuple[int, bool, int, int, int, int] | None:
        """What to read for this queue now, or None:
        ``(epoch, durable, page id, from seq, at most count, at most bytes)``."""
        if self.deleted or not self.paged:
            self.paging_in = False
            self._page_read_over()
            return None
        journal = self.journal
        durable = self.queue_id is not None
        room = max(journal.window_messages - len(self.ready), 1)
        return (self.page_epoch, durable, self.queue_id if durable else self.page_id, self.page_next,
                min(room, self.paged), max(journal.window_bytes - self.ready_bytes, 1))

    def paged_in(self, epoch: int, page: list[tuple[int, Any]]) -> None:
        """A page read begun at ``epoch`` came back as ``(seq, stored message)`` pairs (a
        ``StoredMessage``: routing bytes, header, body, arrival): its messages join the
        in-memory part."""
        if epoch != self.page_epoch or self.deleted:
            self._page_read_over()
            return  # purged or deleted meanwhile; the purge dropped those pages
        self.paging_in = False
        if not page:
            self.paged = 0  # the store lost them (only if the data dir was altered underneath)
            self._page_read_over()
            return
        stored_inline = self.queue_id is not None
        entries = []
        for seq, stored in page:
            message = Message.from_store(*stored)
            if stored_inline:
                message.message_id = INLINE
            self.ready_bytes += len(message.body)
            if message.ttl is not None:
                self._holds_ttl()
            entries.append((seq, message, False))
        self.ready.extend(entries)
        self.paged = max(self.paged - len(entries), 0)
        self.paged_bytes = max(self.paged_bytes - sum(len(entry[1].body) for entry in entries), 0) if self.paged else 0
        last = entries[-1][0]
        self.journal.paged_in(self, self.page_next, last + 1)
        self.page_next = last + 1
        if self.consumers:
            self._mark_dirty(self)
        if self.options is not None and self.options.limited:
            self._drop_over_limits()
        self._page_read_over()
        if self.paged:
            self._want_page()

    def restore(self, entries: list[Entry], *, paged: int = 0, page_next: int = 0, last_seq: int = 0) -> None:
        """Recovery: the entries the store held, in order, and how many more it holds from
        ``page_next`` on (``last_seq`` the newest)."""
        self.ready.extend(entries)
        self.ready_bytes += sum(len(entry[1].body) for entry in entries)
        if any(entry[1].ttl is not None for entry in entries):
            self._holds_ttl()
        self.paged, self.page_next = paged, page_next
        self._next_seq = max(self._next_seq, last_seq, entries[-1][0] if entries else 0)
        if self.delivery_counts:  # (set by recovery: redeliveries say how often)
            self._update_dispatch()
