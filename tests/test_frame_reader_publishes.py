"""The frame reader's publish combining (``FrameReader(publishes=True)``) is only a regrouping:
for any input, however it is cut into reads and whatever frame budget each read has, the
tuples it returns, each ``PUBLISH_CONTENT`` tuple taken back apart into its method, header and
body frames, are exactly what the plain frame by frame split returns, with the same errors at
the same places and the same frame counts (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from pamqp import commands, frame as pamqp_frame

from amqpbroker.codec.content import encode_content_header
from amqpbroker.codec.frames import FRAME_BODY, FRAME_HEADER, FRAME_METHOD, PUBLISH_CONTENT, FrameReader, build_frame
from amqpbroker.errors import ConnectionError

FRAME_MAX = 4096


def _publish(channel: int, key: str) -> bytes:
    return pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key=key), channel)


@st.composite
def frame_runs(draw: st.DrawFn) -> bytes:
    """A few frames: mostly publishes (often repeating the last one's method and header), some
    with the content on another channel, split, missing or too large, other methods between,
    and now and then a frame that is wrong (type 0, a bad end, over the limit)."""
    kind = draw(st.sampled_from(["publish"] * 8 + ["qos", "bad end", "oversize", "type 0", "heartbeat"]))
    channel = draw(st.sampled_from([1, 1, 1, 2]))
    if kind == "qos":
        return pamqp_frame.marshal(commands.Basic.Qos(prefetch_count=1), channel)
    if kind == "bad end":
        return build_frame(FRAME_BODY, channel, b"x")[:-1] + b"\x00"
    if kind == "oversize":
        return build_frame(FRAME_BODY, channel, bytes(FRAME_MAX + 1))
    if kind == "type 0":
        return build_frame(0, channel, b"abc")
    if kind == "heartbeat":
        return build_frame(8, 0, b"")
    key = draw(st.sampled_from(["q", "q", "r"]))
    body = draw(st.sampled_from([b"abc", b"abc", b"", b"xyz1", bytes(FRAME_MAX + 1)]))
    header = encode_content_header(len(body), draw(st.sampled_from(
        [None, None, commands.Basic.Properties(delivery_mode=2)])))
    other = 3 - channel
    shape = draw(st.sampled_from(["whole"] * 6 + ["header elsewhere", "body elsewhere", "split body",
                                                   "no body", "method between"]))
    parts = [_publish(channel, key), build_frame(FRAME_HEADER, other if shape == "header elsewhere" else channel,
                                                 header)]
    if shape == "method between":
        parts.insert(1, pamqp_frame.marshal(commands.Basic.Qos(prefetch_count=1), channel))
    if shape == "split body" and len(body) > 1:
        parts += [build_frame(FRAME_BODY, channel, body[:1]), build_frame(FRAME_BODY, channel, body[1:])]
    elif shape != "no body":
        parts.append(build_frame(FRAME_BODY, other if shape == "body elsewhere" else channel, body))
    return b"".join(parts)


def _apart(frames: list[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for frame in frames:
        if frame[0] == PUBLISH_CONTENT:
            _, channel, method, header, body = frame
            out += [(FRAME_METHOD, channel, method), (FRAME_HEADER, channel, header), (FRAME_BODY, channel, body)]
        else:
            out.append(frame)
    return out


def _read_all(reader: FrameReader, data: bytes, cuts: list[int], budgets: list[int]) -> tuple[list, list, list]:
    """Feed ``data`` in reads of ``cuts`` bytes, taking frames after each with the next budget
    until none come: each call's tuples taken apart, whether it raised, its frames counted."""
    got: list[list[tuple]] = []
    errors: list[int] = []
    counted: list[int] = []
    turn = 0
    pieces = [data[position:position + cut] for position, cut in _positions(cuts, len(data))]
    for piece in pieces:
        reader.feed(piece)
        while True:
            budget = budgets[turn % len(budgets)] if budgets else 0
            turn += 1
            try:
                frames = reader.read_frames(budget)
            except ConnectionError:
                errors.append(len(got))
                return got, errors, counted  # (a frame error ends a connection)
            counted.append(reader.frames_taken)
            if not frames:
                break
            got.append(_apart(frames))
    return got, errors, counted


def _positions(cuts: list[int], total: int) -> list[tuple[int, int]]:
    out, position = [], 0
    for cut in cuts:
        if position >= total:
            break
        out.append((position, cut))
        position += cut
    out.append((position, max(total - position, 0)))
    return out


@settings(max_examples=400, deadline=None)
@given(runs=st.lists(frame_runs(), min_size=1, max_size=8),
       cuts=st.lists(st.integers(1, 120), max_size=12),
       budgets=st.lists(st.sampled_from([0, 0, 1, 2, 3, 4, 6, 300]), max_size=4))
def test_combining_publishes_only_regroups_frames(runs: list[bytes], cuts: list[int], budgets: list[int]) -> None:
    data = b"".join(runs)
    combined, combined_errors, combined_count = _read_all(FrameReader(FRAME_MAX, publishes=True), data, cuts, budgets)
    plain, plain_errors, plain_count = _read_all(FrameReader(FRAME_MAX), data, cuts, budgets)
    assert combined == plain  # read by read
    assert combined_count == plain_count
    assert [count for count in plain_count if count] == [len(frames) for frames in plain]
    assert combined_errors == plain_errors


def test_a_repeated_publish_hands_over_the_same_method_and_header_objects() -> None:
    header = encode_content_header(3)
    message = _publish(1, "q") + build_frame(FRAME_HEADER, 1, header) + build_frame(FRAME_BODY, 1, b"abc")
    reader = FrameReader(FRAME_MAX, publishes=True)
    reader.feed(message * 3)
    frames = reader.read_frames()
    assert [frame[0] for frame in frames] == [PUBLISH_CONTENT] * 3
    assert reader.frames_taken == 9
    assert frames[0][3] == header and all(frame[4] == b"abc" for frame in frames)
    assert frames[1][2] is frames[0][2] and frames[2][3] is frames[0][3]  # compared in place, not copied


def test_a_header_kept_from_one_channel_is_never_taken_for_another() -> None:
    header = build_frame(FRAME_HEADER, 1, encode_content_header(3))
    reader = FrameReader(FRAME_MAX, publishes=True)
    reader.feed(_publish(1, "q") + header + build_frame(FRAME_BODY, 1, b"abc")
                + _publish(2, "q") + header + build_frame(FRAME_BODY, 2, b"abc"))
    frames = reader.read_frames()
    assert frames[0][0] == PUBLISH_CONTENT
    assert [frame[:2] for frame in frames[1:]] == [(FRAME_METHOD, 2), (FRAME_HEADER, 1), (FRAME_BODY, 2)]


def test_a_lower_frame_max_forgets_what_was_checked_against_the_old_one() -> None:
    body = bytes(5000)
    message = (_publish(1, "q") + build_frame(FRAME_HEADER, 1, encode_content_header(len(body)))
               + build_frame(FRAME_BODY, 1, body))
    reader = FrameReader(0, publishes=True)
    reader.feed(message)
    assert reader.read_frames()[0][0] == PUBLISH_CONTENT
    reader.frame_max = FRAME_MAX
    reader.feed(message)
    assert [frame[0] for frame in reader.read_frames()] == [FRAME_METHOD, FRAME_HEADER]
    with pytest.raises(ConnectionError):
        reader.read_frames()
