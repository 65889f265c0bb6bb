"""Method frame payloads <-> method objects: the one module that calls pamqp.

``Basic.Publish`` and ``Basic.Ack`` arrive once per message, so they are decoded by small
functions into light slotted objects (:class:`Publish`, :class:`Ack`) instead of through pamqp's
generic unmarshal; every other method is a pamqp ``commands`` object. The property tests in
``tests/test_codec_properties.py`` prove the fast paths agree with pamqp for any input.
"""

from __future__ import annotations

import struct

import re

from pamqp import (
    commands, constants as pamqp_constants, decode as pamqp_decode, exceptions as pamqp_exceptions,
    frame as pamqp_frame,
)
from pamqp.base import Frame as PamqpMethod

from amqpbroker.codec.frames import FRAME_END_BYTE, FRAME_HEAD, FRAME_METHOD
from amqpbroker.codec.tables import decode_table
from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = [
    "Publish", "Ack", "decode_method", "encode_method", "method_ids",
    "PUBLISH_ID", "ACK_ID", "shortstr",
]

# pamqp checks exchange and queue names against a narrow ASCII pattern whenever it builds or
# marshals a method; RabbitMQ takes any UTF-8 name (at most 255 bytes, which the shortstr
# encoding enforces), so a queue named "€" or "a(b)" must get its declare-ok, not a 541.
for _domain in ("exchange-name", "queue-name"):
    pamqp_constants.DOMAIN_REGEX[_domain] = re.compile(r".*", re.DOTALL)

# Field tables in method arguments are decoded by our own decoder (amqpbroker.codec.tables):
# lengths checked against the frame, table keys that are not UTF-8 kept (RabbitMQ does not check
# them), nesting bounded so no decode or later encode can exhaust the stack.
def _pamqp_field_table(value: bytes) -> tuple[int, dict]:
    table, end = decode_table(value)
    return end, table


pamqp_decode.METHODS["table"] = _pamqp_field_table
pamqp_decode.TABLE_MAPPING[b"F"] = _pamqp_field_table

_CLASS_METHOD = struct.Struct(">HH")
_ACK_BODY = struct.Struct(">QB")
PUBLISH_ID = (60, 40)
ACK_ID = (60, 80)
_PUBLISH_INDEX = 0x003C0028
_ACK_INDEX = 0x003C0050


class Publish:
    """``Basic.Publish``. ``routing_raw`` is the exchange and routing key exactly as they were
    encoded (two shortstrs): ``Basic.Deliver``, ``Get-Ok`` and ``Return`` re-use those bytes."""

    __slots__ = ("exchange", "routing_key", "mandatory", "immediate", "routing_raw")
    class_id, method_id = PUBLISH_ID

    def __init__(self, exchange: str, routing_key: str, mandatory: bool, immediate: bool,
                 routing_raw: bytes) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate
        self.routing_raw = routing_raw

    def __repr__(self) -> str:
        return (f"Publish(exchange={self.exchange!r}, routing_key={self.routing_key!r}, "
                f"mandatory={self.mandatory}, immediate={self.immediate})")


class Ack:
    """``Basic.Ack`` (from a consumer, or in confirm mode from the broker)."""

    __slots__ = ("delivery_tag", "multiple")
    class_id, method_id = ACK_ID

    def __init__(self, delivery_tag: int, multiple: bool) -> None:
        self.delivery_tag = delivery_tag
        self.multiple = multiple

    def __repr__(self) -> str:
        return f"Ack(delivery_tag={self.delivery_tag}, multiple={self.multiple})"


def decode_error(text: str) -> ConnectionError:
    """A method frame whose fields cannot be decoded: 501, as RabbitMQ ("cannot decode")."""
    return ConnectionError(ReplyCode.FRAME_ERROR, text)


def _decode_publish(payload: bytes) -> Publish:
    # class, method (4) | ticket (2) | exchange shortstr | routing key shortstr | bits
    try:
        start = 6
        exchange_end = start + 1 + payload[start]
        key_end = exchange_end + 1 + payload[exchange_end]
        bits = payload[key_end]
        exchange = payload[start + 1:exchange_end].decode()
        raw_key = payload[exchange_end + 1:key_end]
    except (IndexError, UnicodeDecodeError) as exc:
        raise decode_error(f"cannot decode basic.publish: {exc}") from None
    try:
        routing_key = raw_key.decode()
    except UnicodeDecodeError:  # RabbitMQ takes any bytes as a routing key; deliveries send them back
        routing_key = raw_key.decode("utf-8", "surrogateescape")
    return Publish(exchange, routing_key, bool(bits & 1), bool(bits & 2), payload[start:key_end])


def _decode_ack(payload: bytes) -> Ack:
    try:
        tag, bits = _ACK_BODY.unpack_from(payload, 4)
    except struct.error:
        raise decode_error("cannot decode basic.ack") from None
    return Ack(tag, bool(bits & 1))


def decode_method(payload: bytes) -> Publish | Ack | PamqpMethod:
    """Decode a method frame's payload; unknown or malformed methods raise a connection error."""
    if len(payload) < 4:
        raise ConnectionError(ReplyCode.FRAME_ERROR, "method frame too short")
    index = (payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]
    if index == _PUBLISH_INDEX:
        return _decode_publish(payload)
    if index == _ACK_INDEX:
        return _decode_ack(payload)
    method_class = commands.INDEX_MAPPING.get(index)
    if method_class is None:
        class_id, method_id = _CLASS_METHOD.unpack_from(payload)
        raise ConnectionError(ReplyCode.COMMAND_INVALID,
                              f"unknown method class_id={class_id} method_id={method_id}")
    method = method_class()
    try:
        method.unmarshal(payload[4:])
    except UnicodeDecodeError:
        raise decode_error(f"cannot decode {method_class.name}: malformed UTF-8 in a shortstr") from None
    except (struct.error, ValueError, TypeError, IndexError, pamqp_exceptions.PAMQPException) as exc:
        raise decode_error(f"cannot decode {method_class.name}: {exc}") from None
    return method


def method_ids(method: object) -> tuple[int, int]:
    """(class_id, method_id) of any decoded method, for error replies."""
    if isinstance(method, (Publish, Ack)):
        return method.class_id, method.method_id
    index = getattr(method, "index", 0)
    return index >> 16, index & 0xFFFF


def encode_method(channel: int, method: PamqpMethod) -> bytes:
    """A whole method frame for a pamqp method (the cold path)."""
    return pamqp_frame.marshal(method, channel)


def shortstr(value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape")
    if len(data) > 255:
        raise ValueError("shortstr longer than 255 bytes")
    return bytes((len(data),)) + data


def method_frame(channel: int, payload: bytes) -> bytes:
    return FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE
