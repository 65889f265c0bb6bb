"""Dead-lettering, as RabbitMQ does it: the message republished to the queue's dead-letter
exchange with an ``x-death`` history in its headers.

``x-death`` is an array of tables, most recent first, one per (queue, reason): ``count``,
``reason``, ``queue``, ``time``, ``exchange``, ``routing-keys`` (and ``original-expiration`` when
the message had a per-message TTL, which is removed so the copy does not expire again). The
first death is also kept in ``x-first-death-queue`` / ``-reason`` / ``-exchange``.
"""

from __future__ import annotations

import datetime
from typing import Any

from amqpbroker.broker.message import Message
from amqpbroker.codec.content import decode_properties, encode_content_header
from amqpbroker.codec.methods import shortstr

__all__ = ["dead_lettered", "is_cycle"]

REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT = "rejected", "expired", "maxlen", "delivery_limit"


def dead_lettered(message: Message, queue: str, reason: str, routing_key: str | None,
                  exchange: str, now: float) -> Message:
    """A copy of ``message`` to publish to ``exchange`` (the dead-letter exchange), with its death
    in ``queue`` for ``reason`` recorded; ``routing_key`` None keeps the message's own."""
    properties = decode_properties(message.header)
    headers: dict[str, Any] = dict(properties.headers or {})
    deaths = [dict(death) for death in headers.get("x-death") or [] if isinstance(death, dict)]
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
    if "x-first-death-reason" not in headers:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = message.exchange
    properties.headers = headers
    properties.expiration = None
    key = message.routing_key if routing_key is None else routing_key
    copy = Message(exchange, key, shortstr(exchange) + shortstr(key),
                   encode_content_header(len(message.body), properties), message.body)
    copy._properties = properties
    return copy


def is_cycle(message: Message, queue: str) -> bool:
    """Would dead-lettering ``message`` into ``queue`` loop for ever? As RabbitMQ: it has died in
    ``queue`` before and none of its deaths was a client's rejection."""
    deaths = message.headers.get("x-death") or []
    seen = False
    for death in deaths:
        if not isinstance(death, dict):
            continue
        if _text(death.get("reason")) == REJECTED:
            return False
        if _text(death.get("queue")) == queue:
            seen = True
    return seen


def _timestamp(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(now), tz=datetime.timezone.utc)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
