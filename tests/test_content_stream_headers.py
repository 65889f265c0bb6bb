"""Stream-queue headers on the raw content header: ``with_long_header`` (``x-stream-offset`` on
every delivery) and ``stream_filter_value`` (``x-stream-filter-value`` of every publish) agree
with decoding the properties, for hand-made and for arbitrary headers (hypothesis)."""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import pytest
from hypothesis import given, strategies as st
from pamqp import commands

from amqpbroker.codec.content import (_PROPERTIES, check_properties, decode_properties, encode_content_header,
                                      StreamStamp, stream_filter_value, with_long_header)
from amqpbroker.codec.tables import TableError, encode_table

OFFSET = "x-stream-offset"
FILTER = "x-stream-filter-value"


def _properties(**values: Any) -> commands.Basic.Properties:
    """Basic.Properties without pamqp's validation (it refuses delivery modes other than 1, 2)."""
    properties = commands.Basic.Properties()
    for name, _flag, _kind in _PROPERTIES:
        setattr(properties, name, values.pop(name, None))
    assert not values, f"unknown properties {values}"
    return properties


def _as_dict(properties: commands.Basic.Properties) -> dict[str, Any]:
    return {name: getattr(properties, name) for name, _flag, _kind in _PROPERTIES}


def _long_field(name: str, value: int) -> bytes:
    raw = name.encode()
    return bytes((len(raw),)) + raw + b"l" + struct.pack(">q", value)


def _header_with_table(table: bytes, *, content_type: str | None = None, body_size: int = 10) -> bytes:
    """A content header whose headers table is exactly ``table`` (its fields, without the length),
    so tests can use field types ``encode_table`` never writes (``L``, ``u``, duplicates)."""
    flags, parts = 0x2000 | 0x1000, []
    if content_type is not None:
        flags |= 0x8000
        parts.append(bytes((len(content_type),)) + content_type.encode())
    parts += [struct.pack(">I", len(table)), table, b"\x02"]  # headers, then delivery_mode 2
    return struct.pack(">HHQH", 60, 0, body_size, flags) + b"".join(parts)


def _expect(header: bytes, name: str, value: int) -> dict[str, Any]:
    expected = _as_dict(decode_properties(header))
    expected["headers"] = {**(expected["headers"] or {}), name: value}
    return expected


def _check(header: bytes, name: str, value: int) -> bytes:
    result = with_long_header(header, name, value)
    check_properties(result)
    assert _as_dict(decode_properties(result)) == _expect(header, name, value)
    assert result[:12] == header[:12]  # class, weight, body size
    assert _long_field(name, value) in result  # a long-long (type l), whatever the value's size
    return result


# ----------------------------------------------------------------------------- with_long_header

def test_no_properties_at_all() -> None:
    header = encode_content_header(5)
    result = _check(header, OFFSET, 0)
    assert result == (struct.pack(">HHQH", 60, 0, 5, 0x2000)
                      + struct.pack(">I", 25) + _long_field(OFFSET, 0))


def test_only_content_type() -> None:
    header = encode_content_header(5, _properties(content_type="text/plain"))
    result = _check(header, OFFSET, 42)
    assert result == (struct.pack(">HHQH", 60, 0, 5, 0xA000) + b"\x0atext/plain"
                      + struct.pack(">I", 25) + _long_field(OFFSET, 42))


def test_delivery_mode_and_content_type_table_goes_between() -> None:
    header = encode_content_header(256, _properties(content_type="application/json", delivery_mode=2))
    result = _check(header, OFFSET, 7)
    assert result.endswith(_long_field(OFFSET, 7) + b"\x02")


def test_content_type_encoding_and_headers_appended_with_other_fields_kept_byte_for_byte() -> None:
    table = encode_table({"a": 1, "trace": "abc", "nested": {OFFSET: 3}})[4:]
    header = encode_content_header(9, _properties(content_type="t", content_encoding="gzip",
                                                  headers={"a": 1, "trace": "abc", "nested": {OFFSET: 3}},
                                                  delivery_mode=1, priority=4, reply_to="r"))
    result = _check(header, OFFSET, 99)
    new_table = table + _long_field(OFFSET, 99)
    assert struct.pack(">I", len(new_table)) + new_table in result
    assert decode_properties(result).headers["nested"] == {OFFSET: 3}  # nested tables are not touched


def test_headers_present_but_empty() -> None:
    header = encode_content_header(1, _properties(headers={}, app_id="app"))
    assert decode_properties(header).headers == {}
    result = _check(header, OFFSET, 1)
    assert decode_properties(result).headers == {OFFSET: 1}


