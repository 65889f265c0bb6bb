"""Rebuild the broker from what the store held: topology through ``VirtualHost.apply`` (the same
path live declares take), then each durable queue's messages in their original order; messages
that had been delivered come back with ``redelivered`` set."""

from __future__ import annotations

import logging
from typing import Any

from amqpbroker.broker import ops
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.message import Message

__all__ = ["restore"]

log = logging.getLogger("amqpbroker.recovery")


def restore(broker: Broker, recovered: Any) -> list[tuple]:
    """Apply ``recovered`` (an ``amqpbroker.store.base.Recovered``) to a new broker (journal still disabled). Returns the store keys of
    orphans to drop: messages no queue holds, entries of unknown queues or messages."""
    journal = broker.journal
    vhost = broker.vhosts["/"]
    for definition in recovered.exchanges:
        if definition["name"] not in vhost.exchanges:
            vhost.apply(ops.DeclareExchange(definition["name"], definition["type"], definition["durable"],
                                            definition["auto_delete"], definition["internal"],
                                            dict(definition.get("arguments") or {})))
    queues_by_id = {}
    for definition in recovered.queues:
        queue = vhost.apply(ops.DeclareQueue(definition["name"], definition["durable"],
                                             definition["auto_delete"], dict(definition.get("arguments") or {}),
                                             queue_id=definition["id"]))
        queues_by_id[definition["id"]] = queue
        journal.next_queue_id = max(journal.next_queue_id, definition["id"] + 1)
    for definition in recovered.bindings:
        _restore_binding(vhost, definition)

    messages: dict[int, Message] = {}
    orphans: list[tuple] = []
    for message_id, stored in recovered.messages.items():
        exchange_end = 1 + stored.routing_raw[0]
        message = Message(stored.routing_raw[1:exchange_end].decode(),
                          stored.routing_raw[exchange_end + 1:].decode(),
                          stored.routing_raw, stored.header, stored.body)
        message.message_id = message_id
        messages[message_id] = message
        journal.next_message_id = max(journal.next_message_id, message_id + 1)
    count = 0
    for queue_id, stored_entries in recovered.entries.items():
        queue = queues_by_id.get(queue_id)
        entries = []
        for seq, message_id, delivered in stored_entries:
            message = messages.get(message_id)
            if queue is None or message is None:
                orphans.append(("entry", queue_id, seq))
                continue
            message.refs += 1
            entries.append((seq, message, delivered))
        if queue is not None:
            queue.restore(entries)
            count += len(entries)
    orphans.extend(("message", message_id) for message_id, message in messages.items() if not message.refs)
    log.info("recovered %d exchanges, %d queues, %d bindings, %d messages",
             len(recovered.exchanges), len(recovered.queues), len(recovered.bindings), count)
    return orphans


def _restore_binding(vhost: Any, definition: dict[str, Any]) -> None:
    to_exchange = definition["destination_is_exchange"]
    ends = (definition["source"] in vhost.exchanges,
            definition["destination"] in (vhost.exchanges if to_exchange else vhost.queues))
    if not all(ends):
        log.warning("dropping a stored binding whose ends are gone: %r", definition)
        return
    vhost.apply(ops.Bind(definition["source"], definition["destination"], definition["routing_key"],
                         dict(definition.get("arguments") or {}), destination_is_exchange=to_exchange))
