"""The connection takes a publish whose content header and whole body follow it in the same read
at once (the frame reader hands them over as one ``PUBLISH_CONTENT`` tuple, and
``ChannelMachine.whole_content`` checks them, a header it took last without a second look).
That shortcut must be invisible: for any sequence of
publishes, regular or not, a broker answers byte for byte what it answers with the shortcut
turned off (every frame through ``start_content``, ``on_header`` and ``on_body``), and holds
the same messages; and frame by frame (one read per frame, where the shortcut never applies) it
answers the same, publisher confirms aside (their batching follows the reads). Sans-IO,
hypothesis."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import commands, frame as pamqp_frame

from amqpbroker.broker.broker import Broker, Limits
from amqpbroker.codec.content import encode_content_header
from amqpbroker.protocol.channel import ChannelMachine
from amqpbroker.codec.frames import FRAME_BODY, FRAME_HEADER, build_frame
from tests.helpers import FakeClient

MAX_MESSAGE_SIZE = 24


def _method(method: object, channel: int) -> bytes:
    return pamqp_frame.marshal(method, channel)


@st.composite
def publishes(draw: st.DrawFn) -> bytes:
    """One publish, mostly regular, sometimes wrong in one of the ways a header or body can be."""
    channel = draw(st.sampled_from([1, 1, 1, 2]))
    body = draw(st.binary(max_size=30))
    key = draw(st.sampled_from(["q", "q", "nowhere"]))
    method = _method(commands.Basic.Publish(exchange="", routing_key=key,
                                            mandatory=draw(st.booleans())), channel)
    properties = draw(st.sampled_from([
        None, commands.Basic.Properties(delivery_mode=2),
        commands.Basic.Properties(content_type="text/plain", headers={"a": 1, "b": "x"}),
        commands.Basic.Properties(priority=3, message_id="m", expiration="60000")]))
    header = encode_content_header(len(body), properties)
    flaw = draw(st.sampled_from(["none"] * 6 + ["class", "size+1", "size-1", "short", "bad flags",
                                                 "bad table", "header channel", "body channel",
                                                 "no body", "two bodies", "method between"]))
    if flaw == "class":
        header = struct.pack(">H", 50) + header[2:]
    elif flaw == "size+1":
        header = header[:4] + struct.pack(">Q", len(body) + 1) + header[12:]
    elif flaw == "size-1" and body:
        header = header[:4] + struct.pack(">Q", len(body) - 1) + header[12:]
    elif flaw == "short":
        header = header[:13]
    elif flaw == "bad flags":
        header = header[:12] + b"\x00\x03" + header[14:]
    elif flaw == "bad table" and properties is not None and properties.headers:
        header = header[:-3] + b"\xff\xff\xff"
    header_channel = 3 - channel if flaw == "header channel" else channel
    body_channel = 3 - channel if flaw == "body channel" else channel
    parts = [method, build_frame(FRAME_HEADER, header_channel, header)]
    if flaw == "method between":
        parts.insert(1, _method(commands.Basic.Qos(prefetch_count=5), channel))
    if body and flaw != "no body":
        if flaw == "two bodies":
            parts += [build_frame(FRAME_BODY, body_channel, body[:1]), build_frame(FRAME_BODY, body_channel, body[1:])]
        else:
            parts.append(build_frame(FRAME_BODY, body_channel, body))
    return b"".join(parts)


def _frames(data: bytes) -> list[bytes]:
    """``data`` cut at its frame boundaries."""
    pieces, position = [], 0
    while position < len(data):
        end = position + 8 + struct.unpack_from(">I", data, position + 3)[0]
        pieces.append(data[position:end])
        position = end
    return pieces


def _run(pieces: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """What a fresh broker answers to ``pieces`` (one read each), then what queue ``q`` holds."""
    client = FakeClient(Broker(Limits(max_message_size=MAX_MESSAGE_SIZE)))
    client.open_channel(1)
    client.open_channel(2)
    client.send(commands.Confirm.Select(), 1)
    client.received_bytes()
    client.declare_queue("q", 2)
    client.received_bytes()
    for piece in pieces:
        client.feed(piece)
    written = _frames(client.received_bytes())
    queue = client.broker.vhosts["/"].queues["q"]
    held = [(entry[1].header, entry[1].body) for entry in queue.ready]
    return written, held


@settings(max_examples=300, deadline=None)
@given(st.lists(publishes(), min_size=1, max_size=6))
def test_the_shortcut_changes_no_answer_and_no_message(stream: list[bytes]) -> None:
    data = b"".join(stream)
    with_shortcut = _run([data])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChannelMachine, "whole_content", lambda self, header, body: False)
        without = _run([data])
    assert with_shortcut == without


def test_the_shortcut_is_taken_for_regular_publishes_and_not_for_split_bodies() -> None:
    client = FakeClient()
    client.open_channel(1)
    client.declare_queue("q")
    machine = client.connection.channels[1]
    header = encode_content_header(3)
    assert machine.whole_content(header, b"abc")
    assert not machine.whole_content(header, b"ab")  # the body comes in more frames
    assert not machine.whole_content(header[:13], b"abc")
    assert not machine.whole_content(encode_content_header(0), b"")
    frames = (_method(commands.Basic.Publish(exchange="", routing_key="q"), 1)
              + build_frame(FRAME_HEADER, 1, header) + build_frame(FRAME_BODY, 1, b"abc"))
    started = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChannelMachine, "start_content", lambda self, publish: started.append(publish))
        client.feed(frames * 3)  # one read: the steps are never taken
    assert started == []
    assert [entry[1].body for entry in client.broker.vhosts["/"].queues["q"].ready] == [b"abc"] * 3
    client.feed(frames[:-4])  # the body comes in the next read: the steps
    client.feed(frames[-4:])
    assert [entry[1].body for entry in client.broker.vhosts["/"].queues["q"].ready] == [b"abc"] * 4
