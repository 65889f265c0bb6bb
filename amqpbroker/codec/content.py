"""Content headers: the body size and the raw property bytes, decoded only when needed.

A message keeps the content header payload exactly as the publisher sent it; deliveries send
those bytes back unchanged. Features that need a property (the headers exchange, TTL, priority,
dead-lettering) call :func:`decode_properties` once and cache the result on the message.
"""

from __future__ import annotations

import struct

from pamqp import commands, header as pamqp_header

from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = ["parse_content_header", "decode_properties", "encode_content_header", "BASIC_CLASS_ID"]

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
