"""Rebuild the broker from what the store held: users, vhosts and permissions first
(:func:`amqpbroker.broker.tenancy.restore_metadata`), topology through ``VirtualHost.apply`` (the same
path live declares take), then each durable queue's messages in their original order; messages
that had been delivered come back with ``redelivered`` set.

A queue's first entries come back into memory, up to its paging window; the rest stay in the store
as the queue's paged-out part, read back as consumers drain it. Entries that must be in memory
(those referring to a shared message, or delivered before) are always loaded; in a running broker
they never come after paged-out ones, so this only matters if the window was made smaller.
Transient messages that had been paged out of a durable queue are dropped, as RabbitMQ does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from amqpbroker.broker import ops, tenancy
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.journal import INLINE
from amqpbroker.broker.message import Message
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.stream import StreamQueue
from amqpbroker.broker.stream_log import Chunk

__all__ = ["restore"]

log = logging.getLogger("amqpbroker.recovery")

_CLEANUP_BATCH = 10_000


@contextlib.contextmanager
def _skipped_if_bad(kind: str, definition: Any) -> Iterator[None]:
    """Restore one definition; one that cannot be (a record altered or from another version) is
    reported by name, in one line, and skipped: the broker starts with everything else."""
    try:
        yield
    except Exception as exc:
        name = definition.get("name", definition.get("destination", "?")) if isinstance(definition, dict) else "?"
        log.error("skipped the stored %s '%s': %s: %s", kind, name, type(exc).__name__, exc)


def restore(broker: Broker, store: Any) -> None:
    """Read ``store`` (an ``amqpbroker.store.base.Store``) into a new broker whose journal is still
    disabled, and drop from the store what no queue holds any more. Blocking: call before serving."""
    recovered = store.recover()
    journal = broker.journal
    if not tenancy.restore_metadata(broker, recovered.metadata):
        # a first start (or a data directory from before users and vhosts were stored): the
        # defaults the broker was built with are written now, as RabbitMQ does on a new node
        store.write(tenancy.metadata_records(broker))
    elif not any(kind == tenancy.GLOBAL_PARAMETER for kind, _, _ in recovered.metadata):
        # stored before global parameters were: the new internal_cluster_id is kept from now on
        store.write([record for record in tenancy.metadata_records(broker) if record[1] == tenancy.GLOBAL_PARAMETER])
    for problem in recovered.unreadable:
        log.error("skipped an unreadable definition record: %s", problem)

    def vhost_of(definition: dict[str, Any]) -> Any:
        name = definition.get("vhost", "/")
        if name not in broker.vhosts:  # its record is missing: keep its entities reachable
            log.warning("vhost '%s' has definitions but no record: created", name)
            store.write([("meta", tenancy.VHOST, name, json.dumps({"name": name}).encode())])
            broker.add_vhost(name)
        return broker.vhosts[name]

    for definition in recovered.exchanges:
        with _skipped_if_bad("exchange", definition):
            vhost = vhost_of(definition)
            if definition["name"] not in vhost.exchanges:
                vhost.apply(ops.DeclareExchange(definition["name"], definition["type"], definition["durable"],
                                                definition["auto_delete"], definition["internal"],
                                                dict(definition.get("arguments") or {})))
    queues_by_id: dict[int, Queue] = {}
    for definition in recovered.queues:
        with _skipped_if_bad("queue", definition):
            queue = vhost_of(definition).apply(ops.DeclareQueue(definition["name"], definition["durable"],
                                                 definition["auto_delete"], dict(definition.get("arguments") or {}),
                                                 queue_id=int(definition["id"])))
            queues_by_id[definition["id"]] = queue
            journal.next_queue_id = max(journal.next_queue_id, definition["id"] + 1)
    for definition in recovered.bindings:
        with _skipped_if_bad("binding", definition):
            _restore_binding(vhost_of(definition), definition)

    messages: dict[int, Message] = {}
    for message_id, stored in recovered.messages.items():
        message = messages[message_id] = Message.from_store(*stored)
        message.message_id = message_id
        message.durable = True
        journal.next_message_id = max(journal.next_message_id, message_id + 1)

    cleanup = _Cleanup(store)
    for delay_id, vhost_name, exchange_name, due, stored in recovered.delayed:
        journal.next_delay_id = max(journal.next_delay_id, delay_id + 1)
        if vhost_name in broker.vhosts and exchange_name in broker.vhosts[vhost_name].exchanges:
            vhost = broker.vhosts[vhost_name]
            vhost.delayed.hold(vhost.exchanges[exchange_name], Message.from_store(*stored), due, delay_id)
        else:
            cleanup.add(("delayed-", delay_id))
    marks_used: set[tuple[int, int]] = set()
    returns: dict[int, dict[int, int]] = {}  # queue id -> seq -> times returned
    for (queue_id, seq), returned in recovered.delivery_counts.items():
        returns.setdefault(queue_id, {})[seq] = returned
    waits: dict[int, dict[int, float]] = {}  # queue id -> seq -> when its redelivery backoff ends
    now = time.time()
    for (queue_id, seq), due in recovered.retry_due.items():
        if due > now:
            waits.setdefault(queue_id, {})[seq] = due
    held: dict[int, dict[int, str]] = {}  # queue id -> seq -> why it died (held for dead-lettering)
    for (queue_id, seq), reason in recovered.held_dead_letters.items():
        held.setdefault(queue_id, {})[seq] = reason
    count = paged = 0
    for queue_id, queue in queues_by_id.items():
        if isinstance(queue, StreamQueue):  # its index and tracked offsets; its messages stay in the store
            queue.restore_stream([Chunk(*chunk) for chunk in store.stream_chunks(queue_id)],
                                 store.stream_offsets(queue_id))
            count += queue.message_count
            continue
        _restore_queue(queue, store, messages, journal.paging_window, cleanup, marks_used,
                       returns.pop(queue_id, {}), held.pop(queue_id, {}), waits.get(queue_id, {}))
        count += queue.message_count
        paged += queue.paged
    for queue_id, seq in recovered.delivered_marks - marks_used:
        cleanup.add(("delivered-", queue_id, seq))
    for queue_id, counted in returns.items():  # counts of queues that are gone
        for seq in counted:
            cleanup.add(("count-", queue_id, seq))
    for queue_id, reasons in held.items():  # ... and what they held
        for seq in reasons:
            cleanup.add(("held-", queue_id, seq))
    for message_id, message in messages.items():
        if not message.refs:
            cleanup.add(("message-", message_id))
    _restore_deduplication(broker, queues_by_id, recovered.deduplication, cleanup)
    cleanup.finish()
    log.info("recovered %d exchanges, %d queues, %d bindings, %d messages (%d of them paged out)",
             len(recovered.exchanges), len(recovered.queues), len(recovered.bindings), count, paged)


def _restore_queue(queue: Queue, store: Any, messages: dict[int, Message], window: tuple[int, int],
                   cleanup: _Cleanup, marks_used: set[tuple[int, int]], returns: dict[int, int],
                   held: dict[int, str], waits: dict[int, float]) -> None:
    queue_id = queue.queue_id

    def survives(entry: Any) -> bool:
        return messages.get(entry.message_id) is not None if entry.message_id else entry.persistent

    # first pass, without message bodies: what survives, and how far memory must reach
    total = must_load = last_seq = 0
    for entry in store.queue_entries(queue_id, with_messages=False):
        last_seq = entry.seq
        if not survives(entry):
            cleanup.add(("entry-", queue_id, entry.seq) if entry.message_id else ("inline-", queue_id, entry.seq))
            continue
        if entry.seq in returns:  # how often it was returned: the count goes on from there
            queue.delivery_counts[entry.seq] = returns.pop(entry.seq)
        total += 1
        if entry.message_id or entry.delivered or entry.seq in held or entry.seq in waits:
            must_load = total

    # second pass: load the in-memory part
    window_messages, window_bytes = window
    entries: list[tuple] = []
    size = page_next = 0
    if total:
        for entry in store.queue_entries(queue_id, with_messages=True):
            if not survives(entry):
                continue
            if len(entries) >= must_load and (len(entries) >= window_messages or size >= window_bytes):
                page_next = entry.seq
                break
            if entry.message_id:
                message = messages[entry.message_id]
                message.refs += 1
            else:
                message = Message.from_store(*entry.inline)
                message.message_id = INLINE
                if entry.delivered:
                    marks_used.add((queue_id, entry.seq))
            size += len(message.body)
            entries.append((entry.seq, message, entry.delivered))
    for seq in returns:  # counts whose entries are gone
        cleanup.add(("count-", queue_id, seq))
    loaded = len(entries)
    waiting = [(waits[entry[0]], entry) for entry in entries if entry[0] in waits and entry[0] not in held]
    held_entries = [(entry, held.pop(entry[0])) for entry in entries if entry[0] in held]
    for seq in held:  # held marks whose entries are gone
        cleanup.add(("held-", queue_id, seq))
    if held_entries or waiting:
        apart = {entry[0] for entry, _ in held_entries} | {entry[0] for _, entry in waiting}
        entries = [entry for entry in entries if entry[0] not in apart]
    queue.restore(entries, paged=total - loaded, page_next=page_next, last_seq=last_seq)
    if held_entries:
        queue.restore_held(held_entries)
    if waiting:  # their backoff goes on where it was
        queue.restore_retrying(waiting)


def _restore_deduplication(broker: Broker, queues_by_id: dict[int, Queue],
                           stored: dict[str, list[tuple[str, float, float]]], cleanup: _Cleanup) -> None:
    """Fill the deduplication caches of durable queues and exchanges; what has no owner any more,
    has expired or is past its cache's size goes from the store."""
    caches = {f"q:{queue_id}": queue.dedup for queue_id, queue in queues_by_id.items() if queue.dedup is not None}
    for vhost in broker.vhosts.values():
        for exchange in vhost.exchanges.values():
            if exchange.dedup is not None and exchange.dedup.owner is not None:
                caches[exchange.dedup.owner] = exchange.dedup
    now = time.time()
    for owner, entries in stored.items():
        cache = caches.get(owner)
        if cache is None:
            cleanup.add(("dedup*", owner))
            continue
        for value in cache.restore(entries, now):
            cleanup.add(("dedup-", owner, value))


class _Cleanup:
    """Store operations dropping what recovery found orphaned, written in batches, synced at the end."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.ops: list[tuple] = []
        self.written = False

    def add(self, op: tuple) -> None:
        self.ops.append(op)
        if len(self.ops) >= _CLEANUP_BATCH:
            self._write()

    def _write(self) -> None:
        self.store.write(self.ops)
        self.ops = []
        self.written = True

    def finish(self) -> None:
        if self.ops:
            self._write()
        if self.written:
            self.store.sync()


def _restore_binding(vhost: Any, definition: dict[str, Any]) -> None:
    to_exchange = definition["destination_is_exchange"]
    ends = (definition["source"] in vhost.exchanges,
            definition["destination"] in (vhost.exchanges if to_exchange else vhost.queues))
    if not all(ends):
        log.warning("dropping a stored binding whose ends are gone: %r", definition)
        return
    vhost.apply(ops.Bind(definition["source"], definition["destination"], definition["routing_key"],
                         dict(definition.get("arguments") or {}), destination_is_exchange=to_exchange))
