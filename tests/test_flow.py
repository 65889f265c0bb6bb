"""Publisher flow control without sockets: input handled in slices per turn of the loop, and
publishers into a queue that is behind its consumers given credit from what it delivers."""

from __future__ import annotations

import pytest
from pamqp import commands
from pamqp import frame as pamqp_frame

from amqpbroker.broker import flow
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.flow import FLOW_FLOOR, FLOW_HIGH, FRAMES_PER_PUBLISH, SLICE_FRAMES
from amqpbroker.codec.frames import FrameReader, build_frame
from tests.helpers import FakeClient


@pytest.fixture(autouse=True)
def _consumers_count_as_active(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded test machine may take over FLOW_ACTIVE between two steps of a test: only the test
    about stalled consumers depends on it, and it moves the clock itself."""
    monkeypatch.setattr(flow, "FLOW_ACTIVE", 60.0)


def test_read_frames_stops_at_max_frames_and_keeps_the_rest() -> None:
    reader = FrameReader(frame_max=0)
    reader.feed(b"".join(build_frame(3, 1, bytes([n])) for n in range(5)))
    assert [payload for _, _, payload in reader.read_frames(2)] == [b"\x00", b"\x01"]
    assert [payload for _, _, payload in reader.read_frames(2)] == [b"\x02", b"\x03"]
    assert [payload for _, _, payload in reader.read_frames()] == [b"\x04"]
    assert reader.read_frames(2) == []


def _publisher_and_consumer(prefetch: int) -> tuple[Broker, FakeClient, FakeClient]:
    broker = Broker()
    publisher, consumer = FakeClient(broker), FakeClient(broker)
    publisher.open_channel()
    consumer.open_channel()
    publisher.declare_queue("q")
    consumer.send(commands.Basic.Qos(prefetch_count=prefetch))
    consumer.expect(commands.Basic.QosOk)
    consumer.consume("q", "c1")
    return broker, publisher, consumer


def _one_client_with_a_queue() -> tuple[Broker, FakeClient]:
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("q")
    return broker, client


def test_a_turn_handles_at_most_its_slice_and_the_rest_waits() -> None:
    broker, client = _one_client_with_a_queue()
    connection = client.connection
    connection.slice_frames = 6  # two publishes
    connection.receive_data(b"".join(client.publish_frames(1, "", "q", b"m%d" % n) for n in range(7)))
    queue = broker.vhosts["/"].queues["q"]
    assert queue.message_count == 2 and connection.input_pending
    turns = 1
    while connection.input_pending:
        connection.receive_more()
        turns += 1
    assert queue.message_count == 7
    assert turns == 4  # 2 + 2 + 2 + 1
    assert [entry[1].body for entry in queue.ready] == [b"m%d" % n for n in range(7)]


def test_a_slice_never_splits_the_order_of_a_close_after_publishes() -> None:
    broker, client = _one_client_with_a_queue()
    connection = client.connection
    connection.slice_frames = 3
    close = commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    connection.receive_data(b"".join(client.publish_frames(1, "", "q", b"x") for _ in range(3))
                            + pamqp_frame.marshal(close, 0))
    while connection.input_pending:
        assert not connection.closed
        connection.receive_more()
    assert broker.vhosts["/"].queues["q"].message_count == 3
    client.expect(commands.Connection.CloseOk)


def test_a_queue_without_consumers_never_slows_its_publisher() -> None:
    _, client = _one_client_with_a_queue()
    client.feed(b"".join(client.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH + 50)))
    assert client.session.flow.queues == {}
    assert client.session.flow.frames_for_turn() == SLICE_FRAMES
    assert not client.session.flow.in_flow


def test_a_publisher_into_a_queue_behind_its_consumer_gets_credit_from_what_it_delivers() -> None:
    broker, publisher, consumer = _publisher_and_consumer(prefetch=40)
    queue = broker.vhosts["/"].queues["q"]
    publisher.feed(b"".join(publisher.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH + 100)))
    assert queue.flow_on and queue.delivered == 40
    flow_state = publisher.session.flow
    assert queue in flow_state.queues and queue.flow_publishers == 1
    # the 40 went out after the publishes that put it in flow (the batch's dispatch)
    assert flow_state.frames_for_turn() == int(40 * flow.FLOW_SHARE) * FRAMES_PER_PUBLISH
    assert flow_state.in_flow
    publisher.publish(1, "", "q", b"x")
    # nothing delivered since: no turn now; after FLOW_WAIT, the floor
    assert flow_state.frames_for_turn() == 0
    assert flow_state.frames_for_turn(waited=True) == FLOW_FLOOR * FRAMES_PER_PUBLISH
    publisher.publish(1, "", "q", b"x")
    consumer.received()
    consumer.ack(40, multiple=True)  # 40 more delivered
    assert queue.delivered == 80
    assert flow_state.frames_for_turn() == int(40 * flow.FLOW_SHARE) * FRAMES_PER_PUBLISH


def test_a_publisher_that_stopped_publishing_is_no_longer_held_nor_counted() -> None:
    broker, first, consumer = _publisher_and_consumer(prefetch=40)
    quiet = FakeClient(broker)
    quiet.open_channel()
    queue = broker.vhosts["/"].queues["q"]
    first.feed(b"".join(first.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH + 100)))
    quiet.publish(1, "", "q", b"x")
    assert queue.flow_publishers == 2
    first.session.flow.frames_for_turn()
    assert quiet.session.flow.frames_for_turn() == 0  # it did publish: held, nothing delivered since
    assert quiet.session.flow.frames_for_turn(waited=True) == FLOW_FLOOR * FRAMES_PER_PUBLISH
    first.publish(1, "", "q", b"x")
    consumer.received()
    consumer.ack(40, multiple=True)
    # a turn of the quiet connection (a heartbeat) with no publish: it goes
    assert quiet.session.flow.frames_for_turn() == SLICE_FRAMES
    assert queue.flow_publishers == 1 and not quiet.session.flow.queues
    # the one still publishing gets the whole share
    assert first.session.flow.frames_for_turn() == int(40 * flow.FLOW_SHARE) * FRAMES_PER_PUBLISH


def test_credit_is_never_more_than_the_normal_slice() -> None:
    broker, publisher, consumer = _publisher_and_consumer(prefetch=1000)
    publisher.feed(b"".join(publisher.publish_frames(1, "", "q", b"x") for _ in range(3 * FLOW_HIGH)))
    queue = broker.vhosts["/"].queues["q"]
    assert queue.flow_on and queue.delivered >= SLICE_FRAMES // FRAMES_PER_PUBLISH / flow.FLOW_SHARE
    assert publisher.session.flow.frames_for_turn() == SLICE_FRAMES


def test_the_queue_catching_up_releases_its_publishers() -> None:
    broker, publisher, consumer = _publisher_and_consumer(prefetch=10)
    queue = broker.vhosts["/"].queues["q"]
    publisher.feed(b"".join(publisher.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH + 100)))
    flow_state = publisher.session.flow
    assert flow_state.frames_for_turn() < SLICE_FRAMES
    consumer.received()
    consumer.open_channel(2)
    consumer.consume("q", "c2", channel=2, no_ack=True)  # takes the whole backlog
    for _ in range(100):
        if not queue.message_count:
            break
        consumer.received()
        consumer.session.output_drained()  # as the transport, once the socket took it
    assert queue.message_count == 0 and not queue.flow_on
    assert flow_state.frames_for_turn() == SLICE_FRAMES
    assert flow_state.queues == {} and queue.flow_publishers == 0


def test_a_stalled_consumer_does_not_hold_the_publisher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consumers that take nothing (prefetch full, no acks) would not be helped by a slower
    publisher: after FLOW_ACTIVE without a delivery the publisher gets its whole slice."""
    broker, publisher, _ = _publisher_and_consumer(prefetch=1)
    queue = broker.vhosts["/"].queues["q"]
    publisher.feed(b"".join(publisher.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH + 100)))
    flow_state = publisher.session.flow
    assert queue.flow_on and queue in flow_state.queues
    queue.dispatched_at -= flow.FLOW_ACTIVE + 1
    assert flow_state.frames_for_turn() == SLICE_FRAMES
    assert queue.flow_publishers == 0