def test_same_name_is_replaced_not_duplicated() -> None:
    header = encode_content_header(3, _properties(headers={"before": "x", OFFSET: "old", "after": 2},
                                                  delivery_mode=2))
    result = _check(header, OFFSET, 12345)
    assert result.count(OFFSET.encode()) == 1
    assert list(decode_properties(result).headers) == ["before", OFFSET, "after"]  # same place


def test_replacing_twice_gives_one_field_with_the_last_value() -> None:
    header = encode_content_header(3, _properties(delivery_mode=2))
    result = _check(_check(header, OFFSET, 1), OFFSET, 2)
    assert result.count(OFFSET.encode()) == 1
    assert decode_properties(result).headers == {OFFSET: 2}


def test_duplicate_fields_on_the_wire_become_one_and_other_types_keep_their_bytes() -> None:
    # types the encoder never writes: an unsigned short (u) and a long-long in L
    table = (b"\x01uu\x00\x07" + b"\x0fx-stream-offsetb\x01" + b"\x01LL" + struct.pack(">q", 5)
             + b"\x0fx-stream-offsetS\x00\x00\x00\x03old")
    header = _header_with_table(table, content_type="ct")
    check_properties(header)
    result = _check(header, OFFSET, -1)
    assert result.count(OFFSET.encode()) == 1
    new_table = b"\x01uu\x00\x07" + _long_field(OFFSET, -1) + b"\x01LL" + struct.pack(">q", 5)
    assert struct.pack(">I", len(new_table)) + new_table in result


def test_name_only_inside_a_value_or_a_nested_table_is_not_a_field() -> None:
    for headers in ({"k": OFFSET}, {"n": {OFFSET: 1}}, {"list": [OFFSET]}):
        header = encode_content_header(0, _properties(headers=headers))
        result = _check(header, OFFSET, 8)
        assert decode_properties(result).headers == {**headers, OFFSET: 8}


def test_name_elsewhere_in_the_properties_is_left_alone() -> None:
    header = encode_content_header(0, _properties(content_type=OFFSET, headers={"a": 1}, message_id=OFFSET))
    _check(header, OFFSET, 8)


@pytest.mark.parametrize("value", [0, 1, -1, 127, -128, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)])
def test_big_and_negative_values_are_long_longs(value: int) -> None:
    header = encode_content_header(2, _properties(delivery_mode=2, content_type="c"))
    result = _check(header, OFFSET, value)
    assert decode_properties(result).headers[OFFSET] == value


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_values_outside_64_bits_are_refused(value: int) -> None:
    with pytest.raises(TableError):
        with_long_header(encode_content_header(2), OFFSET, value)


def test_name_longer_than_a_shortstr_is_refused() -> None:
    with pytest.raises(TableError):
        with_long_header(encode_content_header(2), "k" * 256, 1)


def test_every_other_property_is_preserved() -> None:
    properties = _properties(
        content_type="application/json", content_encoding="utf-8", headers={"h": [1, "two", None]},
        delivery_mode=2, priority=9, correlation_id="corr", reply_to="amq.rabbitmq.reply-to",
        expiration="60000", message_id="m-1",
        timestamp=datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
        message_type="kind", user_id="guest", app_id="app", cluster_id="cluster")
    header = encode_content_header(2**40, properties)
    result = _check(header, OFFSET, 2**40)
    decoded = _as_dict(decode_properties(result))
    assert decoded == {**_as_dict(properties), "headers": {"h": [1, "two", None], OFFSET: 2**40}}
    assert struct.unpack_from(">Q", result, 4)[0] == 2**40


def test_class_id_and_weight_are_kept_also_when_replacing() -> None:
    for headers in (None, {"a": 1}, {OFFSET: 1}):
        header = bytearray(encode_content_header(77, _properties(headers=headers)))
        header[2:4] = b"\x00\x05"  # a weight other than 0 (the spec says 0; keep what came)
        result = with_long_header(bytes(header), OFFSET, 3)
        assert result[:12] == bytes(header[:12])


def test_non_ascii_name() -> None:
    _check(encode_content_header(0, _properties(headers={"é": 1})), "é", -5)


# -------------------------------------------------------------------------- stream_filter_value

@pytest.mark.parametrize(("headers", "expected"), [
    (None, None),
    ({}, None),
    ({"other": "x"}, None),
    ({FILTER: "california"}, "california"),
    ({FILTER: ""}, ""),
    ({FILTER: "ünï"}, "ünï"),
    ({FILTER: b"ab\xffcd"}, "ab\ufffdcd"),  # a long string that is not UTF-8
    ({FILTER: 5}, None),
    ({FILTER: bytearray(b"bin")}, None),
    ({FILTER: ["a"]}, None),
    ({"nested": {FILTER: "x"}}, None),
    ({"k": FILTER}, None),
])
def test_stream_filter_value(headers: dict[str, Any] | None, expected: str | None) -> None:
    header = encode_content_header(0, _properties(content_type="c", content_encoding="e",
                                                  headers=headers, delivery_mode=2))
    assert stream_filter_value(header) == expected


