"""Dead-lettering, as RabbitMQ 4 does it: the message republished to the queue's dead-letter
exchange with an ``x-death`` history in its headers.

``x-death`` is an array of tables, most recent first, one per (queue, reason): ``count``,
``reason``, ``queue``, ``time``, ``exchange``, ``routing-keys`` (and ``original-expiration`` when
the message had a per-message TTL, which is removed so the copy does not expire again). The
first death is also kept in ``x-first-death-queue`` / ``-reason`` / ``-exchange``, the latest in
``x-last-death-queue`` / ``-reason`` / ``-exchange`` (RabbitMQ 3.13+).

Under the 3.13 compatibility profile (``client_history``) a published ``x-death`` header is the
history, as RabbitMQ 3.x took it. Otherwise, as RabbitMQ 4, the history is the broker's own
record (``Message.deaths``): an ``x-death`` header a client published is data, neither continued nor used to detect cycles (RabbitMQ 3.x
took it as history); it is replaced on the message's first death here. A message read back
from the store takes its ``x-death`` header as its record (the broker wrote it).
"""

from __future__ import annotations

import datetime
from typing import Any

from amqpbroker.broker.message import FROM_HEADERS, Message
from amqpbroker.codec.content import decode_properties, encode_content_header
from amqpbroker.codec.methods import shortstr

__all__ = ["dead_lettered", "is_cycle"]

REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT = "rejected", "expired", "maxlen", "delivery_limit"


def dead_lettered(message: Message, queue: str, reason: str, routing_key: str | None,
                  exchange: str, now: float, *, client_history: bool = False) -> Message:
    """A copy of ``message`` to publish to ``exchange`` (the dead-letter exchange), with its death
    in ``queue`` for ``reason`` recorded; ``routing_key`` None keeps the message's own.
    ``client_history`` (the 3.13 compatibility profile): an ``x-death`` header the client
    published is the history, continued and read for cycles, as RabbitMQ 3.x."""
    properties = decode_properties(message.header)
    headers: dict[str, Any] = dict(properties.headers or {})
    deaths = [dict(death) for death in _record(message, headers, client_history)]
    first = not deaths
    for index, death in enumerate(deaths):
        if _text(death.get("queue")) == queue and _text(death.get("reason")) == reason:
            death = deaths.pop(index)
            death["count"] = int(death.get("count", 0)) + 1
            death["time"] = _timestamp(now)
            break
    else:
        death = {"count": 1, "reason": reason, "queue": queue, "time": _timestamp(now),
                 "exchange": message.exchange, "routing-keys": [message.routing_key]}
        if properties.expiration is not None:
            death["original-expiration"] = properties.expiration
    deaths.insert(0, death)
    headers["x-death"] = deaths
    if first:  # (a client's own x-first-death-* headers are replaced too)
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue
    headers["x-last-death-exchange"] = message.exchange
    properties.headers = headers
    properties.expiration = None
    key = message.routing_key if routing_key is None else routing_key
    copy = Message(exchange, key, shortstr(exchange) + shortstr(key),
                   encode_content_header(len(message.body), properties), message.body)
    copy._properties = properties
    copy.deaths = deaths
    copy.arrived = now
    return copy


def is_cycle(message: Message, queue: str) -> bool:
    """Would dead-lettering ``message`` into ``queue`` loop for ever? As RabbitMQ: it has died in
    ``queue`` before and none of its deaths was a client's rejection."""
    deaths = _record(message, None)
    seen = False
    for death in deaths:
        if not isinstance(death, dict):
            continue
        if _text(death.get("reason")) == REJECTED:
            return False
        if _text(death.get("queue")) == queue:
            seen = True
    return seen


def _record(message: Message, headers: dict[str, Any] | None, client_history: bool = False) -> list[dict[str, Any]]:
    """The message's deaths as the broker recorded them (with ``client_history``, a published
    ``x-death`` header too)."""
    deaths = message.deaths
    if deaths is None and not client_history:
        return []
    if deaths is None or deaths == FROM_HEADERS:  # (read back from the store: the broker's record when it wrote x-last-death-*)
        headers = headers if headers is not None else message.headers
        if "x-last-death-queue" not in headers and not client_history:
            return []  # a client's x-death, or one from before: data
        found = headers.get("x-death") or []
        return [death for death in found if isinstance(death, dict)] if isinstance(found, list) else []
    return deaths  # type: ignore[return-value]


def _timestamp(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(now), tz=datetime.timezone.utc)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
