"""One client's bad input or one queue's fault never ends the broker or harms anyone else.

Each test here reproduces a finding of the unhappy-path review (issue "No single client can hurt
the broker") without sockets: the sans-IO broker driven by :class:`tests.helpers.FakeClient`.
"""

from __future__ import annotations

import struct

import pytest
from pamqp import commands, frame as pamqp_frame, header as pamqp_header

from amqpbroker.broker.broker import Broker
from amqpbroker.codec.content import check_properties, decode_properties, encode_content_header
from amqpbroker.codec.tables import MAX_DEPTH, TableError, check_table, decode_table, encode_table
from amqpbroker.errors import ConnectionError, ReplyCode, cut_to_bytes
from tests.helpers import ClientPair, FakeClient, deliveries, only

NON_UTF8 = b"\xff\xfe not utf-8"


def _header_with_raw_headers(body_size: int, raw_table: bytes, flags: int = 0x2000) -> bytes:
    """A content header payload whose ``headers`` property is ``raw_table`` (bytes as given)."""
    return struct.pack(">HHQH", 60, 0, body_size, flags) + raw_table


def _raw_table(*items: tuple[bytes, bytes]) -> bytes:
    data = b"".join(bytes((len(key),)) + key + value for key, value in items)
    return struct.pack(">I", len(data)) + data


def _publish_raw(client: FakeClient, queue: str, header_payload: bytes, body: bytes, channel: int = 1) -> None:
    method = pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key=queue), channel)
    header = struct.pack(">BHI", 2, channel, len(header_payload)) + header_payload + b"\xce"
    content = struct.pack(">BHI", 3, channel, len(body)) + body + b"\xce" if body else b""
    client.feed(method + header + content)


def _healthy(client: FakeClient, queue: str, channel: int = 1) -> None:
    """The client can still publish and get a message back."""
    client.publish(channel, "", queue, b"still fine")
    client.send(commands.Basic.Get(queue=queue, no_ack=True), channel)
    got = deliveries(client.received())
    assert [d.body for d in got] == [b"still fine"]


# ---------------------------------------------------------------- reply texts

def test_reply_text_is_cut_by_bytes_not_characters() -> None:
    text = cut_to_bytes("NOT_FOUND - no queue '" + "€" * 85 + "'", 255)
    assert len(text.encode()) <= 255
    assert text.endswith("€")  # never inside a character


def test_not_found_naming_a_long_non_ascii_queue_closes_the_channel_cleanly() -> None:
    pair = ClientPair()
    pair.a.send(commands.Queue.Declare(queue="€" * 85, passive=True))
    close = only(pair.a.methods(), commands.Channel.Close)
    assert close.reply_code == 404 and len(close.reply_text.encode()) <= 255
    assert not pair.a.closed
    pair.b.declare_queue("other")
    _healthy(pair.b, "other")


# ---------------------------------------------------------------- property bytes at the door

@pytest.mark.parametrize("header_payload", [
    struct.pack(">HHQH", 60, 0, 3, 0x8000),  # content-type promised, absent
    struct.pack(">HHQH", 60, 0, 3, 0x2000) + b"\x00\x00",  # headers table length cut short
    _header_with_raw_headers(3, _raw_table((b"k", b"Z\x00"))),  # unknown type tag 'Z'
    _header_with_raw_headers(3, _raw_table((b"k", b"S\x00\x00\x10\x00abc"))),  # longstr past the table
    struct.pack(">HHQH", 60, 0, 3, 0x0002),  # a reserved flag bit
], ids=["absent-field", "short-table", "unknown-tag", "longstr-past-end", "reserved-flag"])
def test_malformed_properties_close_the_connection_and_store_nothing(header_payload: bytes) -> None:
    pair = ClientPair()
    pair.a.declare_queue("q")
    _publish_raw(pair.a, "q", header_payload, b"abc")
    close = only(pair.a.methods(), commands.Connection.Close)
    assert close.reply_code == ReplyCode.INTERNAL_ERROR and (close.class_id, close.method_id) == (60, 40)
    assert pair.broker.vhosts["/"].queues["q"].message_count == 0
    pair.b.declare_queue("q2")
    _healthy(pair.b, "q2")


def test_tables_nested_too_deeply_are_refused_when_they_arrive() -> None:
    table = {"leaf": 1}
    for _ in range(MAX_DEPTH + 1):
        table = {"x": table}
    with pytest.raises(TableError):
        encode_table(table)
    raw = _raw_table((b"k", b"V"))
    for _ in range(MAX_DEPTH + 1):
        raw = _raw_table((b"x", b"F" + raw))
    with pytest.raises(TableError):
        check_table(raw, 0)
    with pytest.raises(ConnectionError):
        check_properties(_header_with_raw_headers(0, raw))


