"""The connection state machine, driven through a session with pamqp-built frames.

Every test that takes the ``chunk_size`` fixture runs twice: with each send fed whole, then fed
one byte at a time (h11's ``test_io`` style), and must see the same behaviour both ways.
"""

from __future__ import annotations

import struct

import pytest
from pamqp import body as pamqp_body, commands, frame as pamqp_frame, header as pamqp_header
from pamqp.heartbeat import Heartbeat

from amqpbroker.codec.frames import PROTOCOL_HEADER
from amqpbroker.protocol.connection import SERVER_CAPABILITIES, State

from tests.helpers import FEED_MODES, FakeClient, decode_frames, deliveries, only

Close = commands.Connection.Close
CloseOk = commands.Connection.CloseOk


@pytest.fixture(params=list(FEED_MODES), ids=list(FEED_MODES))
def chunk_size(request: pytest.FixtureRequest) -> int | None:
    return FEED_MODES[request.param]


def connection_close(client: FakeClient) -> commands.Connection.Close:
    """The one frame the broker wrote, which must be ``connection.close`` on channel 0."""
    frames = client.received()
    assert len(frames) == 1, frames
    channel, close = frames[0]
    assert channel == 0 and isinstance(close, Close), frames
    assert client.connection.state is State.CLOSING
    return close


