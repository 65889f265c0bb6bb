"""The persistence driver between the broker's journal and the store: group commit, paging, and
the store alarm. It is the only place that talks to both (the store never imports the broker).

Once per batch of input, :meth:`StoreWriter.flush` takes the journal's operations (already
encoded and checked when they were queued) and writes them as one unsynced RocksDB batch
(rocksdict holds the GIL while it writes, so a thread would not help there; an unsynced batch
costs a few microseconds a message). The publisher confirms that waited for those operations are
tagged with the batch's generation. One task, :meth:`StoreWriter.run`, syncs the WAL in a worker
thread (``flush_wal`` releases the GIL) whenever something was written since the last sync; when a
sync ends, every confirm of a generation written before it started is released (and a
``tx.commit-ok`` that waited for one). So one fsync serves every publish that arrived while the
previous one ran, from every connection.

Paging goes through here too: transient pages are written in the same ``flush`` (without the
WAL), and :meth:`StoreWriter.run_pages` reads the pages queues ask for in a worker thread, one at
a time, and hands them back to their queues on the loop. Nothing reads the store on the loop.

A failed write or sync is the store alarm, a state the broker is in, never a silent mode: it is
logged once, publishers are blocked (``connection.blocked``), the confirms waiting for the failed
batch and every persistent publish meanwhile are nacked, and nothing taken from the journal is
thrown away: the operations of a failed batch, and all that follow, are kept in order and written
again by :meth:`StoreWriter.run_retries` every ``RETRY_SECONDS`` until the store takes them and
syncs, which clears the alarm by itself. Page writes that failed are kept the same way, and page
reads wait for them; a page read that fails drops nothing and is tried again.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque

import anyio

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.stream import StreamConsumer
from amqpbroker.broker.stream_reads import READ_RETRY_SECONDS, SharedRead
from amqpbroker.errors import log_internal_error
from amqpbroker.store.base import Store

__all__ = ["StoreWriter", "RETRY_SECONDS"]

log = logging.getLogger("amqpbroker.store")

SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)  # seconds
RETRY_SECONDS = 1.0  # how often a failed store is tried again
RETRY_LOG_EVERY = 30  # tries between two log lines while it still fails
STORE_ALARM = "store"


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
        self._failed_wanted = anyio.Event()
        # what the store refused, in order, written again before anything newer
        self._retry_ops: list[tuple | None] = []
        self._retry_pages: list[tuple] = []
        self._failed_reads: list[Queue] = []  # queues whose page read failed: asked again later
        # sync durations for metrics: counts per bucket (upper bounds in SYNC_BUCKETS), sum
        self._sync_counts = [0] * (len(SYNC_BUCKETS) + 1)
        self._sync_total = 0.0
        self.journal.on_pending = self.flush

    @property
    def failed(self) -> bool:
        return self.journal.failed

    # ---------------------------------------------------------------- writing

    def flush(self) -> None:
        """Write what the journal holds (on the loop, unsynced) and ask for a sync."""
        ops, pages, waiters = self.journal.take()
        if self.journal.page_requests or self.journal.stream_reads:
            self._pages_wanted.set()
        if pages or self._retry_pages:
            self._write_pages(pages)
        if self.journal.failed:  # the alarm is on: keep everything for the retry, in order
            self._retry_ops.extend(ops)
            self._refuse(waiters)
            return
        if ops:
            try:
                self.store.write(ops)
            except Exception as exc:  # StoreError, or a bug: either way nothing is dropped
                self._retry_ops = list(ops)
                self._fail(f"a write failed: {exc}", waiters)
                return
        if ops or waiters:
            self._generation += 1
            if waiters:
                self._waiting.append((self._generation, waiters))
            self._wanted.set()

    def _write_pages(self, pages: list[tuple]) -> None:
        if self._retry_pages:
            self._retry_pages.extend(pages)
            return  # the retry task writes them, in order
        try:
            self.store.write_pages(pages)
        except Exception as exc:
            self._retry_pages = list(pages)
            log.error("writing queue pages failed (kept, written again every %.0f s): %s", RETRY_SECONDS, exc)
            self._failed_wanted.set()

    async def run(self) -> None:
        """Sync whenever something was written since the last sync; release confirms after."""
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            generation = self._generation
            if generation == self._synced_generation or self.journal.failed:
                continue
            started = time.perf_counter()
            try:
                await anyio.to_thread.run_sync(self.store.sync, limiter=self._limiter)
            except Exception as exc:
                waiting = [w for _, batch in self._waiting for w in batch]
                self._waiting.clear()
                self._fail(f"a sync failed: {exc}", waiting)
                continue
            self._count_sync(time.perf_counter() - started)
            self._synced_generation = generation
            try:
                self._release(generation)
            except Exception as exc:  # a bug in confirm handling must not stop the syncs
                log_internal_error(log, "releasing publisher confirms", exc)

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
                _settle(channel, seq, True)
            released = True
        if released:
            self.broker.run_pending()

    def _refuse(self, waiters: list) -> None:
        for channel, seq in waiters:
            _settle(channel, seq, False)
        if waiters:
            self.broker.run_pending()

    # ---------------------------------------------------------------- the store alarm

    def _fail(self, reason: str, waiters: list) -> None:
        if not self.journal.failed:
            log.error("store alarm: %s; publishers are blocked and persistent messages refused "
                      "until the store works again (tried every %.0f s)", reason, RETRY_SECONDS)
        self.journal.failed = True
        self._refuse(waiters)
        self.broker.set_alarm(STORE_ALARM, True)
        self._failed_wanted.set()

    async def run_retries(self) -> None:
        """While the store alarm is on (or pages wait to be written), write what the store
        refused, and sync, every ``RETRY_SECONDS``; success clears the alarm."""
        while True:
            await self._failed_wanted.wait()
            self._failed_wanted = anyio.Event()
            attempts = 0
            while self.journal.failed or self._retry_pages or self._failed_reads:
                await anyio.sleep(RETRY_SECONDS)
                attempts += 1
                try:
                    await self._retry()
                except Exception as exc:
                    if attempts % RETRY_LOG_EVERY == 0:  # (RocksDB resumes by itself only once it
                        # has room for a memtable, 32 MiB, after a write failed for want of space)
                        log.warning("the store still fails after %d tries: %s", attempts, exc)
                    continue

    async def _retry(self) -> None:
        if self._retry_pages:
            pages = self._retry_pages
            self.store.write_pages(pages)
            del self._retry_pages[:len(pages)]
            log.info("queue pages written after an earlier failure")
            self._pages_wanted.set()  # the reads that waited for them
        if self.journal.failed:
            ops = self._retry_ops
            generation = self._generation
            if ops:
                count = len(ops)
                self.store.write(ops)
                # written: a sync that fails below must not have them written twice (a stream's
                # chunks would be appended again); the store keeps what it must still sync
                del ops[:count]
            await anyio.to_thread.run_sync(self.store.sync, limiter=self._limiter)
            if ops:  # what arrived during the sync (acks, say): written now, synced by run()
                self.store.write(ops)
                ops.clear()
                self._generation += 1
                self._wanted.set()
            if generation > self._synced_generation:  # confirms and commits written before the failure
                self._synced_generation = generation
                self._release(generation)
            self.journal.failed = False
            log.warning("store alarm cleared: the store works again")
            self.broker.set_alarm(STORE_ALARM, False)
        if self._failed_reads:
            requests, self._failed_reads = self._failed_reads, []
            for queue in requests:
                if not queue.deleted and not queue.paging_in:
                    queue.paging_in = True
                    self.journal.request_page(queue)
            self._pages_wanted.set()

    # ---------------------------------------------------------------- paging

    async def run_pages(self) -> None:
        """Read the pages queues asked for, and the messages stream consumers behind their
        stream's tail need, one read at a time, each in a worker thread."""
        requests = self.journal.page_requests
        stream_reads = self.journal.stream_reads
        while True:
            await self._pages_wanted.wait()
            self._pages_wanted = anyio.Event()
            while stream_reads and not self.journal.failed:
                consumer = stream_reads.pop(0)
                try:
                    await self._read_stream(consumer)
                except Exception as exc:  # one consumer's fault: the reader goes on
                    log_internal_error(log, f"a read of stream '{consumer.queue.name}'", exc)
                    consumer.read_failed()
                self.broker.run_pending()
            while requests:
                if self._retry_pages:  # what they would read is not written yet: after the retry
                    break
                queue = requests.pop(0)
                try:
                    await self._read_page(queue)
                except Exception as exc:  # one queue's fault: the page reader goes on
                    log_internal_error(log, f"the page read of queue '{queue.name}'", exc)
                    queue.page_read_failed()
                self.broker.run_pending()

    async def _read_page(self, queue: Queue) -> None:
        if queue.queue_id is not None and self.journal.failed:
            # a durable queue's paged-out entries may be among the writes the store refused:
            # read once they are written
            self._read_later(queue)
            return
        wanted = queue.page_wanted()
        if wanted is None:
            return
        epoch, durable, page_id, from_seq, count, max_bytes = wanted
        try:
            page = await anyio.to_thread.run_sync(self.store.read_page, durable, page_id, from_seq,
                                                  count, max_bytes, limiter=self._page_limiter)
        except Exception as exc:
            log.error("queue '%s': reading its paged-out messages failed (kept, tried again in "
                      "%.0f s): %s", queue.name, RETRY_SECONDS, exc)
            self._read_later(queue)
            return
        queue.paged_in(epoch, page)

    async def _read_stream(self, consumer: StreamConsumer | SharedRead) -> None:
        wanted = consumer.read_wanted()
        if wanted is None:
            return
        try:
            read, next_offset = await anyio.to_thread.run_sync(self.store.read_stream, *wanted,
                                                               limiter=self._page_limiter)
        except Exception as exc:
            log.error("stream '%s': reading messages for consumer '%s' failed (tried again in %.0f s): %s",
                      consumer.queue.name, consumer.tag, READ_RETRY_SECONDS, exc)
            consumer.read_failed()
            return
        consumer.read_done(read, next_offset)

    def _read_later(self, queue: Queue) -> None:
        """No page for ``queue`` now: its waiting gets are answered from memory and the read is
        asked for again by the retry task."""
        queue.page_read_failed()
        if queue not in self._failed_reads:
            self._failed_reads.append(queue)
        self._failed_wanted.set()


def _settle(channel: object, seq: int, ok: bool) -> None:
    """Release one waiter (a publisher confirm, a tx.commit): a bug in one never strands the rest."""
    try:
        channel.confirm_synced(seq, ok=ok)  # type: ignore[attr-defined]
    except Exception as exc:
        log_internal_error(log, "settling a publisher confirm", exc)