def test_stream_filter_value_name_outside_headers() -> None:
    assert stream_filter_value(encode_content_header(0, _properties(content_type=FILTER))) is None
    assert stream_filter_value(encode_content_header(0, _properties(message_id=FILTER, headers={}))) is None


def test_stream_filter_value_last_duplicate_counts_as_when_decoding() -> None:
    field = b"\x15x-stream-filter-valueS"
    header = _header_with_table(field + b"\x00\x00\x00\x01a" + field + b"\x00\x00\x00\x01b")
    check_properties(header)
    assert stream_filter_value(header) == decode_properties(header).headers[FILTER] == "b"


# ------------------------------------------------------------------------------------ hypothesis

shortstr = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)
keys = st.one_of(shortstr, st.sampled_from([OFFSET, FILTER, "x-stream-offse", "x-stream-offsett"]))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=10), st.binary(max_size=10).map(bytearray),
    st.builds(lambda raw, scale: decimal.Decimal(raw).scaleb(-scale), st.integers(0, 2**32 - 1),
              st.integers(0, 10)),
    st.integers(0, 2**33).map(lambda s: datetime.datetime.fromtimestamp(s, tz=datetime.timezone.utc)),
)
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)), max_leaves=12)
headers_strategy = st.one_of(st.none(), st.dictionaries(keys, values, max_size=6))
optional_shortstr = st.one_of(st.none(), shortstr)
optional_octet = st.one_of(st.none(), st.integers(0, 255))
timestamps = st.one_of(st.none(), st.integers(0, 2**33).map(
    lambda s: datetime.datetime.fromtimestamp(s, tz=datetime.timezone.utc)))

properties_strategy = st.builds(
    _properties, content_type=optional_shortstr, content_encoding=optional_shortstr, headers=headers_strategy,
    delivery_mode=optional_octet, priority=optional_octet, correlation_id=optional_shortstr,
    reply_to=optional_shortstr, expiration=optional_shortstr, message_id=optional_shortstr,
    timestamp=timestamps, message_type=optional_shortstr, user_id=optional_shortstr, app_id=optional_shortstr,
    cluster_id=optional_shortstr)


@given(properties=properties_strategy, body_size=st.integers(0, 2**64 - 1), data=st.data(),
       value=st.integers(-(2**63), 2**63 - 1))
def test_with_long_header_equals_decoding_setting_and_encoding(properties: commands.Basic.Properties,
                                                               body_size: int, data: st.DataObject,
                                                               value: int) -> None:
    header = encode_content_header(body_size, properties)
    check_properties(header)
    existing = sorted(properties.headers or {})
    name = data.draw(st.one_of(keys, st.sampled_from(existing)) if existing else keys, label="name")
    result = _check(header, name, value)
    assert result.count(_long_field(name, value)) == 1
    if not (properties.headers and name in properties.headers):  # appended: the table's bytes kept
        table = encode_table(properties.headers or {})
        assert table[4:] + _long_field(name, value) in result


@given(properties=properties_strategy)
def test_stream_filter_value_equals_decoding(properties: commands.Basic.Properties) -> None:
    header = encode_content_header(0, properties)
    value = (decode_properties(header).headers or {}).get(FILTER)
    expected = (value if isinstance(value, str) else value.decode("utf-8", "replace")
                if isinstance(value, bytes) else None)
    assert stream_filter_value(header) == expected


@given(properties=st.lists(properties_strategy, min_size=1, max_size=4), body_size=st.integers(0, 2**20),
       picks=st.lists(st.tuples(st.integers(0, 3), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=12))
def test_a_stream_stamp_equals_with_long_header_and_stream_filter_value(properties, body_size, picks) -> None:
    """Headers repeating and alternating (equal bytes, new objects): each stamp is exactly what
    the uncached functions give, and the filter value is that header's."""
    headers = [encode_content_header(body_size, each) for each in properties]
    stamp = StreamStamp(OFFSET)
    for index, value in picks:
        header = bytes(bytearray(headers[index % len(headers)]))  # a fresh object, as each publish's
        assert stamp.stamp(header, value) == with_long_header(header, OFFSET, value)
        assert stamp.filter_value == stream_filter_value(header)


def test_a_stream_stamp_refuses_what_with_long_header_refuses() -> None:
    stamp = StreamStamp(OFFSET)
    with pytest.raises(TableError):
        stamp.stamp(encode_content_header(2), 2**63)
    assert stamp.stamp(encode_content_header(2), 5) == with_long_header(encode_content_header(2), OFFSET, 5)