def raw_frame(frame_type: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end


# ------------------------------------------------------------------ handshake


def test_handshake_walks_through_every_state(chunk_size):
    client = FakeClient(chunk_size=chunk_size, handshake=False)
    connection = client.connection
    assert connection.state is State.AWAIT_HEADER

    client.feed(PROTOCOL_HEADER)
    (start,) = client.expect(commands.Connection.Start)
    assert connection.state is State.AWAIT_START_OK
    assert (start.version_major, start.version_minor) == (0, 9)
    assert "PLAIN" in start.mechanisms.split() and "AMQPLAIN" in start.mechanisms.split()
    assert start.server_properties["capabilities"] == SERVER_CAPABILITIES
    assert start.server_properties["capabilities"]["authentication_failure_close"] is True

    client.send(client.start_ok(), 0)
    (tune,) = client.expect(commands.Connection.Tune)
    assert connection.state is State.AWAIT_TUNE_OK
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    assert client.session.user == "guest"

    client.send(commands.Connection.TuneOk(channel_max=100, frame_max=8192, heartbeat=30), 0)
    client.expect()  # tune-ok has no answer
    assert connection.state is State.AWAIT_OPEN
    assert (connection.channel_max, connection.frame_max, connection.heartbeat) == (100, 8192, 30)

    client.send(commands.Connection.Open(virtual_host="/"), 0)
    client.expect(commands.Connection.OpenOk)
    assert connection.state is State.OPEN
    assert connection.vhost == "/"
    assert client.session in client.broker.sessions
    assert connection.client_capability("consumer_cancel_notify")


def test_protocol_header_in_pieces_waits_for_all_eight_bytes():
    client = FakeClient(handshake=False)
    client.feed(PROTOCOL_HEADER[:5])
    assert client.received() == []
    assert client.connection.state is State.AWAIT_HEADER
    client.feed(PROTOCOL_HEADER[5:])
    client.expect(commands.Connection.Start)


@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x09\x00",   # 0-9 without the revision
    b"AMQP\x01\x01\x00\x0a",   # AMQP 0-10
    b"AMQP\x00\x01\x00\x00",   # AMQP 1.0
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_wrong_protocol_header_gets_ours_and_the_connection_closes(chunk_size, header):
    client = FakeClient(chunk_size=chunk_size, handshake=False)
    client.feed(header)
    assert client.received_bytes() == b"AMQP\x00\x00\x09\x01"
    assert client.closed
    client.feed(PROTOCOL_HEADER)  # nothing is read after that
    assert client.received_bytes() == b""
    assert client.session not in client.broker.sessions


def test_method_other_than_start_ok_during_handshake_closes_the_connection():
    client = FakeClient(handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(commands.Connection.Open(virtual_host="/"), 0)
    close = connection_close(client)
    assert close.reply_code >= 500  # 503 here; RabbitMQ says 504 "unexpected method in connection state"
    assert (close.class_id, close.method_id) == (10, 40)
    assert client.session not in client.broker.sessions


def test_frame_on_a_channel_during_handshake_is_unexpected():
    client = FakeClient(handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(commands.Channel.Open(), 1)
    assert connection_close(client).reply_code == 505


@pytest.mark.parametrize("user,password", [("guest", "wrong"), ("nobody", "guest")])
def test_bad_credentials_close_with_403_when_the_client_has_authentication_failure_close(
        chunk_size, user, password):
    client = FakeClient(chunk_size=chunk_size, handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(client.start_ok(user, password), 0)
    close = connection_close(client)
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused using authentication "
                                       "mechanism PLAIN")
    assert (close.class_id, close.method_id) == (10, 11)
    # until close-ok, everything else is discarded
    client.send(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0), 0)
    assert client.received() == []
    client.send(CloseOk(), 0)
    assert client.closed
    assert client.received() == []


def test_bad_credentials_without_authentication_failure_close_just_close_the_socket(chunk_size):
    client = FakeClient(chunk_size=chunk_size, handshake=False, capabilities={})
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(client.start_ok("guest", "wrong"), 0)
    assert client.received() == []
    assert client.closed


def test_guest_from_a_remote_address_is_refused():
    client = FakeClient(handshake=False)
    client.session.from_loopback = False
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(client.start_ok(), 0)
    assert connection_close(client).reply_code == 403


def test_unknown_vhost_is_530(chunk_size):
    client = FakeClient(chunk_size=chunk_size, handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(client.start_ok(), 0)
    client.expect(commands.Connection.Tune)
    client.send(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=0), 0)
    client.send(commands.Connection.Open(virtual_host="no-such-vhost"), 0)
    close = connection_close(client)
    assert close.reply_code == 530
    assert "no-such-vhost" in close.reply_text
    assert (close.class_id, close.method_id) == (10, 40)
    assert client.session not in client.broker.sessions
    client.send(CloseOk(), 0)
    assert client.closed


@pytest.mark.parametrize("tune_ok,reason", [
    (dict(channel_max=2047, frame_max=131073, heartbeat=0), "frame_max above the server's"),
    (dict(channel_max=2047, frame_max=4095, heartbeat=0), "frame_max below the 4096 minimum"),
    (dict(channel_max=2048, frame_max=131072, heartbeat=0), "channel_max above the server's"),
])
def test_tune_ok_outside_the_servers_limits_is_530(chunk_size, tune_ok, reason):
    client = FakeClient(chunk_size=chunk_size, handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.send(client.start_ok(), 0)
    client.expect(commands.Connection.Tune)
    client.send(commands.Connection.TuneOk(**tune_ok), 0)
    close = connection_close(client)
    assert close.reply_code == 530, reason
    assert (close.class_id, close.method_id) == (10, 31)


def test_heartbeats_are_accepted_during_handshake_and_when_open():
    client = FakeClient(handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.expect(commands.Connection.Start)
    client.feed(Heartbeat().marshal())
    assert client.received() == []
    client.send(client.start_ok(), 0)
    client.expect(commands.Connection.Tune)
    client.send(commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=10), 0)
    client.send(commands.Connection.Open(virtual_host="/"), 0)
    client.expect(commands.Connection.OpenOk)
    client.feed(Heartbeat().marshal())
    assert client.received() == []
    assert client.connection.state is State.OPEN


def test_heartbeat_on_a_non_zero_channel_is_unexpected():
    # RabbitMQ answers 505 UNEXPECTED_FRAME (rabbit_reader); the spec text says 501
    client = FakeClient()
    client.open_channel(1)
    client.feed(raw_frame(8, 1, b""))
    assert connection_close(client).reply_code == 505


# ------------------------------------------------------------------ byte by byte


def _conversation(client: FakeClient) -> None:
    """A little of everything, each step one piece of input."""
    client.open_channel(1)
    client.send(commands.Queue.Declare(queue="q"), 1)
    client.publish(1, "", "q", b"x" * 300, commands.Basic.Properties(content_type="text/plain",
                                                                      headers={"k": "v"}),
                   body_frame_size=64)
    client.publish(1, "", "q", b"")
    client.send(commands.Basic.Get(queue="q"), 1)
    client.send(commands.Basic.Consume(queue="q", consumer_tag="ctag"), 1)
    client.send(commands.Basic.Ack(delivery_tag=2, multiple=True), 1)
    client.send(commands.Basic.Get(queue="q"), 1)
    client.send(commands.Queue.Declare(queue="q", durable=True), 1)  # 406: channel closes
    client.send(commands.Queue.Declare(queue="ignored"), 1)  # discarded until close-ok
    client.send(commands.Channel.CloseOk(), 1)
    client.send(commands.Channel.Open(), 1)
    client.send(commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1)
    client.close()


def test_input_fed_one_byte_at_a_time_gives_the_same_output_as_fed_whole():
    whole = FakeClient(chunk_size=None)
    _conversation(whole)
    whole.received()
    bytewise = FakeClient(chunk_size=1)
    _conversation(bytewise)
    bytewise.received()
    assert whole.closed and bytewise.closed
    assert bytes(bytewise.raw) == bytes(whole.raw)
    # and the conversation did what it should
    kinds = [type(frame).__name__ for _, frame in decode_frames(bytes(whole.raw))]
    assert kinds.count("GetOk") == 1 and kinds.count("Deliver") == 1
    assert kinds[-1] == "CloseOk"


def test_input_in_odd_chunks_and_with_frames_straddling_reads():
    reference = FakeClient(chunk_size=None)
    _conversation(reference)
    reference.received()
    for size in (2, 3, 7, 4096):
        client = FakeClient(chunk_size=size)
        _conversation(client)
        client.received()
        assert bytes(client.raw) == bytes(reference.raw), size


# ------------------------------------------------------------------ content assembly


def test_body_split_over_many_frames_is_assembled(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.declare_queue("q")
    body = bytes(range(256)) * 4
    client.publish(1, "", "q", body, commands.Basic.Properties(message_id="m1"), body_frame_size=10)
    assert client.received() == []
    client.send(commands.Basic.Get(queue="q", no_ack=True), 1)
    (delivery,) = deliveries(client.received())
    assert delivery.body == body
    assert delivery.properties.message_id == "m1"
    assert delivery.method.routing_key == "q" and delivery.method.exchange == ""


def test_zero_length_body_needs_no_body_frame(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.declare_queue("q")
    client.publish(1, "", "q", b"")
    client.send(commands.Basic.Get(queue="q", no_ack=True), 1)
    frames = client.received()
    assert [type(frame) for _, frame in frames] == [commands.Basic.GetOk, pamqp_header.ContentHeader]
    (delivery,) = deliveries(frames)
    assert delivery.body == b"" and delivery.body_frames == 0


def test_outbound_body_is_split_at_the_negotiated_frame_max():
    client = FakeClient(frame_max=4096)
    client.open_channel(1)
    client.declare_queue("q")
    body = b"b" * 10000
    client.publish(1, "", "q", body, body_frame_size=4088)
    client.send(commands.Basic.Get(queue="q", no_ack=True), 1)
    frames = client.received()
    (delivery,) = deliveries(frames)
    assert delivery.body == body
    sizes = [len(frame.value) for _, frame in frames if isinstance(frame, pamqp_body.ContentBody)]
    assert sizes == [4088, 4088, 1824]


def test_content_header_without_a_publish_is_505(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.feed(pamqp_frame.marshal(pamqp_header.ContentHeader(0, 3), 1))
    close = connection_close(client)
    assert close.reply_code == 505


def test_body_frame_without_a_header_is_505(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.feed(pamqp_frame.marshal(pamqp_body.ContentBody(b"abc"), 1))
    assert connection_close(client).reply_code == 505


def test_body_exceeding_the_declared_size_is_505(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.declare_queue("q")
    client.feed(
        pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
        + pamqp_frame.marshal(pamqp_header.ContentHeader(0, 5), 1)
        + pamqp_frame.marshal(pamqp_body.ContentBody(b"abc"), 1)
        + pamqp_frame.marshal(pamqp_body.ContentBody(b"def"), 1))
    close = connection_close(client)
    assert close.reply_code == 505
    assert client.broker.vhosts["/"].queues["q"].message_count == 0


@pytest.mark.parametrize("stage", ["before the header", "between body frames"])
def test_method_in_the_middle_of_content_is_505(chunk_size, stage):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.declare_queue("q")
    frames = [pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)]
    if stage == "between body frames":
        frames.append(pamqp_frame.marshal(pamqp_header.ContentHeader(0, 6), 1))
        frames.append(pamqp_frame.marshal(pamqp_body.ContentBody(b"abc"), 1))
    frames.append(pamqp_frame.marshal(commands.Queue.Declare(queue="other"), 1))
    client.feed(b"".join(frames))
    assert connection_close(client).reply_code == 505
    assert "other" not in client.broker.vhosts["/"].queues


def test_method_in_the_middle_of_content_names_basic_publish():
    # as RabbitMQ: rabbit_command_assembler reports the content method being assembled
    client = FakeClient()
    client.open_channel(1)
    client.feed(pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
                + pamqp_frame.marshal(commands.Queue.Declare(queue="other"), 1))
    close = connection_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (505, 60, 40)


def test_content_on_one_channel_does_not_block_methods_on_another():
    client = FakeClient()
    client.open_channel(1)
    client.open_channel(2)
    client.declare_queue("q")
    client.feed(pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
                + pamqp_frame.marshal(pamqp_header.ContentHeader(0, 2), 1)
                + pamqp_frame.marshal(commands.Queue.Declare(queue="q2"), 2)
                + pamqp_frame.marshal(pamqp_body.ContentBody(b"hi"), 1))
    client.expect(commands.Queue.DeclareOk)
    assert client.broker.vhosts["/"].queues["q"].message_count == 1


# ------------------------------------------------------------------ framing errors


def test_bad_frame_end_is_501(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    payload = pamqp_frame.marshal(commands.Channel.Open(), 1)[7:-1]
    client.feed(raw_frame(1, 1, payload, end=b"\x00"))
    close = connection_close(client)
    assert close.reply_code == 501


def test_frames_before_a_bad_frame_end_are_still_handled():
    client = FakeClient()
    good = pamqp_frame.marshal(commands.Channel.Open(), 1)
    bad = raw_frame(1, 2, pamqp_frame.marshal(commands.Channel.Open(), 2)[7:-1], end=b"\xff")
    client.feed(good + bad)
    frames = client.received()
    assert [type(frame) for _, frame in frames] == [commands.Channel.OpenOk, Close]
    assert frames[1][1].reply_code == 501


def test_frame_larger_than_the_negotiated_frame_max_is_501(chunk_size):
    client = FakeClient(chunk_size=chunk_size, frame_max=4096)
    client.open_channel(1)
    declare = commands.Queue.Declare(queue="q", arguments={"filler": "x" * 5000})
    client.send(declare, 1)
    close = connection_close(client)
    assert close.reply_code == 501
    assert "q" not in client.broker.vhosts["/"].queues


def test_frame_slightly_over_frame_max_is_tolerated_like_rabbitmq():
    client = FakeClient(frame_max=4096)
    client.open_channel(1)
    client.declare_queue("q")
    client.publish(1, "", "q", b"z" * (4096 - 8 + 1))  # a body frame of frame_max + 1 bytes
    assert client.received() == []
    assert client.broker.vhosts["/"].queues["q"].message_count == 1


def test_frame_of_exactly_frame_max_is_accepted():
    client = FakeClient(frame_max=4096)
    client.open_channel(1)
    client.declare_queue("q")
    body = b"z" * (4096 - 8)  # a body frame of exactly frame_max bytes on the wire
    client.publish(1, "", "q", body)
    assert client.received() == []
    assert client.broker.vhosts["/"].queues["q"].message_count == 1


def test_unknown_frame_type_is_501():
    client = FakeClient()
    client.open_channel(1)
    client.feed(raw_frame(5, 1, b"abc"))
    assert connection_close(client).reply_code == 501


def test_unknown_frame_type_on_channel_zero_is_501():
    client = FakeClient()
    client.feed(raw_frame(9, 0, b""))
    assert connection_close(client).reply_code == 501


def test_unknown_method_is_503():
    client = FakeClient()
    client.open_channel(1)
    client.feed(raw_frame(1, 1, struct.pack(">HH", 60, 999)))
    assert connection_close(client).reply_code == 503


# ------------------------------------------------------------------ channels


def test_method_on_an_unopened_channel_is_504(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.send(commands.Queue.Declare(queue="q"), 3)
    close = connection_close(client)
    assert close.reply_code == 504
    assert close.reply_text == "CHANNEL_ERROR - expected 'channel.open' on channel 3"
    assert (close.class_id, close.method_id) == (50, 10)


def test_publish_on_an_unopened_channel_is_504():
    client = FakeClient()
    client.publish(7, "", "q", b"body")
    close = connection_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (504, 60, 40)


def test_second_channel_open_is_504():
    client = FakeClient()
    client.open_channel(1)
    client.send(commands.Channel.Open(), 1)
    close = connection_close(client)
    assert (close.reply_code, close.class_id, close.method_id) == (504, 20, 10)


def test_channel_above_the_negotiated_channel_max_is_530(chunk_size):
    client = FakeClient(chunk_size=chunk_size, channel_max=2)
    assert client.connection.channel_max == 2
    client.open_channel(1)
    client.open_channel(2)
    client.send(commands.Channel.Open(), 3)
    close = connection_close(client)
    assert close.reply_code == 530
    assert "channel_max" in close.reply_text


def test_client_closes_a_channel(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.send(commands.Channel.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), 1)
    client.expect(commands.Channel.CloseOk)
    assert 1 not in client.connection.channels and 1 not in client.session.channels
    client.send(commands.Queue.Declare(queue="q"), 1)  # closed: the channel is unknown again
    assert connection_close(client).reply_code == 504


def test_client_may_reopen_a_channel_it_closed():
    client = FakeClient()
    client.open_channel(1)
    client.send(commands.Channel.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), 1)
    client.expect(commands.Channel.CloseOk)
    client.open_channel(1)
    client.declare_queue("q")


def test_broker_closes_a_channel_and_discards_its_frames_until_close_ok(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.open_channel(2)
    client.send(commands.Queue.Declare(queue="q", passive=True), 1)
    frames = client.received()
    assert len(frames) == 1
    channel, close = frames[0]
    assert channel == 1 and isinstance(close, commands.Channel.Close)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no queue 'q' in vhost '/'"
    assert (close.class_id, close.method_id) == (50, 10)
    assert client.connection.channels[1].closing
    assert 1 not in client.session.channels

    # methods, content and a second open are all dropped on the floor
    client.send(commands.Queue.Declare(queue="dropped"), 1)
    client.publish(1, "", "dropped", b"body")
    client.send(commands.Channel.Open(), 1)
    assert client.received() == []
    assert "dropped" not in client.broker.vhosts["/"].queues

    # the other channel is unaffected
    client.declare_queue("other", channel=2)

    client.send(commands.Channel.CloseOk(), 1)
    assert client.received() == []
    assert 1 not in client.connection.channels
    client.open_channel(1)
    client.declare_queue("q")


def test_channel_close_crossing_the_brokers_channel_close():
    client = FakeClient()
    client.open_channel(1)
    client.send(commands.Queue.Declare(queue="q", passive=True), 1)
    client.expect(commands.Channel.Close)
    # the client closed too before it saw ours: it gets close-ok, we still wait for its close-ok
    client.send(commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 1)
    client.expect(commands.Channel.CloseOk)
    assert client.connection.channels[1].closing
    client.send(commands.Channel.CloseOk(), 1)
    assert 1 not in client.connection.channels


def test_channel_error_mid_content_discards_the_rest_of_the_content():
    client = FakeClient()
    client.open_channel(1)
    client.feed(pamqp_frame.marshal(commands.Basic.Publish(exchange="missing", routing_key="q"), 1)
                + pamqp_frame.marshal(pamqp_header.ContentHeader(0, 0), 1))
    close = only(client.received(), commands.Channel.Close)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 60, 40)
    client.feed(pamqp_frame.marshal(pamqp_body.ContentBody(b"late"), 1))
    assert client.received() == []
    assert client.connection.state is State.OPEN


# ------------------------------------------------------------------ connection close


def test_client_closes_the_connection(chunk_size):
    client = FakeClient(chunk_size=chunk_size)
    client.open_channel(1)
    client.open_channel(2)
    client.send(Close(reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0), 0)
    frames = client.received()
    assert len(frames) == 1 and frames[0][0] == 0 and isinstance(frames[0][1], CloseOk)
    assert client.closed and client.connection.closed
    assert client.session.channels == {} and client.connection.channels == {}
    assert client.session not in client.broker.sessions
    client.send(commands.Channel.Open(), 3)  # nothing is read after close
    assert client.received() == []


def test_connection_close_is_answered_while_the_broker_is_closing():
    client = FakeClient()
    client.open_channel(1)
    client.send(commands.Channel.Open(), 1)  # a second open: the broker closes
    assert connection_close(client).reply_code == 504
    client.send(Close(reply_code=200, reply_text="crossed", class_id=0, method_id=0), 0)
    client.expect(CloseOk)
    assert client.closed


def test_frames_after_connection_close_are_discarded_until_close_ok():
    client = FakeClient()
    client.open_channel(1)
    client.send(commands.Channel.Open(), 1)
    assert connection_close(client).reply_code == 504
    client.send(commands.Queue.Declare(queue="q"), 1)
    client.send(commands.Channel.Open(), 2)
    assert client.received() == []
    assert "q" not in client.broker.vhosts["/"].queues
    client.send(CloseOk(), 0)
    assert client.closed
    assert client.received() == []


def test_server_initiated_close():
    client = FakeClient()
    client.session.close(320, "broker shutdown")
    close = connection_close(client)
    assert close.reply_code == 320
    assert close.reply_text == "CONNECTION_FORCED - broker shutdown"
    client.send(CloseOk(), 0)
    assert client.closed


def test_unexpected_close_ok_on_channel_zero_is_504_as_rabbitmq():
    client = FakeClient()
    client.send(CloseOk(), 0)
    assert connection_close(client).reply_code == 504


def test_lost_transport_releases_the_session():
    client = FakeClient()
    client.open_channel(1)
    client.connection.lost()
    assert client.closed
    assert client.session not in client.broker.sessions
