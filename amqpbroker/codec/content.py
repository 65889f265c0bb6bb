"""Content headers: the body size and the raw property bytes, decoded only when needed.

A message keeps the content header payload exactly as the publisher sent it; deliveries send
those bytes back unchanged. Features that need a property (the headers exchange, TTL, priority,
dead-lettering) call :func:`decode_properties` once and cache the result on the message.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import commands

from amqpbroker.codec.tables import TableError, Timestamp, check_table, decode_table, encode_table
from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = ["parse_content_header", "check_properties", "FIXED_PROPERTY_LENGTHS", "decode_properties", "encode_content_header",
           "delivery_mode",
           "priority", "BASIC_CLASS_ID"]

BASIC_CLASS_ID = 60
_HEADER_HEAD = struct.Struct(">HHQ")


def parse_content_header(payload: bytes) -> tuple[int, int]:
    """``(class_id, body_size)`` of a content header frame's payload."""
    if len(payload) < 14:
        raise ConnectionError(ReplyCode.FRAME_ERROR, "content header frame too short")
    class_id, _weight, body_size = _HEADER_HEAD.unpack_from(payload)
    return class_id, body_size


# Basic's properties in wire order: (attribute of pamqp's Basic.Properties, flag bit, kind)
_PROPERTIES = (
    ("content_type", 0x8000, "s"), ("content_encoding", 0x4000, "s"), ("headers", 0x2000, "F"),
    ("delivery_mode", 0x1000, "o"), ("priority", 0x0800, "o"), ("correlation_id", 0x0400, "s"),
    ("reply_to", 0x0200, "s"), ("expiration", 0x0100, "s"), ("message_id", 0x0080, "s"),
    ("timestamp", 0x0040, "T"), ("message_type", 0x0020, "s"), ("user_id", 0x0010, "s"),
    ("app_id", 0x0008, "s"), ("cluster_id", 0x0004, "s"),
)
_KNOWN_FLAGS = 0xFFFC
_TIMESTAMP = struct.Struct(">Q")


def check_properties(payload: bytes) -> None:
    """Walk a content header's property list once, when it arrives: every field its flags
    promise must be there and well formed (``headers`` type tags, lengths, nesting). Raises
    :class:`~amqpbroker.errors.ConnectionError` 541 for anything else, as RabbitMQ refuses such a
    publish (it closes the connection and stores nothing)."""
    flags = (payload[12] << 8) | payload[13]
    if not flags:
        return
    try:
        plan = _PLANS.get(flags) or _plan(flags)
        offset = 14
        for kind in plan:  # only the properties present: one step for a plain delivery_mode
            if kind == "s":
                offset += 1 + payload[offset]
            elif kind == "o":
                offset += 1
            elif kind == "T":
                offset += 8
            else:
                offset = check_table(payload, offset)
            if offset > len(payload):
                raise TableError("property list ends before its flags say")
    except (IndexError, TableError) as exc:
        raise ConnectionError(ReplyCode.INTERNAL_ERROR, f"malformed content header properties: "
                              f"{exc if isinstance(exc, TableError) else 'too short'}", 60, 40) from None


_PLANS: dict[int, tuple[str, ...]] = {}  # property flags -> the kinds of the properties present
# flags whose properties all have a fixed size (delivery_mode, priority, timestamp) -> the length
# of a content header with them: checking one is a length comparison, not a walk
FIXED_PROPERTY_LENGTHS = {
    flags: 14 + (flags & 0x1000 and 1) + (flags & 0x0800 and 1) + (flags & 0x0040 and 8)
    for flags in (0x1000, 0x0800, 0x0040, 0x1800, 0x1040, 0x0840, 0x1840)
}


def _plan(flags: int) -> tuple[str, ...]:
    if flags & ~_KNOWN_FLAGS:
        raise TableError(f"unknown property flags 0x{flags & ~_KNOWN_FLAGS:04x}")
    plan = _PLANS[flags] = tuple(kind for _name, flag, kind in _PROPERTIES if flags & flag)
    return plan