def test_every_value_decoded_encodes_back_unchanged() -> None:
    raw = _raw_table((b"s", b"S" + struct.pack(">I", len(NON_UTF8)) + NON_UTF8),
                     (b"\xc3(bad-key", b"b\x01"), (b"d", b"d" + struct.pack(">d", 0.1)),
                     (b"x", b"x\x00\x00\x00\x02ab"), (b"a", b"A\x00\x00\x00\x02t\x01"),
                     (b"ts", b"T" + struct.pack(">Q", 2 ** 62)), (b"dec", b"D\x02\x00\x00\x01\x00"))
    assert check_table(raw, 0) == len(raw)
    table, end = decode_table(raw)
    assert end == len(raw) and table["s"] == NON_UTF8
    assert encode_table(table) == raw
    payload = _header_with_raw_headers(0, raw)
    assert encode_content_header(0, decode_properties(payload)) == payload


# ---------------------------------------------------------------- dead-lettering and timers

def test_expired_message_with_non_utf8_header_is_dead_lettered_with_its_bytes() -> None:
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("dlq")
    client.declare_queue("ttl", arguments={"x-message-ttl": 0, "x-dead-letter-exchange": "",
                                           "x-dead-letter-routing-key": "dlq"})
    raw = _raw_table((b"bin", b"S" + struct.pack(">I", len(NON_UTF8)) + NON_UTF8))
    _publish_raw(client, "ttl", _header_with_raw_headers(3, raw), b"abc")
    broker.tick(broker.vhosts["/"].clock() + 1)  # the timer: it used to raise and end the broker
    client.send(commands.Basic.Get(queue="dlq", no_ack=True))
    (got,) = deliveries(client.received())
    headers = got.properties.headers
    assert headers["bin"] == NON_UTF8 and headers["x-death"][0]["reason"] == "expired"


