"""The codec's fast paths agree with pamqp, the oracle, for any input (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import body as pamqp_body, commands, frame as pamqp_frame, header as pamqp_header

from amqpbroker.codec.frames import FrameReader
from amqpbroker.codec.methods import Ack, Publish, decode_method, method_frame
from amqpbroker.codec.writer import append_deliver, deliver_prefix, get_ok_payload
from amqpbroker.errors import ConnectionError

shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
# pamqp validates exchange names against the spec's exchange-name domain
exchange_name = st.text(alphabet="abcXYZ019-_.:", max_size=127)
tags = st.integers(min_value=0, max_value=2**63 - 1)  # pamqp's long-long is signed


def _payload(frame_bytes: bytes) -> bytes:
    return frame_bytes[7:-1]


@given(exchange=exchange_name, routing_key=shortstr, mandatory=st.booleans(), immediate=st.booleans())
def test_publish_fast_path_matches_pamqp(exchange: str, routing_key: str, mandatory: bool,
                                         immediate: bool) -> None:
    method = commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory,
                                    immediate=immediate)
    decoded = decode_method(_payload(pamqp_frame.marshal(method, 1)))
    assert isinstance(decoded, Publish)
    assert (decoded.exchange, decoded.routing_key, decoded.mandatory, decoded.immediate) == \
        (method.exchange, method.routing_key, method.mandatory, method.immediate)
    # the raw routing bytes are exactly pamqp's encoding of the two shortstrs
    expected_raw = (bytes([len(exchange.encode())]) + exchange.encode()
                    + bytes([len(routing_key.encode())]) + routing_key.encode())
    assert decoded.routing_raw == expected_raw


@given(delivery_tag=tags, multiple=st.booleans())
def test_ack_fast_path_matches_pamqp(delivery_tag: int, multiple: bool) -> None:
    method = commands.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple)
    decoded = decode_method(_payload(pamqp_frame.marshal(method, 1)))
    assert isinstance(decoded, Ack)
    assert (decoded.delivery_tag, decoded.multiple) == (delivery_tag, multiple)


@given(consumer_tag=shortstr.filter(bool), delivery_tag=tags.filter(bool), redelivered=st.booleans(),
       exchange=shortstr, routing_key=shortstr, body=st.binary(max_size=3000),
       frame_max=st.sampled_from([4096, 5000, 131072]), channel=st.integers(1, 65535),
       content_type=st.one_of(st.none(), st.text(min_size=1, max_size=20)))
@settings(max_examples=200)
def test_deliver_encoding_matches_pamqp(consumer_tag: str, delivery_tag: int, redelivered: bool,
                                        exchange: str, routing_key: str, body: bytes, frame_max: int,
                                        channel: int, content_type: str | None) -> None:

    properties = commands.Basic.Properties(content_type=content_type, headers={"k": 1})
    header = pamqp_header.ContentHeader(0, len(body), properties).marshal()
    routing_raw = (bytes([len(exchange.encode())]) + exchange.encode()
                   + bytes([len(routing_key.encode())]) + routing_key.encode())
    out: list[bytes] = []
    append_deliver(out, channel, deliver_prefix(consumer_tag), delivery_tag, redelivered, routing_raw,
                   header, body, frame_max)
    data = b"".join(out)

    frames = []
    while data:
        consumed, frame_channel, frame = pamqp_frame.unmarshal(data)
        assert frame_channel == channel
        assert consumed <= frame_max
        frames.append(frame)
        data = data[consumed:]
    deliver, content_header, *bodies = frames
    assert isinstance(deliver, commands.Basic.Deliver)
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered, deliver.exchange,
            deliver.routing_key) == (consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    assert content_header.body_size == len(body)
    assert content_header.properties == properties
    assert all(isinstance(part, pamqp_body.ContentBody) for part in bodies)
    assert b"".join(part.value for part in bodies) == body


@given(delivery_tag=tags.filter(bool), redelivered=st.booleans(), exchange=shortstr,
       routing_key=shortstr, message_count=st.integers(0, 2**32 - 1))
def test_get_ok_encoding_matches_pamqp(delivery_tag: int, redelivered: bool, exchange: str,
                                       routing_key: str, message_count: int) -> None:
    routing_raw = (bytes([len(exchange.encode())]) + exchange.encode()
                   + bytes([len(routing_key.encode())]) + routing_key.encode())
    frame = method_frame(3, get_ok_payload(delivery_tag, redelivered, routing_raw, message_count))
    _, channel, get_ok = pamqp_frame.unmarshal(frame)
    assert channel == 3
    assert (get_ok.delivery_tag, get_ok.redelivered, get_ok.exchange, get_ok.routing_key,
            get_ok.message_count) == (delivery_tag, redelivered, exchange, routing_key, message_count)


frames_strategy = st.lists(
    st.tuples(st.integers(0, 65535), st.binary(max_size=300)), min_size=1, max_size=20)


@given(frames=frames_strategy, cuts=st.lists(st.integers(1, 50), max_size=30))
def test_frame_reader_splits_like_pamqp_whatever_the_chunking(frames: list[tuple[int, bytes]],
                                                             cuts: list[int]) -> None:
    stream = b"".join(pamqp_frame.marshal(pamqp_body.ContentBody(value), channel)
                      for channel, value in frames if value)
    expected = [(3, channel, value) for channel, value in frames if value]
    reader = FrameReader(frame_max=131072)
    got: list[tuple[int, int, bytes]] = []
    position = 0
    for cut in cuts:
        reader.feed(stream[position:position + cut])
        position += cut
        got.extend(reader.read_frames())
    reader.feed(stream[position:])
    got.extend(reader.read_frames())
    assert got == expected
    assert reader.buffered == 0


def test_frame_reader_rejects_bad_frame_end_after_good_frames() -> None:
    good = pamqp_frame.marshal(pamqp_body.ContentBody(b"abc"), 1)
    bad = bytearray(pamqp_frame.marshal(pamqp_body.ContentBody(b"xyz"), 1))
    bad[-1] = 0
    reader = FrameReader(frame_max=4096)
    reader.feed(good + bytes(bad))
    assert reader.read_frames() == [(3, 1, b"abc")]
    with pytest.raises(ConnectionError) as raised:
        reader.read_frames()
    assert raised.value.reply_code == 501


def test_frame_reader_rejects_oversize_frame() -> None:
    reader = FrameReader(frame_max=4096)
    reader.feed(pamqp_frame.marshal(pamqp_body.ContentBody(b"x" * 5000), 1))
    with pytest.raises(ConnectionError) as raised:
        reader.read_frames()
    assert raised.value.reply_code == 501


@given(method=st.sampled_from([
    commands.Queue.Declare(queue="q", durable=True, arguments={"x-message-ttl": 5}),
    commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True),
    commands.Basic.Nack(delivery_tag=7, multiple=True, requeue=False),
    commands.Exchange.Declare(exchange="e", exchange_type="topic"),
]))
def test_other_methods_decode_through_pamqp(method: object) -> None:
    decoded = decode_method(_payload(pamqp_frame.marshal(method, 1)))
    assert type(decoded) is type(method)
    assert dict(decoded) == dict(method)


@given(content_type=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
       content_encoding=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
       headers=st.one_of(st.none(), st.dictionaries(st.text(max_size=10), st.integers(-5, 5), max_size=4)),
       mode=st.one_of(st.none(), st.sampled_from([1, 2])), priority=st.one_of(st.none(), st.integers(0, 9)),
       reply_to=st.one_of(st.none(), st.text(min_size=1, max_size=10)))
def test_delivery_mode_and_priority_from_raw_header_match_pamqp(content_type, content_encoding, headers, mode,
                                                                 priority, reply_to) -> None:
    from amqpbroker.codec import content

    properties = commands.Basic.Properties(content_type=content_type, content_encoding=content_encoding,
                                           headers=headers or None, delivery_mode=mode,
                                           priority=priority, reply_to=reply_to)
    raw = pamqp_header.ContentHeader(0, 10, properties).marshal()
    assert content.delivery_mode(raw) == content.decode_properties(raw).delivery_mode == mode
    assert content.priority(raw) == content.decode_properties(raw).priority == priority