def decode_properties(header_payload: bytes) -> commands.Basic.Properties:
    """The message properties from a whole content header payload checked by
    :func:`check_properties` (strings that are not UTF-8 keep their bytes as surrogate escapes,
    so :func:`encode_content_header` gives them back unchanged)."""
    flags = (header_payload[12] << 8) | header_payload[13]
    values: dict[str, Any] = {}
    offset = 14
    for name, flag, kind in _PROPERTIES:
        if not flags & flag:
            continue
        if kind == "s":
            end = offset + 1 + header_payload[offset]
            values[name] = header_payload[offset + 1:end].decode("utf-8", "surrogateescape")
            offset = end
        elif kind == "o":
            values[name] = header_payload[offset]
            offset += 1
        elif kind == "T":
            seconds = _TIMESTAMP.unpack_from(header_payload, offset)[0]
            try:
                values[name] = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
            except (OverflowError, OSError, ValueError):
                values[name] = Timestamp(seconds)
            offset += 8
        else:
            values[name], offset = decode_table(header_payload, offset)
    properties = commands.Basic.Properties()
    for name, _flag, _kind in _PROPERTIES:
        setattr(properties, name, values.get(name))
    return properties


def encode_content_header(body_size: int, properties: commands.Basic.Properties | None = None) -> bytes:
    """A content header payload for content the broker makes itself or changed (dead-lettering,
    direct reply-to): any value :func:`decode_properties` produced encodes back; a value that
    cannot go in a header raises :class:`TableError`."""
    flags = 0
    parts = []
    for name, flag, kind in _PROPERTIES:
        value = getattr(properties, name, None) if properties is not None else None
        if value is None:
            continue
        flags |= flag
        if kind == "s":
            data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
            if len(data) > 255:
                raise TableError(f"property {name} longer than 255 bytes")
            parts.append(bytes((len(data),)) + data)
        elif kind == "o":
            parts.append(bytes((int(value) & 0xFF,)))
        elif kind == "T":
            seconds = value if isinstance(value, int) else int(value.timestamp())
            parts.append(_TIMESTAMP.pack(seconds & 0xFFFFFFFFFFFFFFFF))
        else:
            parts.append(encode_table(value))
    return _HEADER_HEAD.pack(BASIC_CLASS_ID, 0, body_size) + struct.pack(">H", flags) + b"".join(parts)


_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS, _DELIVERY_MODE, _PRIORITY = 0x8000, 0x4000, 0x2000, 0x1000, 0x0800
_LONG = struct.Struct(">I")


def delivery_mode(header_payload: bytes) -> int | None:
    """The delivery-mode property, read from the raw header without decoding the others."""
    return _octet_property(header_payload, _DELIVERY_MODE)


def priority(header_payload: bytes) -> int | None:
    """The priority property, read from the raw header without decoding the others."""
    return _octet_property(header_payload, _PRIORITY)


def _octet_property(header_payload: bytes, flag: int) -> int | None:
    """delivery-mode or priority: the octet properties right after content-type, -encoding,
    headers (and delivery-mode, for priority)."""
    offset = 12
    flags = (header_payload[offset] << 8) | header_payload[offset + 1]
    if not flags & flag:
        return None
    offset += 2
    while header_payload[offset - 1] & 1:  # further flag words (none are defined for Basic)
        offset += 2
    if flags & _CONTENT_TYPE:
        offset += 1 + header_payload[offset]
    if flags & _CONTENT_ENCODING:
        offset += 1 + header_payload[offset]
    if flags & _HEADERS:
        offset += 4 + _LONG.unpack_from(header_payload, offset)[0]
    if flag == _PRIORITY and flags & _DELIVERY_MODE:
        offset += 1
    return header_payload[offset]