def test_a_dead_letter_copy_that_cannot_be_encoded_is_forwarded_unchanged(monkeypatch) -> None:
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("dlq")
    client.declare_queue("src", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    client.publish(1, "", "src", b"poison")
    import amqpbroker.broker.vhost as vhost_module

    def broken(*args, **kwargs):
        raise TableError("cannot encode")
    monkeypatch.setattr(vhost_module, "dead_lettered", broken)
    client.send(commands.Basic.Get(queue="src"))
    (got,) = deliveries(client.received())
    client.send(commands.Basic.Reject(delivery_tag=got.tag, requeue=False))
    assert broker.vhosts["/"].dead_letter_failures == 1
    client.send(commands.Basic.Get(queue="dlq", no_ack=True))
    assert [d.body for d in deliveries(client.received())] == [b"poison"]
    assert not client.closed


def test_one_queue_failing_to_dispatch_does_not_stop_the_others(monkeypatch) -> None:
    pair = ClientPair()
    pair.a.declare_queue("bad")
    pair.b.declare_queue("good")
    pair.a.consume("bad", "c1")
    pair.b.consume("good", "c2")
    bad = pair.broker.vhosts["/"].queues["bad"]
    original = type(bad).dispatch  # Queue is slotted: patch the class, fail for one instance

    def dispatch(self) -> None:
        if self is bad:
            raise RuntimeError("bug in dispatch")
        original(self)
    monkeypatch.setattr(type(bad), "dispatch", dispatch)
    pair.a.publish(1, "", "bad", b"x")
    pair.b.publish(1, "", "good", b"y")
    assert [d.body for d in deliveries(pair.b.received())] == [b"y"]
    assert not pair.a.closed and not pair.b.closed


def test_timed_work_of_one_queue_failing_leaves_the_timer_and_others_going(monkeypatch) -> None:
    broker = Broker()
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("a", arguments={"x-message-ttl": 10})
    client.declare_queue("b", arguments={"x-message-ttl": 10})
    client.publish(1, "", "b", b"old")
    queue_a = broker.vhosts["/"].queues["a"]
    original = type(queue_a).tick

    def tick(self, now):
        if self is queue_a:
            raise RuntimeError("bug in tick")
        return original(self, now)
    monkeypatch.setattr(type(queue_a), "tick", tick)
    broker.tick(broker.vhosts["/"].clock() + 60)
    assert broker.vhosts["/"].queues["b"].message_count == 0


# ---------------------------------------------------------------- releasing a connection

def test_a_failure_while_releasing_one_channel_still_releases_the_rest(monkeypatch) -> None:
    pair = ClientPair()
    pair.a.declare_queue("q")
    pair.a.open_channel(2)
    pair.a.consume("q", "c1", channel=1)
    pair.a.consume("q", "c2", channel=2)
    pair.a.send(commands.Queue.Declare(queue="", exclusive=True))
    (ok,) = pair.a.expect(commands.Queue.DeclareOk)
    session = pair.a.session
    channel_one = session.channels[1]
    original = type(channel_one).requeue_all

    def requeue_all(self):
        if self is channel_one:
            raise RuntimeError("bug in requeue")
        original(self)
    monkeypatch.setattr(type(channel_one), "requeue_all", requeue_all)
    pair.a.connection.lost()
    queues = pair.broker.vhosts["/"].queues
    assert queues["q"].consumers == []
    assert ok.queue not in queues  # the exclusive queue went
    assert session not in pair.broker.sessions


def test_non_string_alternate_exchange_is_ignored_as_rabbitmq_does() -> None:
    client = FakeClient()
    client.open_channel()
    client.send(commands.Exchange.Declare(exchange="ae-int", exchange_type="direct",
                                          arguments={"alternate-exchange": 5}))
    client.expect(commands.Exchange.DeclareOk)
    client.publish(1, "ae-int", "nowhere", b"x", mandatory=True)
    assert isinstance(client.methods()[0][1], commands.Basic.Return)
    assert not client.closed


def test_content_header_helpers_match_pamqp_for_plain_properties() -> None:
    properties = commands.Basic.Properties(content_type="text/plain", delivery_mode=2, priority=1,
                                           headers={"a": "b", "n": [1, {"c": None}]}, message_id="m",
                                           user_id="guest", app_id="app", reply_to="r", expiration="10")
    payload = pamqp_header.ContentHeader(0, 5, properties).marshal()
    check_properties(payload)
    decoded = decode_properties(payload)
    for name in ("content_type", "delivery_mode", "priority", "headers", "message_id", "user_id",
                 "app_id", "reply_to", "expiration"):
        assert getattr(decoded, name) == getattr(properties, name), name


def test_queue_delete_ok_comes_before_the_cancel_of_the_deleting_channels_own_consumer() -> None:
    """py-amqp raises ConsumerCancelled from inside queue_delete() when the cancel comes first
    (kombu's test_ack_from_another_thread); RabbitMQ sends delete-ok first."""
    client = FakeClient()
    client.open_channel()
    client.declare_queue("q")
    client.consume("q", "mine")
    client.send(commands.Queue.Delete(queue="q"))
    assert [type(frame) for _, frame in client.methods()] == [commands.Queue.DeleteOk, commands.Basic.Cancel]


def test_a_client_that_never_reads_its_get_oks_stops_being_read() -> None:
    """300 pipelined basic.get + basic.reject(requeue) of a 1 MB message from a client that
    never reads: its input is held back once 8 MiB of answers wait unsent (RabbitMQ stops
    reading that socket), instead of 300 MB piling up in the broker."""
    client = FakeClient()
    client.open_channel()
    client.declare_queue("big")
    client.publish(1, "", "big", b"x" * (1 << 20), body_frame_size=100_000)
    client.received()
    pipelined = b"".join(
        pamqp_frame.marshal(commands.Basic.Get(queue="big"), 1)
        + pamqp_frame.marshal(commands.Basic.Reject(delivery_tag=tag, requeue=True), 1)
        for tag in range(1, 301))
    client.connection.receive_data(pipelined)
    client.session.end_of_batch()
    session = client.session
    assert client.connection.paused and session.out_bytes <= 10 << 20
    answered = 0
    while client.connection.paused:  # the transport's writer sends, the client reads: it goes on
        answered += sum(isinstance(frame, commands.Basic.GetOk) for _, frame in client.methods())
        session.out_bytes = 0
        session.output_drained()
        assert session.out_bytes <= 10 << 20
    answered += sum(isinstance(frame, commands.Basic.GetOk) for _, frame in client.methods())
    assert answered == 300 and not client.closed


# ---------------------------------------------------------------- limits, as RabbitMQ refuses them

def _limited(**limits) -> Broker:
    from amqpbroker.broker.broker import Limits
    return Broker(Limits(**limits))


def test_connection_limits_refuse_at_open_with_530() -> None:
    broker = _limited(connection_max=2, connection_max_per_user=1)
    FakeClient(broker)
    second = FakeClient(broker, handshake=False)
    second.feed(pamqp_header.ProtocolHeader().marshal())
    second.send(second.start_ok(), 0)
    second.send(commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=0), 0)
    second.received()
    second.send(commands.Connection.Open(virtual_host="/"), 0)
    close = only(second.methods(), commands.Connection.Close)
    assert close.reply_code == 530 and "User connection limit (1)" in close.reply_text


def test_consumers_per_channel_and_queues_per_vhost_are_bounded() -> None:
    broker = _limited(consumer_max_per_channel=2, queue_max_per_vhost=2)
    client = FakeClient(broker)
    client.open_channel()
    client.declare_queue("q1")
    client.declare_queue("q2")
    client.send(commands.Queue.Declare(queue="q3"))
    close = only(client.methods(), commands.Channel.Close)
    assert close.reply_code == 406 and "queue limit in vhost '/' (2) is reached" in close.reply_text
    client.open_channel(2)
    client.consume("q1", "c1", channel=2)
    client.consume("q2", "c2", channel=2)
    client.send(commands.Basic.Consume(queue="q1", consumer_tag="c3"), 2)
    close = only(client.methods(), commands.Connection.Close)
    assert close.reply_code == 530 and "reached maximum (2) of consumers per channel" in close.reply_text


def test_a_message_half_received_counts_as_publishing_for_the_alarms() -> None:
    client = FakeClient()
    client.open_channel()
    frames = client.publish_frames(1, "", "q", b"x" * 1000, body_frame_size=500)
    client.feed(frames[:-(500 + 8)])  # all but the last body frame
    assert client.connection.mid_content() and not client.session.published
    client.feed(frames[-(500 + 8):])
    assert not client.connection.mid_content() and client.session.published
