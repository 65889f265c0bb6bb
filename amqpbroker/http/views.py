"""Broker objects as the JSON RabbitMQ's management API returns for them (the fields tools read).

Pure functions of broker state; the app in ``management.py`` calls them on the event loop.
"""

from __future__ import annotations

import base64
import datetime
import os
import decimal
import hashlib
import json
import math
from typing import Any

from amqpbroker import __version__
from amqpbroker.broker.backlog import UnackedAges, oldest_ready_age, redelivery_histogram
from amqpbroker.broker.broker import NODE_NAME, Broker
from amqpbroker.broker.policies import effective_definition
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.session import Session
from amqpbroker.broker.stream import StreamConsumer, StreamQueue
from amqpbroker.http.history import Window, details

__all__ = ["NODE", "MAX_JSON_DEPTH", "TOO_DEEP", "json_value", "overview", "queue_view", "exchange_view",
           "binding_views", "connection_view", "channel_views", "consumer_views", "vhost_view", "user_view",
           "node_view"]

NODE = NODE_NAME

MAX_JSON_DEPTH = 100  # tables and arrays shown inside one another; deeper ones become TOO_DEEP
TOO_DEEP = f"(nested deeper than {MAX_JSON_DEPTH} levels)"


def json_value(value: Any, depth: int = 0) -> Any:
    """Any field-table value (whatever pamqp or the codec decodes, or a JSON body held) as JSON
    that always renders: text that is not UTF-8 and bytes as RabbitMQ shows them, datetimes as
    seconds, decimals and floats as numbers (or text when not finite), and nothing nested deeper
    than ``MAX_JSON_DEPTH``, so that rendering never exhausts the stack."""
    kind = type(value)
    if kind is str:
        return value if value.isascii() else _text(value)
    if value is None or kind is int or kind is bool:
        return value
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_JSON_DEPTH:
            return TOO_DEEP
        if isinstance(value, dict):
            return {_key(key): json_value(item, depth + 1) for key, item in value.items()}
        return [json_value(item, depth + 1) for item in value]
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):  # an int subclass (the codec's Timestamp)
        return int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _utf8_or_base64(bytes(value))
    if isinstance(value, (float, decimal.Decimal)):
        number = float(value) if not isinstance(value, decimal.Decimal) or value.is_finite() else math.nan
        return number if math.isfinite(number) else str(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp())
    return str(value)


