"""Group commit: journal batches written on the loop, synced in a worker thread, then confirmed.

Once per batch of input, :meth:`StoreWriter.flush` takes the journal's operations and writes them
as one unsynced RocksDB batch (rocksdict holds the GIL while it writes, so a thread would not help
there; an unsynced batch costs a few microseconds a message). The publisher confirms that waited
for those operations are tagged with the batch's generation. One task, :meth:`StoreWriter.run`,
syncs the WAL in a worker thread (``flush_wal`` releases the GIL) whenever something was written
since the last sync; when a sync ends, every confirm of a generation written before it started is
released. So one fsync serves every publish that arrived while the previous one ran, from every
connection.

Paging goes through here too: transient pages are written in the same ``flush`` (without the
WAL), and :meth:`StoreWriter.run_pages` reads the pages queues ask for in another worker thread,
one at a time, and hands them back to their queues on the loop.

A failed write or sync is logged once and the broker stops taking persistent messages: waiting
publishers get ``basic.nack``, later persistent publishes too; nothing already confirmed is touched.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque

import anyio

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.queue import Queue
from amqpbroker.store.base import Store, StoreError

__all__ = ["StoreWriter"]

log = logging.getLogger("amqpbroker.store")

SHORT_PAGE = 32
SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)  # seconds


class StoreWriter:
    def __init__(self, store: Store, broker: Broker) -> None:
        self.store = store
        self.broker = broker
        self.journal = broker.journal
        self._generation = 0
        self._synced_generation = 0
        self._waiting: deque[tuple[int, list]] = deque()
        self._wanted = anyio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._pages_wanted = anyio.Event()
        self._page_limiter = anyio.CapacityLimiter(1)
        # sync durations for metrics: counts per bucket (upper bounds in SYNC_BUCKETS), sum
        self._sync_counts = [0] * (len(SYNC_BUCKETS) + 1)
        self._sync_total = 0.0
        self.journal.on_pending = self.flush
        self.journal.read_page_now = self.read_page_now

    def flush(self) -> None:
        """Write what the journal holds (on the loop, unsynced) and ask for a sync."""
        ops, pages, waiters = self.journal.take()
        if self.journal.page_requests:
            self._pages_wanted.set()
        if pages:
            try:
                self.store.write_pages(pages)
            except StoreError as exc:
                log.error("writing queue pages failed: %s", exc)
        if self.journal.failed:
            self._refuse(waiters)
            return
        if ops:
            try:
                self.store.write(ops)
            except StoreError as exc:
                self._fail(exc, waiters)
                return
        if ops or waiters:
            self._generation += 1
            if waiters:
                self._waiting.append((self._generation, waiters))
            self._wanted.set()

    def read_page_now(self, queue: Queue) -> None:
        """Read a few of a queue's paged-out messages on the loop: for ``basic.get`` when its
        in-memory part ran out before the page read under way came back. A short read (at most
        ``SHORT_PAGE`` entries, tens of microseconds), after writing what the journal holds."""
        self.flush()
        wanted = queue.page_wanted()
        if wanted is None:
            return
        epoch, durable, page_id, from_seq, count, max_bytes = wanted
        try:
            page = self.store.read_page(durable, page_id, from_seq, min(count, SHORT_PAGE), max_bytes)
        except StoreError as exc:
            log.error("queue '%s': cannot read its paged-out messages: %s", queue.name, exc)
            page = []
        queue.paged_in(epoch, page)

    async def run_pages(self) -> None:
        """Read the pages queues asked for, one at a time, each in a worker thread."""
        requests = self.journal.page_requests
        while True:
            await self._pages_wanted.wait()
            self._pages_wanted = anyio.Event()
            while requests:
                queue = requests.pop(0)
                wanted = queue.page_wanted()
                if wanted is None:
                    continue
                epoch, durable, page_id, from_seq, count, max_bytes = wanted
                try:
                    page = await anyio.to_thread.run_sync(self.store.read_page, durable, page_id, from_seq,
                                                          count, max_bytes, limiter=self._page_limiter)
                except StoreError as exc:
                    log.error("queue '%s': cannot read its paged-out messages: %s", queue.name, exc)
                    page = []
                queue.paged_in(epoch, page)
                self.broker.run_pending()

    async def run(self) -> None:
        """Sync whenever something was written since the last sync; release confirms after."""
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            generation = self._generation
            if generation == self._synced_generation:
                continue
            started = time.perf_counter()
            try:
                await anyio.to_thread.run_sync(self.store.sync, limiter=self._limiter)
            except StoreError as exc:
                self._fail(exc, [w for _, batch in self._waiting for w in batch])
                self._waiting.clear()
                continue
            self._count_sync(time.perf_counter() - started)
            self._synced_generation = generation
            self._release(generation)

    def _count_sync(self, seconds: float) -> None:
        self._sync_counts[bisect.bisect_left(SYNC_BUCKETS, seconds)] += 1
        self._sync_total += seconds

    def sync_histogram(self) -> tuple[list[tuple[str, int]], float, int]:
        """``(cumulative buckets as (upper bound, count), sum, count)`` of sync durations."""
        buckets, running = [], 0
        for bound, count in zip((*map(str, SYNC_BUCKETS), "+Inf"), self._sync_counts):
            running += count
            buckets.append((bound, running))
        return buckets, self._sync_total, running

    async def drain(self) -> None:
        """Write and sync everything pending (at shutdown)."""
        self.flush()
        if self._generation != self._synced_generation and not self.journal.failed:
            await anyio.to_thread.run_sync(self.store.sync, limiter=self._limiter)
            self._synced_generation = self._generation
            self._release(self._generation)

    def _release(self, generation: int) -> None:
        waiting = self._waiting
        released = False
        while waiting and waiting[0][0] <= generation:
            for channel, seq in waiting.popleft()[1]:
                channel.confirm_synced(seq, ok=True)
            released = True
        if released:
            self.broker.run_pending()

    def _refuse(self, waiters: list) -> None:
        for channel, seq in waiters:
            channel.confirm_synced(seq, ok=False)
        if waiters:
            self.broker.run_pending()

    def _fail(self, exc: StoreError, waiters: list) -> None:
        if not self.journal.failed:
            log.error("the store failed, persistent messages are refused from now on: %s", exc)
        self.journal.failed = True
        self._refuse(waiters)
