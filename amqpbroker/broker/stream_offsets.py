"""Where a stream consumer starts (``x-stream-offset``) and how old a stream may grow
(``x-max-age``), as RabbitMQ reads them.

``x-stream-offset`` is ``first`` (the oldest message kept), ``last`` (the first message of the
newest chunk), ``next`` (only what arrives from now on; the default), a number (that offset, or
the oldest kept if it is older; ``next`` if it is beyond the end), an AMQP timestamp (the first
chunk that began at or after it) or an interval such as ``30m`` (a timestamp that long ago).

Extension, as LavinMQ: a negative number ``-n`` is the n-th message from the end (``-1`` the last
one); RabbitMQ starts a negative offset at ``first``.

Durations (``x-max-age`` and intervals) are a number and one unit: ``Y`` (365 days), ``M`` (30
days), ``D``, ``h``, ``m`` or ``s``; anything else is refused, as RabbitMQ refuses it.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amqpbroker.codec.tables import Timestamp

if TYPE_CHECKING:
    from amqpbroker.broker.stream_log import StreamLog

__all__ = ["OffsetSpec", "start_offset", "parse_max_age", "parse_duration"]

_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"([0-9]+)([YMDhms])")


def parse_duration(text: str) -> float | None:
    """Seconds of a duration such as ``7D``; None if it is not one."""
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_max_age(value: Any) -> float | None:
    """Seconds of a (validated) ``x-max-age``."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return parse_duration(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class OffsetSpec:
    kind: str  # "first", "last", "next", "offset", "from-end", "timestamp", "ago"
    value: float = 0

    @classmethod
    def parse(cls, value: Any) -> OffsetSpec:
        """The ``x-stream-offset`` consumer argument; ValueError says what is wrong with it."""
        if value is None:
            return cls("next")
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str):
            if value in ("first", "last", "next"):
                return cls(value)
            seconds = parse_duration(value)
            if seconds is None:
                raise ValueError(f"'{value}' is not first, last, next or an interval such as 1h")
            return cls("ago", seconds)
        if isinstance(value, Timestamp):
            return cls("timestamp", int(value))
        if isinstance(value, datetime.datetime):
            moment = value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)
            return cls("timestamp", moment.timestamp())
        if isinstance(value, int) and not isinstance(value, bool):
            return cls("offset", value) if value >= 0 else cls("from-end", -value)
        raise ValueError(f"unsupported value of type {type(value).__name__}")


def start_offset(spec: OffsetSpec, log: StreamLog, now: float) -> int:
    """The offset a consumer with ``spec`` starts at, in ``log`` as it is now."""
    kind = spec.kind
    if kind == "first":
        return log.first
    if kind == "last":
        return log.last_chunk_start()
    if kind == "next":
        return log.next
    if kind == "offset":
        return min(max(int(spec.value), log.first), log.next)
    if kind == "from-end":
        return max(log.next - int(spec.value), log.first)
    if kind == "timestamp":
        return log.offset_at(spec.value)
    return log.offset_at(now - spec.value)  # "ago"
