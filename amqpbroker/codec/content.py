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

from amqpbroker.codec.tables import _FIXED, TableError, Timestamp, check_table, decode_table, encode_table
from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = ["parse_content_header", "check_properties", "FIXED_PROPERTY_LENGTHS", "decode_properties", "encode_content_header",
           "delivery_mode",
           "priority", "with_long_header", "long_header_parts", "StreamStamp", "stream_filter_value",
           "BASIC_CLASS_ID"]

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


# ------------------------------------------------------------------ headers on the raw bytes
# A stream queue stamps every delivery with ``x-stream-offset`` and reads every publish's
# ``x-stream-filter-value``: both work on the header bytes, without decoding the properties.

_FLAGS = struct.Struct(">H")
_LONG_LONG = struct.Struct(">q")


def with_long_header(header_payload: bytes, name: str, value: int) -> bytes:
    """The content header ``header_payload`` (checked by :func:`check_properties`) with the
    header ``name`` set to ``value`` as a long-long (signed 64 bits, type ``l``, as RabbitMQ's
    ``x-stream-offset``); class, weight, body size and every other property keep their bytes.

    Without ``headers``, a table holding just that field goes in; otherwise the field goes at the
    end of the table, or where a field of that name already was (its duplicates dropped). Raises
    :class:`TableError` for a value outside 64 bits or a name longer than 255 bytes."""
    before, after = long_header_parts(header_payload, name)
    return before + _pack_long_long(value) + after


def _pack_long_long(value: int) -> bytes:
    try:
        return _LONG_LONG.pack(value)
    except struct.error:
        raise TableError(f"{value!r} does not fit a long-long header (signed 64 bits)") from None


def long_header_parts(header_payload: bytes, name: str) -> tuple[bytes, bytes]:
    """``(before, after)``: :func:`with_long_header`'s result is ``before``, the value's 8 bytes,
    ``after``. The same for every value, so a run of messages with one header splices cheaply."""
    key = _KEYS.get(name) or _key(name)
    field_size = len(key) + 9  # key, type tag, 8 bytes
    flags = (header_payload[12] << 8) | header_payload[13]
    offset = 14
    if flags & _CONTENT_TYPE:
        offset += 1 + header_payload[offset]
    if flags & _CONTENT_ENCODING:
        offset += 1 + header_payload[offset]
    if not flags & _HEADERS:
        return (b"".join((header_payload[:12], _FLAGS.pack(flags | _HEADERS), header_payload[14:offset],
                          _LONG.pack(field_size), key, b"l")), header_payload[offset:])
    start = offset + 4
    end = start + _LONG.unpack_from(header_payload, offset)[0]
    if header_payload.find(key, start, end) >= 0:  # perhaps a field of that name already (rare)
        spans = _field_spans(header_payload, start, end, key[1:])
        if spans:
            removed = sum(span_end - span_start for span_start, span_end in spans)
            before = b"".join((header_payload[:offset], _LONG.pack(end - start - removed + field_size),
                               header_payload[start:spans[0][0]], key, b"l"))
            after = [header_payload[span_end:next_start]
                     for (_, span_end), (next_start, _) in zip(spans, spans[1:])]
            after.append(header_payload[spans[-1][1]:])
            return before, b"".join(after)
    return (b"".join((header_payload[:offset], _LONG.pack(end - start + field_size),
                      header_payload[start:end], key, b"l")), header_payload[end:])


class StreamStamp:
    """What a stream does to each publish's header: ``x-stream-offset`` set to its offset
    (:func:`with_long_header`) and its ``x-stream-filter-value`` read
    (:func:`stream_filter_value`). A publisher's messages mostly share one header (same
    properties, same body size), so the work is done once per distinct header: after that a
    message costs one comparison of its header and one join."""

    __slots__ = ("name", "_header", "_before", "_after", "filter_value")

    def __init__(self, name: str) -> None:
        self.name = name
        self._header = b""
        self._before = self._after = b""
        self.filter_value: str | None = None  # the last stamped header's

    def stamp(self, header_payload: bytes, value: int) -> bytes:
        """The header with ``name`` set to ``value``; ``filter_value`` is then that header's."""
        if header_payload != self._header:
            self._before, self._after = long_header_parts(header_payload, self.name)
            self.filter_value = stream_filter_value(header_payload)
            self._header = header_payload
        return self._before + _pack_long_long(value) + self._after


_KEYS: dict[str, bytes] = {}  # header name -> its key as a shortstr; a few names, built once


def _key(name: str) -> bytes:
    raw_key = name.encode("utf-8", "surrogateescape")
    if len(raw_key) > 255:
        raise TableError("field table key longer than 255 bytes")
    if len(_KEYS) >= 64:  # callers pass constants; bound it all the same
        _KEYS.clear()
    key = _KEYS[name] = bytes((len(raw_key),)) + raw_key
    return key


_STREAM_FILTER_KEY = b"x-stream-filter-value"


def stream_filter_value(header_payload: bytes) -> str | None:
    """The ``x-stream-filter-value`` header of a content header checked by
    :func:`check_properties`, if it is a string (a long string; bytes that are not UTF-8 are
    replaced); None without one, or for a value of another type. The last field of that name
    counts, as for :func:`decode_properties`."""
    if _STREAM_FILTER_KEY not in header_payload:  # nearly every message: one scan of the bytes
        return None
    flags = (header_payload[12] << 8) | header_payload[13]
    if not flags & _HEADERS:
        return None
    offset = 14
    if flags & _CONTENT_TYPE:
        offset += 1 + header_payload[offset]
    if flags & _CONTENT_ENCODING:
        offset += 1 + header_payload[offset]
    start = offset + 4
    spans = _field_spans(header_payload, start, start + _LONG.unpack_from(header_payload, offset)[0],
                         _STREAM_FILTER_KEY)
    if not spans:
        return None
    value_start, value_end = spans[-1]
    value_start += 1 + len(_STREAM_FILTER_KEY)
    if header_payload[value_start] != 0x53:  # S: a long string
        return None
    return header_payload[value_start + 5:value_end].decode("utf-8", "replace")


def _field_spans(payload: bytes, start: int, end: int, raw_key: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of every field named ``raw_key`` among the fields of a checked table
    that lie between ``start`` and ``end`` (nested tables are stepped over, not searched)."""
    spans = []
    position = start
    while position < end:
        field_start = position
        key_end = position + 1 + payload[position]
        tag = payload[key_end]
        size = _FIXED.get(tag)
        # every other type (S, x, F, A) is a long length, then that many bytes
        position = key_end + 1 + (size if size is not None else 4 + _LONG.unpack_from(payload, key_end + 1)[0])
        if payload[field_start + 1:key_end] == raw_key:
            spans.append((field_start, position))
    return spans
