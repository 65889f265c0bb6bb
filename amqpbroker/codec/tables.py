"""AMQP field tables and arrays: a strict walk, a decoder that cannot fail on what the walk
accepted, and an encoder for every value the decoder produces.

pamqp decodes method arguments; message properties and stored definitions use this module
instead, because the broker must be able to take back and re-encode anything it once accepted:

- ``check_table`` walks a table without building it (type tags, lengths, nesting) and raises
  :class:`TableError` for anything malformed. It runs once per published message that carries
  ``headers``, when the content header arrives.
- ``decode_table`` builds the values pamqp would (``str``, ``int``, ``bool``, ``float``,
  ``Decimal``, ``datetime``, ``dict``, ``list``, ``bytearray``, ``None``); a long string that is
  not UTF-8 comes back as ``bytes`` and a table key as a ``str`` with surrogate escapes, so that
  nothing is lost.
- ``encode_table`` encodes all of those back, ``bytes`` as a long string and a surrogate-escaped
  key as its original bytes, and refuses (``TableError``) only what AMQP cannot carry: an integer
  outside 64 bits, an unknown type.

Nesting is bounded (``MAX_DEPTH``): a table nested deeper is refused when it arrives, so no
later decode or encode can exhaust Python's stack.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Mapping
from typing import Any

__all__ = ["TableError", "Timestamp", "MAX_DEPTH", "check_table", "decode_table", "encode_table"]

MAX_DEPTH = 100  # tables and arrays inside one another; RabbitMQ has no limit, no client goes near it

_U32 = struct.Struct(">I")
_FIXED = {  # type tag -> value size in bytes
    ord("t"): 1, ord("b"): 1, ord("B"): 1, ord("s"): 2, ord("u"): 2, ord("I"): 4, ord("i"): 4,
    ord("l"): 8, ord("L"): 8, ord("f"): 4, ord("d"): 8, ord("D"): 5, ord("T"): 8, ord("V"): 0,
}
_SIZED = {ord("S"), ord("x")}  # a long length, then that many bytes
_TABLE, _ARRAY = ord("F"), ord("A")
_STRUCTS = {
    ord("b"): struct.Struct(">b"), ord("B"): struct.Struct(">B"), ord("s"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"), ord("I"): struct.Struct(">i"), ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"), ord("L"): struct.Struct(">q"), ord("f"): struct.Struct(">f"),
    ord("d"): struct.Struct(">d"),
}
_DECIMAL = struct.Struct(">BI")
_TIMESTAMP = struct.Struct(">Q")
_INT_TAGS = ((-0x80, 0x7F, b"b", ">b"), (-0x8000, 0x7FFF, b"s", ">h"), (-0x80000000, 0x7FFFFFFF, b"I", ">i"),
             (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF, b"l", ">q"))


class Timestamp(int):
    """A timestamp beyond what ``datetime`` can hold: kept as its number of seconds, encoded back
    as a timestamp."""


class TableError(ValueError):
    """A field table that is malformed, nested too deeply, or holds a value AMQP cannot carry."""


# ------------------------------------------------------------------------------------ walking

def check_table(data: bytes, offset: int) -> int:
    """Walk the table that starts at ``offset`` (its long length first); return where it ends.
    Raises :class:`TableError` if it is malformed or nested deeper than ``MAX_DEPTH``."""
    # an explicit stack of (end of the enclosing table or array, is it a table)
    end = _container_end(data, offset)
    stack = [(end, True)]
    position = offset + 4
    while stack:
        container_end, is_table = stack[-1]
        if position == container_end:
            stack.pop()
            continue
        if is_table:
            key_length = data[position]
            position += 1 + key_length
            if position >= container_end:
                raise TableError("field table key runs past its table")
        tag = data[position]
        position += 1
        size = _FIXED.get(tag)
        if size is not None:
            position += size
        elif tag in _SIZED:
            position = _container_end(data, position)
        elif tag == _TABLE or tag == _ARRAY:
            if len(stack) >= MAX_DEPTH:
                raise TableError(f"field table nested more than {MAX_DEPTH} deep")
            inner_end = _container_end(data, position)
            if inner_end > container_end:
                raise TableError("nested field table runs past its container")
            stack.append((inner_end, tag == _TABLE))
            position += 4
            continue
        else:
            raise TableError(f"unknown field value type {chr(tag)!r}" if 32 < tag < 127
                             else f"unknown field value type 0x{tag:02x}")
        if position > container_end:
            raise TableError("field value runs past its table")
    return end


def _container_end(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise TableError("field table length runs past the frame")
    end = offset + 4 + _U32.unpack_from(data, offset)[0]
    if end > len(data):
        raise TableError("field table runs past the frame")
    return end


# ------------------------------------------------------------------------------------ decoding

def decode_table(data: bytes, offset: int = 0, depth: int = 0) -> tuple[dict[str, Any], int]:
    """``(table, end)`` for a table checked by :func:`check_table` (or raising ``TableError``)."""
    end = _container_end(data, offset)
    position = offset + 4
    table: dict[str, Any] = {}
    while position < end:
        key_end = position + 1 + data[position]
        key = data[position + 1:key_end].decode("utf-8", "surrogateescape")
        table[key], position = _decode_value(data, key_end, depth)
    return table, end


def _decode_array(data: bytes, offset: int, depth: int) -> tuple[list[Any], int]:
    end = _container_end(data, offset)
    position = offset + 4
    items = []
    while position < end:
        value, position = _decode_value(data, position, depth)
        items.append(value)
    return items, end


def _decode_value(data: bytes, position: int, depth: int) -> tuple[Any, int]:
    tag = data[position]
    position += 1
    unpacker = _STRUCTS.get(tag)
    if unpacker is not None:
        return unpacker.unpack_from(data, position)[0], position + unpacker.size
    if tag == 0x53:  # S
        end = _container_end(data, position)
        raw = data[position + 4:end]
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            return bytes(raw), end
    if tag == 0x74:  # t
        return bool(data[position]), position + 1
    if tag == _TABLE or tag == _ARRAY:
        if depth >= MAX_DEPTH:
            raise TableError(f"field table nested more than {MAX_DEPTH} deep")
        decode = decode_table if tag == _TABLE else _decode_array
        return decode(data, position, depth + 1)
    if tag == 0x56:  # V
        return None, position
    if tag == 0x54:  # T
        seconds = _TIMESTAMP.unpack_from(data, position)[0]
        try:
            return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc), position + 8
        except (OverflowError, OSError, ValueError):
            return Timestamp(seconds), position + 8
    if tag == 0x44:  # D
        scale, raw = _DECIMAL.unpack_from(data, position)
        return decimal.Decimal(raw).scaleb(-scale), position + 5
    if tag == 0x78:  # x
        end = _container_end(data, position)
        return bytearray(data[position + 4:end]), end
    raise TableError(f"unknown field value type 0x{tag:02x}")


# ------------------------------------------------------------------------------------ encoding

def encode_table(table: Mapping[str, Any], depth: int = 0) -> bytes:
    """A field table (with its long length) for any mapping :func:`decode_table` can produce."""
    if depth > MAX_DEPTH:
        raise TableError(f"field table nested more than {MAX_DEPTH} deep")
    parts = []
    for key, value in table.items():
        if not isinstance(key, str):
            raise TableError(f"field table key {key!r} is not a string")
        raw_key = key.encode("utf-8", "surrogateescape")
        if len(raw_key) > 255:
            raise TableError("field table key longer than 255 bytes")
        parts.append(bytes((len(raw_key),)) + raw_key)
        parts.append(_encode_value(value, depth))
    data = b"".join(parts)
    return _U32.pack(len(data)) + data


def _encode_value(value: Any, depth: int) -> bytes:
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, Timestamp):
        return b"T" + _TIMESTAMP.pack(value)
    if isinstance(value, int):
        for low, high, tag, fmt in _INT_TAGS:
            if low <= value <= high:
                return tag + struct.pack(fmt, value)
        raise TableError(f"integer {value} does not fit a field table (64 bits, signed)")
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        return b"S" + _U32.pack(len(data)) + data
    if isinstance(value, bytes):
        return b"S" + _U32.pack(len(value)) + value
    if isinstance(value, bytearray):
        return b"x" + _U32.pack(len(value)) + bytes(value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, Mapping):
        return b"F" + encode_table(value, depth + 1)
    if isinstance(value, (list, tuple)):
        if depth + 1 > MAX_DEPTH:
            raise TableError(f"field table nested more than {MAX_DEPTH} deep")
        data = b"".join(_encode_value(item, depth + 1) for item in value)
        return b"A" + _U32.pack(len(data)) + data
    if value is None:
        return b"V"
    if isinstance(value, datetime.datetime):
        return b"T" + _TIMESTAMP.pack(int(value.timestamp()) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, decimal.Decimal):
        return b"D" + _encode_decimal(value)
    raise TableError(f"a value of type {type(value).__name__} cannot go in a field table")


def _encode_decimal(value: decimal.Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or sign:
        raise TableError(f"decimal {value} cannot go in a field table (unsigned, finite only)")
    raw = int("".join(map(str, digits)) or "0")
    scale = -exponent
    if scale < 0:
        raw, scale = raw * 10 ** -scale, 0
    if scale > 255 or raw > 0xFFFFFFFF:
        raise TableError(f"decimal {value} does not fit a field table")
    return _DECIMAL.pack(scale, raw)
