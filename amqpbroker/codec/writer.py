"""Outbound content: ``Basic.Deliver`` / ``Get-Ok`` / ``Return`` + header + body frames.

Only the method frame is encoded per delivery; the content header payload and the body are the
publisher's bytes, re-framed for the receiving channel and split at its ``frame_max``.
"""

from __future__ import annotations

import struct

from amqpbroker.codec.frames import FRAME_BODY, FRAME_END, FRAME_END_BYTE, FRAME_HEAD, FRAME_HEADER, FRAME_METHOD
from amqpbroker.codec.methods import shortstr

__all__ = ["deliver_prefix", "append_deliver", "append_content", "deliver_parts", "pack_delivery_tag",
           "get_ok_payload", "return_payload"]

_DELIVER_TAIL = struct.Struct(">QB")
_GET_OK = struct.Struct(">HHQB")
_RETURN_HEAD = struct.Struct(">HHH")
_LONG = struct.Struct(">I")
_END_AND_HEAD = struct.Struct(">BBHI")  # the previous frame's end octet, then a frame header
_pack_head = FRAME_HEAD.pack


def deliver_prefix(consumer_tag: str) -> bytes:
    """The constant start of every ``Basic.Deliver`` payload for one consumer."""
    return b"\x00\x3c\x00\x3c" + shortstr(consumer_tag)


def append_content(out: list[bytes], channel: int, header_payload: bytes, body: bytes,
                   frame_max: int) -> None:
    """Append the content header frame and the body frame(s) of one message to ``out``."""
    out.append(_pack_head(FRAME_HEADER, channel, len(header_payload)))
    out.append(header_payload)
    size = len(body)
    chunk = frame_max - 8 if frame_max else size
    if size <= chunk:
        if size:
            out.append(FRAME_END_BYTE + _pack_head(FRAME_BODY, channel, size))
            out.append(body)
        out.append(FRAME_END_BYTE)
        return
    out.append(FRAME_END_BYTE)
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start:start + chunk]
        out.append(_pack_head(FRAME_BODY, channel, len(piece)))
        out.append(bytes(piece))
        out.append(FRAME_END_BYTE)


def append_deliver(out: list[bytes], channel: int, prefix: bytes, delivery_tag: int,
                   redelivered: bool, routing_raw: bytes, header_payload: bytes, body: bytes,
                   frame_max: int) -> None:
    """Append a whole delivery (method, header, body frames) for one message to ``out``."""
    method_head = _pack_head(FRAME_METHOD, channel, len(prefix) + 9 + len(routing_raw))
    size = len(body)
    if 0 < size <= frame_max - 8:  # the usual case: the body fits one frame
        # pieces as they are (the writer joins them once): no intermediate bytes per delivery
        out += (method_head, prefix, _DELIVER_TAIL.pack(delivery_tag, redelivered), routing_raw,
                _END_AND_HEAD.pack(FRAME_END, FRAME_HEADER, channel, len(header_payload)),
                header_payload, _END_AND_HEAD.pack(FRAME_END, FRAME_BODY, channel, size), body,
                FRAME_END_BYTE)
        return
    out.append(method_head + prefix + _DELIVER_TAIL.pack(delivery_tag, redelivered) + routing_raw
               + FRAME_END_BYTE)
    append_content(out, channel, header_payload, body, frame_max)


def deliver_parts(channel: int, prefix: bytes, routing_raw: bytes, header_size: int,
                  body_size: int) -> tuple[bytes, bytes, bytes]:
    """What :func:`append_deliver` appends, but for the delivery tag, the header payload and the
    body (one frame: ``0 < body_size <= frame_max - 8``), for messages alike in routing and
    sizes: what goes before the tag and redelivered flag (:func:`pack_delivery_tag`), what
    between them and the header payload, what between that and the body (the frame end follows)."""
    return (_pack_head(FRAME_METHOD, channel, len(prefix) + 9 + len(routing_raw)) + prefix,
            routing_raw + _END_AND_HEAD.pack(FRAME_END, FRAME_HEADER, channel, header_size),
            _END_AND_HEAD.pack(FRAME_END, FRAME_BODY, channel, body_size))


pack_delivery_tag = _DELIVER_TAIL.pack  # (delivery tag, redelivered)


def get_ok_payload(delivery_tag: int, redelivered: bool, routing_raw: bytes, message_count: int) -> bytes:
    """``Basic.Get-Ok``: delivery-tag, redelivered, exchange, routing-key, message-count."""
    return (_GET_OK.pack(60, 71, delivery_tag, redelivered) + routing_raw + _LONG.pack(message_count))


def return_payload(reply_code: int, reply_text: str, routing_raw: bytes) -> bytes:
    """``Basic.Return``: reply-code, reply-text, exchange, routing-key."""
    return _RETURN_HEAD.pack(60, 50, reply_code) + shortstr(reply_text) + routing_raw