def _text(value: str) -> str:
    """A string that may hold surrogate escapes (bytes that were not UTF-8)."""
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        pass
    try:
        return _utf8_or_base64(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return _utf8_or_base64(value.encode("utf-8", "surrogatepass"))


def _key(key: Any) -> str:
    return _text(key) if isinstance(key, str) else str(_scalar(key))


def _utf8_or_base64(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "Not UTF-8, base64 is: " + base64.b64encode(data).decode()


def queue_type(queue: Queue) -> str:
    return queue.type.name


def queue_view(vhost: str, queue: Queue, ages: UnackedAges | None = None) -> dict[str, Any]:
    """A queue as the API shows it (``ages``: the broker's unacked ages, for ``oldest_unacked_age``)."""
    queue_type = queue.type.name
    counters = queue.counters
    hold = queue.dead_letter_hold
    return {
        "name": queue.name, "vhost": vhost, "durable": queue.durable, "auto_delete": queue.auto_delete,
        "exclusive": queue.exclusive, "arguments": json_value(queue.arguments), "type": queue_type,
        "node": NODE, "state": "running",
        "policy": queue.policy.name if queue.policy is not None else None,
        "operator_policy": queue.operator_policy.name if queue.operator_policy is not None else None,
        "effective_policy_definition": effective_definition(queue.policy, queue.operator_policy),
        "messages": queue.messages_total + len(hold or ()),
        "messages_ready": queue.message_count, "messages_unacknowledged": queue.unacked_count,
        # held for dead-lettering at least once (RabbitMQ's quorum-queue fields)
        "messages_dlx": len(hold or ()), "message_bytes_dlx": hold.bytes if hold is not None else 0,
        "messages_paged_out": queue.paged,
        "message_bytes_paged_out": queue.paged_bytes, "messages_ready_ram": len(queue.ready),
        "message_bytes_ready": queue.ready_bytes + queue.paged_bytes,
        "consumers": len(queue.consumers),
        "delivery_limit": queue.delivery_limit,
        "messages_dropped_by_delivery_limit": counters.dropped_by_delivery_limit,
        "messages_dead_lettered_by_delivery_limit": counters.dead_lettered_by_delivery_limit,
        "consumer_timeouts": counters.consumer_timeouts,
        "messages_redelivered": redelivery_histogram(queue),
        "deduplication": queue.dedup.view() if queue.dedup is not None else None,
        "retry": queue.retry.view() if queue.retry is not None else None,
        "messages_retrying": len(queue.retrying),
        "oldest_ready_age": _rounded(oldest_ready_age(queue, queue.host.clock())),
        "oldest_unacked_age": _rounded(ages.of_queue(queue)) if ages is not None else None,
        "exclusive_consumer_tag": queue.exclusive_consumer.tag if queue.exclusive_consumer else None,
        "idle_since": None if queue.consumers else _timestamp(queue.last_used),
        "owner_pid_details": {"name": queue.exclusive_owner.name} if queue.exclusive_owner is not None else {},
        "queueing": _figures(queue),
        "message_stats": _queue_stats(queue),
        **({"stream": queue.view()} if isinstance(queue, StreamQueue) else {}),
    }


def _queue_stats(queue: Queue) -> dict[str, Any]:
    """Counts since the queue was declared (arrivals, completions through consumers) with their
    rates over the last seconds, in RabbitMQ's ``message_stats`` shape."""
    rates = queue.sampler.rates() or (0.0, 0.0)
    return {"publish": queue.arrivals, "publish_details": {"rate": round(rates[0], 1)},
            "ack": queue.completed, "ack_details": {"rate": round(rates[1], 1)}}


def _figures(queue: Queue) -> dict[str, float | None] | None:
    """λ, μ, ρ and W over the last samples (see ``amqpbroker.broker.queueing``)."""
    figures = queue.sampler.figures(len(queue.consumers))
    return figures.as_dict() if figures is not None else None


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def exchange_view(vhost: str, exchange: Any, held: int = 0) -> dict[str, Any]:
    """An exchange as the API shows it; an ``x-delayed-message`` one with the messages it holds."""
    view = {"name": exchange.name, "vhost": vhost, "type": exchange.type_name, "durable": exchange.durable,
            "auto_delete": exchange.auto_delete, "internal": exchange.internal,
            "arguments": json_value(exchange.arguments), "user_who_performed_action": ""}
    if exchange.delayed:
        view["messages_delayed"] = held
    if exchange.dedup is not None:
        view["deduplication"] = exchange.dedup.view()
    return view


def binding_views(broker: Broker, vhost_name: str | None = None) -> list[dict[str, Any]]:
    views = []
    for vhost in broker.vhosts.values():
        if vhost_name is not None and vhost.name != vhost_name:
            continue
        for queue in vhost.queues.values():  # the default exchange's implicit bindings first
            views.append(_binding(vhost.name, "", queue.name, "queue", queue.name, {}))
        for exchange in vhost.exchanges.values():
            for binding in exchange.bindings.values():
                kind = "queue" if isinstance(binding.destination, Queue) else "exchange"
                views.append(_binding(vhost.name, exchange.name, binding.destination.name, kind,
                                      binding.routing_key, binding.arguments))
    return views


def _binding(vhost: str, source: str, destination: str, kind: str, key: str, arguments: dict) -> dict[str, Any]:
    return {"source": source, "vhost": vhost, "destination": destination, "destination_type": kind,
            "routing_key": key, "arguments": json_value(arguments),
            "properties_key": properties_key(key, arguments)}


def properties_key(routing_key: str, arguments: dict) -> str:
    """What names a binding in ``/api/bindings/.../{props}`` paths, as RabbitMQ: the quoted routing
    key, and with arguments ``~`` and a digest of them."""
    quoted = routing_key.replace("%", "%25").replace("/", "%2F")
    if not arguments:
        return quoted or "~"  # (an empty path segment could not name it)
    digest = hashlib.sha256(json.dumps(json_value(arguments), sort_keys=True, default=str).encode()).digest()
    return f"{quoted}~{base64.urlsafe_b64encode(digest[:9]).decode()}"


def connection_view(session: Session) -> dict[str, Any]:
    connection = session.connection
    properties = json_value(connection.client_properties or {})
    peer_host, _, peer_port = session.peer.rpartition(":")
    return {
        "name": session.name, "node": NODE, "vhost": session.vhost.name if session.vhost else None,
        "user": session.user, "state": _connection_state(session),
        "channels": len(session.channels), "protocol": "AMQP 0-9-1", "auth_mechanism": "PLAIN",
        "peer_host": peer_host, "peer_port": int(peer_port) if peer_port.isdigit() else None,
        "client_properties": properties, "user_provided_name": properties.get("connection_name"),
        "connected_at": int(session.connected_at * 1000), "frame_max": connection.frame_max,
        "channel_max": connection.channel_max, "timeout": connection.heartbeat, "type": "network",
    }


def _connection_state(session: Session) -> str:
    """As RabbitMQ: ``blocked`` by a resource alarm, ``flow`` while read less for its queues'
    consumers (flow.py), else ``running``."""
    if session.blocked:
        return "blocked"
    return "flow" if session.flow.in_flow else "running"


def channel_views(broker: Broker) -> list[dict[str, Any]]:
    views = []
    for session in broker.sessions:
        for number, channel in session.channels.items():
            views.append({
                "name": f"{session.name} ({number})", "number": number, "node": NODE,
                "connection_details": {"name": session.name, "peer_host": session.peer.rpartition(":")[0]},
                "vhost": session.vhost.name if session.vhost else None, "user": session.user,
                "consumer_count": len(channel.consumers), "messages_unacknowledged": len(channel.unacked),
                "prefetch_count": channel.consumer_prefetch, "global_prefetch_count": channel.global_prefetch,
                "confirm": channel.confirm, "transactional": channel.tx is not None,
                "state": _connection_state(session),  # (flow and blocked are the connection's)
            })
    return views


def consumer_views(broker: Broker) -> list[dict[str, Any]]:
    views = []
    ages = UnackedAges(broker)
    for session in broker.sessions:
        for number, channel in session.channels.items():
            for consumer in channel.consumers.values():
                views.append({
                    "consumer_tag": consumer.tag, "ack_required": not consumer.no_ack,
                    "messages_unacknowledged": consumer.unacked,
                    "oldest_unacked_age": _rounded(ages.of_consumer(consumer)),
                    "exclusive": consumer.exclusive, "prefetch_count": consumer.prefetch,
                    "arguments": json_value(consumer.arguments), "active": True,
                    **({"stream_offset": consumer.offset} if isinstance(consumer, StreamConsumer) else {}),
                    "queue": {"name": consumer.queue.name, "vhost": consumer.queue.vhost},
                    "channel_details": {"name": f"{session.name} ({number})", "number": number,
                                        "connection_name": session.name, "user": session.user},
                })
    return views


def vhost_view(broker: Broker, name: str) -> dict[str, Any]:
    vhost = broker.vhosts[name]
    queues = vhost.queues.values()
    ready = sum(queue.message_count for queue in queues)
    unacked = sum(queue.unacked_count for queue in queues)
    return {"name": name, "description": vhost.description, "tags": list(vhost.tags),
            "default_queue_type": vhost.default_queue_type or "classic",
            "tracing": False, "messages": ready + unacked, "messages_ready": ready,
            "messages_unacknowledged": unacked, "cluster_state": {NODE: "running"}}


def user_view(user: Any) -> dict[str, Any]:
    return {"name": user.name, "tags": list(user.tags),
            "password_hash": base64.b64encode(user.password_hash).decode(),
            "hashing_algorithm": "rabbit_password_hashing_sha256", "limits": dict(user.limits)}


def permission_views(users: Any) -> list[dict[str, Any]]:
    return [{"user": user, "vhost": vhost, "configure": permission.configure, "write": permission.write,
             "read": permission.read} for (user, vhost), permission in sorted(users.permissions.items())]


def topic_permission_views(users: Any) -> list[dict[str, Any]]:
    return [{"user": user, "vhost": vhost, "exchange": exchange, "write": permission.write, "read": permission.read}
            for (user, vhost), held in sorted(users.topic_permissions.items())
            for exchange, permission in sorted(held.items())]


def node_view(broker: Broker, memory_used: int | None, memory_limit: int | None) -> dict[str, Any]:
    """The node as RabbitMQ's /api/nodes shows it (the figures the server samples once a second)."""
    node = broker.node
    return {"name": NODE, "type": "disc", "running": True, "mem_used": memory_used or 0,
            "mem_limit": memory_limit or 0, "mem_alarm": broker.memory_alarm, "disk_free_alarm": broker.disk_alarm,
            "store_alarm": broker.store_alarm, "disk_free": node.disk_free or 0,
            "disk_free_limit": node.disk_free_limit, "fd_used": node.open_fds or 0, "fd_total": node.max_fds or 0,
            "proc_used": len(broker.sessions), "sockets_used": len(broker.sessions),
            "uptime": int(node.uptime() * 1000), "os_pid": str(os.getpid()), "rates_mode": "basic",
            "being_drained": False}


def overview(broker: Broker, listeners: list[dict[str, Any]], vhosts: list[Any] | None = None,
             sessions: list[Any] | None = None, rates_window: Window | None = None,
             lengths_window: Window | None = None) -> dict[str, Any]:
    """The node's totals, or those of the ``vhosts`` and ``sessions`` a user may see (its message
    rates stay the node's)."""
    whole = vhosts is None  # (the node's queue-length samples are shown to whoever sees the whole node)
    sessions = list(broker.sessions) if sessions is None else sessions
    vhosts = list(broker.vhosts.values()) if vhosts is None else vhosts
    queues = [queue for vhost in vhosts for queue in vhost.queues.values()]
    totals = broker.totals.including(sessions)
    ready = sum(queue.message_count for queue in queues)
    unacked = sum(queue.unacked_count for queue in queues)
    return {
        "management_version": __version__, "rabbitmq_version": __version__, "product_name": "amqpbroker",
        "product_version": __version__, "node": NODE, "cluster_name": broker.cluster_name, "rates_mode": "basic",
        "object_totals": {
            "connections": len(sessions), "channels": sum(len(session.channels) for session in sessions),
            "exchanges": sum(len(vhost.exchanges) for vhost in vhosts),
            "queues": len(queues), "consumers": sum(len(queue.consumers) for queue in queues),
        },
        "queue_totals": _queue_totals(broker, ready, unacked, lengths_window if whole else None),
        "message_stats": _overview_stats(broker, totals, rates_window),
        "listeners": listeners,
    }


_STATS = (("publish", "received"), ("deliver_get", "delivered"), ("ack", "acknowledged"),
          ("confirm", "confirmed"), ("return_unroutable", "unroutable_returned"),
          ("drop_unroutable", "unroutable_dropped"), ("redeliver", "redelivered"),
          ("deliver_no_ack", "consume_auto_ack"), ("get_no_ack", "get_auto_ack"), ("get", "get_manual_ack"),
          ("get_empty", "get_empty"))


def _overview_stats(broker: Broker, totals: dict[str, int], window: Window | None) -> dict[str, Any]:
    """The message counters and their rates over the last seconds of samples (with the samples
    themselves for ``window``)."""
    samples = broker.total_samples
    stats: dict[str, Any] = {}
    for name, key in _STATS:
        stats[name] = totals[key]
        stats[f"{name}_details"] = details(samples, key, window if name in _SAMPLED else None)
    return stats


_SAMPLED = ("publish", "deliver_get", "ack")  # the rates whose samples the overview can give


def _queue_totals(broker: Broker, ready: int, unacked: int, window: Window | None) -> dict[str, Any]:
    totals: dict[str, Any] = {"messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked}
    if window is not None:
        for name, key in (("messages_ready", "ready"), ("messages_unacknowledged", "unacked")):
            totals[f"{name}_details"] = details(broker.total_samples, key, window)
    return totals


def _timestamp(seconds: float) -> str:
    """RabbitMQ's ``idle_since`` format."""
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
