"""Content headers: the body size and the raw property bytes, decoded only when needed.

A message keeps the content header payload exactly as the publisher sent it; deliveries send
those bytes back unchanged. Features that need a property (the headers exchange, TTL, priority,
dead-lettering) call :func:`decode_properties` once and cache the result on the message.
"""

from __future__ import annotations

import struct

from pamqp import commands, header as pamqp_header

from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = ["parse_content_header", "decode_properties", "encode_content_header", "delivery_mode",
           "priority", "BASIC_CLASS_ID"]

BASIC_CLASS_ID = 60
_HEADER_HEAD = struct.Struct(">HHQ")


def parse_content_header(payload: bytes) -> tuple[int, int]:
    """``(class_id, body_size)`` of a content header frame's payload."""
    if len(payload) < 14:
        raise ConnectionError(ReplyCode.FRAME_ERROR, "content header frame too short")
    class_id, _weight, body_size = _HEADER_HEAD.unpack_from(payload)
    return class_id, body_size


def decode_properties(header_payload: bytes) -> commands.Basic.Properties:
    """The message properties from a whole content header payload (pamqp decodes them)."""
    content_header = pamqp_header.ContentHeader()
    content_header.unmarshal(header_payload)
    return content_header.properties


def encode_content_header(body_size: int, properties: commands.Basic.Properties | None = None) -> bytes:
    """A content header payload for content the broker makes itself."""
    return pamqp_header.ContentHeader(0, body_size, properties).marshal()


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