def test_a_closed_publisher_leaves_no_count_on_the_queue() -> None:
    broker, publisher, _ = _publisher_and_consumer(prefetch=10)
    queue = broker.vhosts["/"].queues["q"]
    publisher.feed(b"".join(publisher.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH + 100)))
    assert queue.flow_publishers == 1
    publisher.close()
    assert queue.flow_publishers == 0


def test_credit_is_shared_among_the_publishers_in_flow() -> None:
    broker, first, consumer = _publisher_and_consumer(prefetch=40)
    second = FakeClient(broker)
    second.open_channel()
    queue = broker.vhosts["/"].queues["q"]
    for client in (first, second, first):
        client.feed(b"".join(client.publish_frames(1, "", "q", b"x") for _ in range(FLOW_HIGH)))
    assert queue.flow_publishers == 2
    first.session.flow.frames_for_turn()
    second.session.flow.frames_for_turn()
    for client in (first, second):
        client.publish(1, "", "q", b"x")
    consumer.received()
    consumer.ack(40, multiple=True)
    expected = max(int(40 * flow.FLOW_SHARE / 2), FLOW_FLOOR) * FRAMES_PER_PUBLISH
    assert first.session.flow.frames_for_turn() == expected
    assert second.session.flow.frames_for_turn() == expected


def test_a_large_frame_trickled_in_small_pieces_is_joined_once() -> None:
    """A client sending a 128 KB frame a few bytes at a time must not make each piece copy what
    came before (quadratic: gigabytes of copying for one frame): the pieces are collected and
    joined once the frame is complete."""
    reader = FrameReader(frame_max=0)
    frame = build_frame(3, 1, b"z" * 131_000)
    got = []
    for start in range(0, len(frame), 16):
        reader.feed(frame[start:start + 16])
        got += reader.read_frames()
        if 64 <= start < len(frame) - 16:  # collecting: nothing joined, nothing copied yet
            assert reader._pieces and reader._buffer == b"", start
    assert got == [(3, 1, b"z" * 131_000)] and reader.buffered == 0


def test_the_reader_keeps_no_reference_to_input_it_has_read() -> None:
    reader = FrameReader(frame_max=0)
    reader.feed(b"".join(build_frame(3, 1, b"y" * 1000) for _ in range(100)))
    assert len(reader.read_frames()) == 100
    assert reader._buffer == b"" and reader.buffered == 0


@pytest.mark.parametrize("consumers", [1, 2])
def test_a_consumer_connection_that_does_not_read_holds_bounded_output(consumers: int) -> None:
    """A consumer whose connection's output is not taken by the socket stops getting messages
    at the output bound (pieces or bytes) and is served again once the transport sent it."""
    from amqpbroker.broker.channel import OUTPUT_BYTES_HIGH_WATER, OUTPUT_HIGH_WATER

    broker = Broker()
    publisher, consumer = FakeClient(broker), FakeClient(broker)
    publisher.open_channel()
    consumer.open_channel()
    publisher.declare_queue("q")
    for index in range(consumers):
        consumer.consume("q", f"c{index}", no_ack=True)
    body = b"x" * 4000
    publisher.feed(b"".join(publisher.publish_frames(1, "", "q", body) for _ in range(3000)))
    queue = broker.vhosts["/"].queues["q"]
    delivered = 0
    for _ in range(100):
        if delivered >= 3000:
            break
        out = consumer.session.out
        assert len(out) <= OUTPUT_HIGH_WATER + 9
        assert consumer.session.out_bytes <= OUTPUT_BYTES_HIGH_WATER + len(body)
        got = len(consumer.received_bytes()) // (len(body) + 60)
        assert got > 0, "a consumer with drained output must be served again"
        delivered = 3000 - queue.message_count
        consumer.session.out_bytes = 0
        consumer.session.output_drained()  # as the transport's writer, once the socket took it
    assert queue.message_count == 0 and delivered == 3000


def test_a_closed_connection_drops_the_input_it_had_not_handled() -> None:
    client = FakeClient(Broker())
    client.open_channel()
    client.connection.receive_data(build_frame(3, 1, b"q" * 5000)[:4000])  # a partial frame
    assert client.connection._reader.buffered == 4000
    client.connection.lost()
    assert client.connection._reader.buffered == 0
