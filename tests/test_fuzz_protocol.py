"""Property-based fuzzing of the sans-IO core: codec, connection machine and broker session.

No socket, thread or clock: one :class:`~amqpbroker.broker.broker.Broker` per example, a
*victim* session (two for the method sequences) fed hostile input, and a *bystander* session
that must never notice. The journal is on, taken by a stand-in for the store writer that syncs
at once (:class:`InstantStore`), so persistent messages and durable queues take their real paths.

Strategies: (a) arbitrary bytes and near-frames after a valid handshake; (b) structurally valid
frames whose method payloads are fuzzed (random class/method ids, every argument of a known
method fuzzed by type: shortstrs that are not UTF-8 or promise more bytes than follow, field
tables with unknown type tags, wrong lengths, truncation, nesting up to 1200 deep), and fuzzed
handshakes; (c) content headers with arbitrary property flags and bytes, then bodies, into
queues that read properties in different places (priority, persistence, headers routing, quorum
delivery counts, TTL + dead-lettering, length limits, delayed exchanges); (d) sequences of valid
methods (pamqp) with random arguments on several channels of two connections, time advanced in
between (``Broker.tick``) so TTLs, dead-lettering, x-expires and delayed messages run.

The victims have channels 1, 2 and 3 open before the input; (b), (c) and (d) only ever target
channels 0, 1, 3 and unopened ones (the raw bytes of (a) go anywhere). Every stream is fed twice,
on fresh brokers: whole, then cut at random points, with an end of batch (``run_pending``) after
each piece, as the transport does after each socket read.

Invariants, after every batch of input and at the end of each example:

- nothing raises out of ``Connection.receive_data``, ``Broker.run_pending`` or ``Broker.tick``;
- every frame the broker writes decodes with pamqp (a content header whose strings are not UTF-8,
  as the publisher sent them, is walked for structure instead: RabbitMQ passes such bytes on);
- the broker goes on or answers with ``channel.close`` / ``connection.close`` and a known reply
  code, never with the supervisor's 541 "internal error" (an exception escaped our code); after
  a ``connection.close`` only ``close-ok`` follows, after a ``channel.close`` on channel N nothing
  on N but ``close-ok`` (or ``open-ok`` once the client reopened it);
- while a victim's connection is open, its untouched channel 2 still declares, publishes and
  gets its message back;
- the bystander (another connection on the same broker) is sent nothing but deliveries, and
  still publishes and consumes;
- the broker's own bookkeeping agrees with itself (:func:`assert_consistent`).

Bugs these properties found have a small explicit reproducer at the end of the file
(``test_repro_*``).
"""

from __future__ import annotations

import datetime
import functools
import struct
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings, strategies as st
from pamqp import body as pamqp_body, commands, frame as pamqp_frame, header as pamqp_header

from amqpbroker.broker.broker import Broker
from amqpbroker.codec.frames import PROTOCOL_HEADER, build_frame
from amqpbroker.errors import ReplyCode
from amqpbroker.protocol.connection import State

from tests.helpers import FakeClient, deliveries

Basic = commands.Basic

# fuzzed input decodes to deprecated methods (basic.recover-async) now and then: pamqp warns
pytestmark = pytest.mark.filterwarnings("ignore:This command is deprecated in AMQP 0-9-1:DeprecationWarning")

FUZZ = settings(
    max_examples=200,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: it traces, slowly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)

INTERNAL_ERROR = ReplyCode.INTERNAL_ERROR


# ====================================================================== the world of one example


class Clock:
    """The vhost's clock (TTLs, x-expires, x-death times), moved by the test only."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class InstantStore:
    """Stands in for the store writer (``server/persistence.py``): takes the journal once per
    batch, as ``StoreWriter.flush`` does, and after the batch "syncs" at once, releasing what
    waited for the sync (confirms, ``tx.commit``) as ``StoreWriter._release`` does; so durable
    queues and persistent messages take their journaled paths."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.journal = broker.journal
        self.journal.enabled = True
        self.journal.on_pending = self.flush
        self.waiting: list[tuple[Any, int]] = []

    def flush(self) -> None:
        _ops, _pages, waiting = self.journal.take()
        self.waiting += waiting

    def sync(self) -> None:
        while self.waiting:
            waiting, self.waiting = self.waiting, []
            for channel, seq in waiting:
                channel.confirm_synced(seq, ok=True)
            self.broker.run_pending()


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (any order, duplicates and out-of-range points ignored)."""
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])] or [b""]


def supervisor_close(frame: Any) -> bool:
    """A close sent by the supervisor for an unexpected exception (541 "internal error (...)"),
    as opposed to a deliberate 541 (a malformed property list, as RabbitMQ answers it)."""
    return frame.reply_code == INTERNAL_ERROR and "internal error" in frame.reply_text


class ProtocolChecker:
    """What the broker may write, frame by frame, as a client would see it."""

    def __init__(self) -> None:
        self.connection_closed = False
        self.closing: set[int] = set()
        self.closes: list[tuple[int, Any]] = []

    def observe(self, frames: Sequence[tuple[int, Any]]) -> None:
        for channel, frame in frames:
            if self.connection_closed:
                assert channel == 0 and isinstance(frame, commands.Connection.CloseOk), (
                    f"frame after connection.close: {channel} {frame!r}")
                continue
            if isinstance(frame, commands.Connection.Close):
                assert channel == 0, frame
                assert not supervisor_close(frame), f"an exception escaped our code: {frame.reply_text}"
                assert frame.reply_code in ReplyCode.NAMES, frame.reply_code
                self.connection_closed = True
                self.closes.append((channel, frame))
            elif channel in self.closing:
                assert isinstance(frame, (commands.Channel.CloseOk, commands.Channel.OpenOk)), (
                    f"frame on channel {channel} after the broker closed it: {frame!r}")
                if isinstance(frame, commands.Channel.OpenOk):
                    self.closing.discard(channel)
            elif isinstance(frame, commands.Channel.Close):
                assert channel != 0, frame
                assert not supervisor_close(frame), f"an exception escaped our code: {frame.reply_text}"
                assert frame.reply_code in ReplyCode.NAMES, frame.reply_code
                self.closing.add(channel)
                self.closes.append((channel, frame))


_FRAME_HEAD = struct.Struct(">BHI")
_TABLE_SIZES = {ord(tag): size for tag, size in (("t", 1), ("b", 1), ("B", 1), ("s", 2), ("u", 2), ("I", 4),
                                                  ("i", 4), ("l", 8), ("L", 8), ("f", 4), ("d", 8), ("D", 5),
                                                  ("T", 8), ("V", 0))}


def walk_table(data: bytes, offset: int, *, array: bool = False) -> int:
    """Where the field table (or array) at ``offset`` ends; AssertionError if it is malformed.
    Structure only: keys and strings need not be UTF-8 (RabbitMQ passes such bytes through)."""
    (length,) = struct.unpack_from(">I", data, offset)
    end = offset + 4 + length
    assert end <= len(data), "table runs past its data"
    position = offset + 4
    while position < end:
        if not array:
            position += 1 + data[position]
        tag = data[position]
        position += 1
        if tag in _TABLE_SIZES:
            position += _TABLE_SIZES[tag]
        elif tag in (ord("S"), ord("x")):
            position += 4 + struct.unpack_from(">I", data, position)[0]
        elif tag in (ord("F"), ord("A")):
            position = walk_table(data, position, array=tag == ord("A"))
        else:
            raise AssertionError(f"unknown field type {tag!r}")
    assert position == end, "table entries do not add up to its length"
    return end


def walk_properties(payload: bytes) -> None:
    """A content header's property list is well formed (structure only)."""
    (flags,) = struct.unpack_from(">H", payload, 12)
    assert not flags & 0x0003, f"flags 0x{flags:04x}"
    offset = 14
    for name, flag in commands.Basic.Properties.flags.items():
        if flags & flag:
            kind = commands.Basic.Properties.amqp_type(name)
            if kind == "shortstr":
                offset += 1 + payload[offset]
            elif kind == "octet":
                offset += 1
            elif kind == "timestamp":
                offset += 8
            else:
                offset = walk_table(payload, offset)
            assert offset <= len(payload), "property list shorter than its flags say"


def decode_all(data: bytes, who: str) -> list[tuple[int, Any]]:
    """Every frame the broker wrote, decoded by pamqp; a content header pamqp refuses only
    because a string in it is not UTF-8 or a timestamp is past year 9999 (as the publisher sent
    it) is walked for structure
    instead and stands as a ``ContentHeader`` without properties."""
    frames = []
    offset = 0
    try:
        while offset < len(data):
            frame_type, channel, size = _FRAME_HEAD.unpack_from(data, offset)
            whole = data[offset:offset + size + 8]
            assert len(whole) == size + 8 and whole[-1] == 0xCE, "truncated frame or bad frame end"
            try:
                _, channel, frame = pamqp_frame.unmarshal(whole)
            except Exception as exc:  # noqa: BLE001
                # pamqp refuses strings that are not UTF-8 and timestamps beyond what datetime
                # holds; RabbitMQ passes both through as the publisher sent them
                if frame_type != 2 or not isinstance(exc.__context__ or exc.__cause__, UnicodeDecodeError) \
                        and "codec can't decode" not in str(exc) and "out of range" not in str(exc):
                    raise
                payload = whole[7:-1]
                walk_properties(payload)
                _class_id, weight, body_size = struct.unpack_from(">HHQ", payload)
                frame = pamqp_header.ContentHeader(weight, body_size)
            frames.append((channel, frame))
            offset += size + 8
    except Exception as exc:  # noqa: BLE001 - any decode failure is the finding
        raise AssertionError(f"the broker wrote frames {who} cannot decode: {exc!r}\n{data[:400]!r}") from exc
    return frames


def assert_consistent(broker: Broker) -> None:
    """The broker's bookkeeping agrees with itself: unacked counts match the channels' unacked
    deliveries, ready bytes match the ready bodies, ready messages are in arrival order, and no
    queue entry is both ready and unacked."""
    channels = [channel for session in broker.sessions for channel in session.channels.values()]
    for vhost in broker.vhosts.values():
        for queue in [*vhost.queues.values(), *vhost.reply_queues.values()]:
            unacked = [(tag, entry) for channel in channels
                       for tag, (owner, entry, _consumer, _sent) in channel.unacked.items() if owner is queue]
            assert queue.unacked_count == len(unacked), (queue, queue.unacked_count, len(unacked))
            ready = list(queue.ready)
            assert queue.message_count >= 0 and queue.paged >= 0, queue
            if not queue.paged:
                assert queue.ready_bytes == sum(len(entry[1].body) for entry in ready), queue
            if not queue.prioritised:
                seqs = [entry[0] for entry in ready]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (queue, seqs)
            ready_seqs = {entry[0] for entry in ready}
            assert not ready_seqs & {entry[0] for _, entry in unacked}, queue
    for channel in channels:
        for consumer in channel.consumers.values():
            held = sum(1 for _, _, owner, _ in channel.unacked.values() if owner is consumer)
            assert consumer.unacked == held, (consumer, held)


class Peer:
    """One client connection fed hostile input: the frames it is sent are checked as they come."""

    def __init__(self, broker: Broker, name: str, frame_max: int | None = None) -> None:
        self.name = name
        self.client = FakeClient(broker, frame_max=frame_max)
        self.checker = ProtocolChecker()
        for number in (1, 2, 3):
            self.client.open_channel(number)

    @property
    def connection(self) -> Any:
        return self.client.connection

    def output(self) -> list[tuple[int, Any]]:
        frames = decode_all(self.client.received_bytes(), self.name)
        self.client.session.output_drained()
        self.checker.observe(frames)
        return frames


class World:
    """One broker, the victim session(s) (channels 1, 2 and 3 open) and a bystander session
    that consumes its own exclusive queue (and, if asked, queues the victims publish to)."""

    def __init__(self, *, journal: bool = True, setup: bytes = b"", shared: Sequence[str] = (),
                 victims: int = 1, frame_max: int | None = None) -> None:
        self.clock = Clock()
        self.broker = Broker()
        self.broker.vhosts["/"].clock = self.clock
        self.store = InstantStore(self.broker) if journal else None
        # (``frame_max`` for the first victim only: the others take the broker's)
        self.peers = [Peer(self.broker, f"victim {index}", None if index else frame_max) for index in range(victims)]
        self.victim = self.peers[0].client
        self.checker = self.peers[0].checker
        if setup:  # declarations on the victim's channel 2, all in one batch
            self.victim.feed(setup)
            replies = self.victim.methods()
            assert all(type(frame).__name__.endswith("Ok") for _, frame in replies), replies
        bystander = self.bystander = FakeClient(self.broker)
        bystander.open_channel(1)
        self.own_queue = f"bystander-{uuid.uuid4().hex}"
        bystander.declare_queue(self.own_queue, exclusive=True)
        bystander.consume(self.own_queue, "own")
        for name in shared:  # queues the victim's messages reach: what arrives must decode
            bystander.consume(name, f"shared-{name}", no_ack=True)
        for peer in self.peers:
            peer.client.received_bytes()
        bystander.received_bytes()

    # ------------------------------------------------------------ input

    def feed_victim(self, data: bytes, cuts: Iterable[int] = (), peer: Peer | None = None) -> list[tuple[int, Any]]:
        """Feed bytes (in pieces) to a victim, end a batch after each; the frames written back
        to it, checked (and what the others were sent meanwhile, checked too)."""
        peer = peer or self.peers[0]
        connection = peer.connection
        for piece in pieces(data, cuts):
            connection.receive_data(piece)
            self.broker.run_pending()
            self.sync()
        frames = peer.output()
        self.victim_output()
        return frames

    def sync(self) -> None:
        if self.store is not None:
            self.store.sync()

    def victim_output(self) -> None:
        for peer in self.peers:
            peer.output()

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.broker.tick(self.clock.now)
        self.sync()
        self.victim_output()

    # ------------------------------------------------------------ checks

    def check_victim_state(self) -> None:
        for peer in self.peers:
            state = peer.connection.state
            if peer.checker.connection_closed:
                assert state in (State.CLOSING, State.CLOSED), state
            if state is State.CLOSING:
                assert peer.checker.connection_closed, "CLOSING without a connection.close sent"

    def check_healthy_channel(self) -> None:
        """Channel 2 of each victim whose connection is still open works as before."""
        for peer in self.peers:
            client = peer.client
            if client.connection.state is not State.OPEN:
                continue
            machine = client.connection.channels.get(2)
            assert machine is not None and not machine.closing, "channel 2 was never touched, yet it is gone"
            name = f"healthy-{uuid.uuid4().hex}"
            body = uuid.uuid4().bytes
            data = (pamqp_frame.marshal(commands.Queue.Declare(queue=name, auto_delete=False), 2)
                    + _publish(2, "", name, body, None, False)
                    + pamqp_frame.marshal(Basic.Get(queue=name, no_ack=True), 2))
            frames = [(channel, frame) for channel, frame in self.feed_victim(data, peer=peer) if channel == 2]
            kinds = [type(frame) for _, frame in frames if not isinstance(
                frame, (pamqp_header.ContentHeader, pamqp_body.ContentBody))]
            assert kinds == [commands.Queue.DeclareOk, Basic.GetOk], frames
            assert [delivery.body for delivery in deliveries(frames)] == [body]

    def check_bystander(self) -> None:
        """The other connection is open, was sent only deliveries, and still publishes and
        consumes."""
        bystander = self.bystander
        assert bystander.connection.state is State.OPEN
        assert bystander.session in self.broker.sessions
        before = decode_all(bystander.received_bytes(), "the bystander")
        unexpected = [frame for _, frame in before if not isinstance(
            frame, (Basic.Deliver, pamqp_header.ContentHeader, pamqp_body.ContentBody))]
        assert unexpected == [], f"the bystander was sent {unexpected!r}"
        body = uuid.uuid4().bytes
        bystander.publish(1, "", self.own_queue, body)
        frames = decode_all(bystander.received_bytes(), "the bystander")
        own = [delivery for delivery in deliveries(frames) if delivery.method.consumer_tag == "own"]
        assert [delivery.body for delivery in own] == [body], frames
        bystander.ack(own[0].tag)
        assert decode_all(bystander.received_bytes(), "the bystander") == []

    def check_all(self, *, healthy: bool = True) -> None:
        self.victim_output()
        self.check_victim_state()
        assert_consistent(self.broker)
        if healthy:
            self.check_healthy_channel()
        self.check_bystander()
        assert_consistent(self.broker)


def cut_points(length: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max(length, 0)), max_size=12) | st.just(list(range(1, length)))


def both_ways(data: st.DataObject, stream: bytes) -> list[tuple[str, list[int]]]:
    """Feed modes for one stream: whole, then cut at points drawn for it."""
    return [("whole", []), ("split", data.draw(cut_points(len(stream)), label="cuts"))]


# ====================================================================== raw field strategies


def u8(n: int) -> bytes:
    return bytes((n & 0xFF,))


def u32(n: int) -> bytes:
    return struct.pack(">I", n & 0xFFFFFFFF)


KNOWN_KEYS = [
    "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-length",
    "x-max-length-bytes", "x-overflow", "x-expires", "x-max-priority", "x-queue-type",
    "x-delivery-limit", "x-single-active-consumer", "x-match", "x-priority", "x-delayed-type",
    "x-delay", "alternate-exchange", "capabilities", "product", "x-death", "x-cancel-on-ha-failover",
    "consumer_cancel_notify", "connection.blocked", "LOGIN", "PASSWORD", "count", "reason", "queue",
    "connection_name",
]
KNOWN_TAGS = b"tbBsuIilLfdDSATFVx\x00"
FIXED_SIZES = {b"t": 1, b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"l": 8, b"L": 8,
               b"f": 4, b"d": 8, b"D": 5, b"T": 8, b"V": 0, b"\x00": 0}

NAMES = ["", "q", "vq", "c-plain", "d-a", "d-b", "d-dl", "amq.direct", "amq.fanout", "amq.topic",
         "amq.headers", "amq.match", "amq.rabbitmq.trace", "amq.rabbitmq.reply-to", "amq.gen-x",
         "direct", "fanout", "topic", "headers", "x-delayed-message", "x-unknown", "quorum",
         "PLAIN", "AMQPLAIN", "en_US", "/", "guest", "0", "1000", "-1", "bogus"]

invalid_utf8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"a\xfe\xff"])


@st.composite
def raw_shortstr(draw: st.DrawFn) -> bytes:
    """A shortstr: a known name, any bytes (non-UTF-8 too), long multi-byte text, or a length
    that promises more than follows."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        data = draw(st.sampled_from(NAMES)).encode()
    elif kind == 1:
        data = draw(st.binary(max_size=40))
    elif kind == 2:
        data = draw(invalid_utf8) + draw(st.binary(max_size=8))
    elif kind == 3:  # many multi-byte characters: the name fits, a reply text quoting it may not
        data = (draw(st.sampled_from(["é", "€", "\U0001f600", "x"])) * 255).encode()[:draw(st.integers(100, 255))]
        data = data.decode("utf-8", "ignore").encode()
    elif kind == 4:
        data = draw(st.text(max_size=30)).encode()[:255]
    else:  # truncated: the length says more than there is
        data = draw(st.binary(max_size=8))
        return u8(len(data) + draw(st.integers(1, 200))) + data
    return u8(len(data)) + data


@st.composite
def raw_longstr(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        data = draw(st.sampled_from([b"\x00guest\x00guest", b"guest", b"", b"\x00guest\x00bad"]))
    elif kind == 1:
        data = draw(st.binary(max_size=40))
    elif kind == 2:
        data = draw(invalid_utf8)
    elif kind == 3:  # AMQPLAIN-style: a table body without its length
        table = draw(raw_table())
        data = table[4:]
    else:
        data = draw(st.binary(max_size=8))
        return u32(len(data) + draw(st.integers(1, 1 << 31))) + data
    return u32(len(data)) + data


@st.composite
def table_key(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind <= 1:
        data = draw(st.sampled_from(KNOWN_KEYS)).encode()
    elif kind == 2:
        data = draw(st.binary(max_size=6))
    else:
        data = draw(invalid_utf8)
    return u8(len(data)) + data


@st.composite
def scalar_value(draw: st.DrawFn) -> bytes:
    """One tagged field value that is not a container: fixed sizes, strings, unknown tags,
    values cut short."""
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        tag = draw(st.sampled_from(list(FIXED_SIZES)))
        size = FIXED_SIZES[tag]
        return tag + draw(st.binary(min_size=size, max_size=size))
    if kind == 4:
        return b"t" + draw(st.sampled_from([b"\x00", b"\x01", b"\x02"]))
    if kind == 5:
        return b"I" + struct.pack(">i", draw(st.sampled_from([0, 1, -1, 1000, 2**31 - 1, -2**31])))
    if kind == 6:
        text = draw(st.sampled_from([b"", b"all", b"any", b"drop-head", b"reject-publish-dlx", b"quorum",
                                     b"classic", b"lazy", b"direct", b"c-dlx", b"amq.fanout", b"1000"])
                    | st.binary(max_size=12) | invalid_utf8)
        return draw(st.sampled_from([b"S", b"x"])) + u32(len(text)) + text
    if kind == 7:  # a tag no table may hold
        tag = draw(st.integers(0, 255).filter(lambda t: bytes((t,)) not in KNOWN_TAGS))
        return u8(tag) + draw(st.binary(max_size=6))
    if kind == 8:  # cut short
        tag = draw(st.sampled_from([b"I", b"l", b"d", b"D", b"T", b"S", b"x", b"A", b"F"]))
        return tag + draw(st.binary(max_size=2))
    return b"d" + struct.pack(">d", draw(st.sampled_from([float("nan"), float("inf"), -0.0, 1.5])))


def _container(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    array = st.lists(children, max_size=4).map(lambda values: b"A" + u32(sum(map(len, values))) + b"".join(values))
    table = st.lists(st.tuples(table_key(), children), max_size=4).map(
        lambda items: b"F" + _table_bytes(b"".join(key + value for key, value in items)))
    return array | table


def _table_bytes(entries: bytes) -> bytes:
    return u32(len(entries)) + entries


field_value = st.recursive(scalar_value(), _container, max_leaves=12)


@st.composite
def deep_value(draw: st.DrawFn) -> bytes:
    """A table or array nested hundreds to thousands deep (fits in one frame)."""
    depth = draw(st.sampled_from([50, 101, 150, 500, 1200]))
    tag = draw(st.sampled_from([b"F", b"A"]))
    value = b"V"
    for _ in range(depth):
        if tag == b"F":
            value = b"F" + _table_bytes(b"\x01k" + value)
        else:
            value = b"A" + u32(len(value)) + value
    return value


@st.composite
def raw_table(draw: st.DrawFn) -> bytes:
    """A field table, often malformed: wrong length, truncated, arbitrary tags, deep nesting."""
    items = draw(st.lists(st.tuples(table_key(), field_value | deep_value()), max_size=5))
    entries = b"".join(key + value for key, value in items)
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        return _table_bytes(entries)
    if kind == 3:  # the length is off
        return u32(max(len(entries) + draw(st.integers(-6, 6)), 0)) + entries
    if kind == 4:  # truncated
        whole = _table_bytes(entries)
        return whole[:draw(st.integers(0, len(whole)))]
    return u32(draw(st.integers(0, (1 << 32) - 1))) + entries


def _field_strategy(amqp_type: str) -> st.SearchStrategy[bytes]:
    if amqp_type == "octet":
        return st.binary(min_size=1, max_size=1)
    if amqp_type == "short":
        return st.sampled_from([b"\x00\x00", b"\x00\x01"]) | st.binary(min_size=2, max_size=2)
    if amqp_type == "long":
        return st.sampled_from([u32(0), u32(1), u32(4096), u32(131072)]) | st.binary(min_size=4, max_size=4)
    if amqp_type in ("longlong", "timestamp"):
        return (st.integers(0, 8).map(lambda n: struct.pack(">Q", n))
                | st.binary(min_size=8, max_size=8))
    if amqp_type == "shortstr":
        return raw_shortstr()
    if amqp_type == "longstr":
        return raw_longstr()
    if amqp_type == "table":
        return raw_table()
    raise AssertionError(amqp_type)


def fields_of(method_class: type) -> st.SearchStrategy[bytes]:
    """Arguments for a pamqp method class, field by field (bits packed), each fuzzed."""
    parts: list[st.SearchStrategy[bytes]] = []
    in_bits = False
    for name in method_class.__slots__:
        amqp_type = method_class.amqp_type(name)
        if amqp_type == "bit":
            if not in_bits:
                parts.append(st.binary(min_size=1, max_size=1))
                in_bits = True
            continue
        in_bits = False
        parts.append(_field_strategy(amqp_type))
    return st.tuples(*parts).map(b"".join) if parts else st.just(b"")


CLIENT_METHODS = [cls for cls in commands.INDEX_MAPPING.values()]
INDICES = sorted(commands.INDEX_MAPPING)


@st.composite
def method_payload(draw: st.DrawFn, methods: Sequence[type] = CLIENT_METHODS) -> bytes:
    """A method frame payload: random ids, a known method with random bytes, or a known method
    with each argument fuzzed; sometimes cut short or with bytes trailing."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        payload = struct.pack(">HH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))) + draw(
            st.binary(max_size=24))
    elif kind == 1:
        payload = u32(draw(st.sampled_from(INDICES))) + draw(st.binary(max_size=60))
    else:
        method_class = draw(st.sampled_from(list(methods)))
        payload = u32(method_class.index) + draw(fields_of(method_class))
    mutation = draw(st.integers(0, 7))
    if mutation == 0:
        payload = payload[:draw(st.integers(0, len(payload)))]
    elif mutation == 1:
        payload += draw(st.binary(min_size=1, max_size=8))
    return payload


# ====================================================================== (a) arbitrary byte streams


@st.composite
def frameish(draw: st.DrawFn) -> bytes:
    """Something close to a frame: a frame type, a channel, a size that may lie, a payload and
    an end octet that may be wrong."""
    frame_type = draw(st.sampled_from([1, 2, 3, 8]) | st.integers(0, 255))
    channel = draw(st.sampled_from([0, 1, 2, 3, 9]) | st.integers(0, 0xFFFF))
    payload = draw(st.binary(max_size=48) | method_payload())
    size = len(payload) + draw(st.sampled_from([0, 0, 0, 1, -1]) | st.integers(-8, 8))
    size = size if size >= 0 else draw(st.sampled_from([0, 0xFFFFFFFF, 131072, 4096, 4097]))
    end = draw(st.sampled_from([b"\xce", b"\xce", b"\x00"]) | st.binary(max_size=2))
    return struct.pack(">BHI", frame_type, channel, size) + payload + end


byte_streams = (
    st.binary(max_size=2048)
    | st.lists(frameish() | st.binary(max_size=16), min_size=1, max_size=12).map(b"".join)
)


@FUZZ
@given(stream=byte_streams, data=st.data())
def test_arbitrary_bytes_after_the_handshake(stream: bytes, data: st.DataObject) -> None:
    for mode, cuts in both_ways(data, stream):
        note(f"mode {mode}")
        world = World()
        world.feed_victim(stream, cuts)
        world.tick(10)
        # a partial frame may be left in the victim's buffer: channel 2 cannot be checked
        world.check_all(healthy=False)


# ====================================================================== (b) valid frames, bad methods


@st.composite
def method_frames(draw: st.DrawFn) -> bytes:
    """Structurally valid frames: fuzzed method payloads on channel 1 (mostly), 0, 3, or an
    unopened channel; now and then a heartbeat or a whole publish."""
    frames = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 9))
        channel = draw(st.sampled_from([1, 1, 1, 3, 0, 7]))
        if kind <= 7:
            frames.append(build_frame(1, channel, draw(method_payload())))
        elif kind == 8:
            frames.append(build_frame(8, 0, b""))
        else:
            frames.append(_publish(channel, "", "vq", b"payload", None, False))
    return b"".join(frames)


@functools.cache
def _declare_vq() -> bytes:
    return _setup(commands.Queue.Declare(queue="vq"),
                  commands.Queue.Declare(queue="d-dl", arguments={"x-message-ttl": 100,
                                                                  "x-dead-letter-exchange": "amq.fanout"}))


@FUZZ
@given(stream=method_frames(), data=st.data())
def test_valid_frames_with_arbitrary_method_payloads(stream: bytes, data: st.DataObject) -> None:
    for mode, cuts in both_ways(data, stream):
        note(f"mode {mode}")
        world = World(setup=_declare_vq())
        world.feed_victim(stream, cuts)
        world.tick(10)
        world.check_all()


HANDSHAKE_METHODS = [commands.Connection.StartOk, commands.Connection.TuneOk, commands.Connection.Open,
                     commands.Connection.Close, commands.Connection.SecureOk]


@st.composite
def handshakes(draw: st.DrawFn) -> bytes:
    """A protocol header, then start-ok, tune-ok and open, each either valid or fuzzed."""
    start_ok = commands.Connection.StartOk(client_properties={"product": "fuzz"}, mechanism="PLAIN",
                                           response="\0guest\0guest", locale="en_US")
    valid = [
        pamqp_frame.marshal(start_ok, 0),
        pamqp_frame.marshal(commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=0), 0),
        pamqp_frame.marshal(commands.Connection.Open(virtual_host="/"), 0),
    ]
    parts = [PROTOCOL_HEADER]
    for index, good in enumerate(valid):
        if draw(st.booleans()):
            parts.append(good)
        else:
            method = HANDSHAKE_METHODS[index] if draw(st.integers(0, 3)) else draw(st.sampled_from(CLIENT_METHODS))
            payload = u32(method.index) + draw(fields_of(method))
            parts.append(build_frame(1, draw(st.sampled_from([0, 0, 0, 1])), payload))
    parts.append(draw(st.just(b"") | method_frames()))
    return b"".join(parts)


@FUZZ
@given(stream=handshakes(), data=st.data())
def test_fuzzed_handshakes(stream: bytes, data: st.DataObject) -> None:
    for mode, cuts in both_ways(data, stream):
        note(f"mode {mode}")
        world = World()
        newcomer = FakeClient(world.broker, handshake=False)
        connection = newcomer.connection
        checker = ProtocolChecker()
        for piece in pieces(stream, cuts):
            connection.receive_data(piece)
            world.broker.run_pending()
            world.sync()
        checker.observe(decode_all(newcomer.received_bytes(), "the newcomer"))
        if checker.connection_closed:
            assert connection.state in (State.CLOSING, State.CLOSED)
        if connection.state is State.OPEN:
            live_with_others(world, newcomer, checker)
        world.tick(10)
        world.check_all()


def live_with_others(world: World, newcomer: FakeClient, checker: ProtocolChecker) -> None:
    """A connection that got in with fuzzed client properties consumes and publishes; then the
    other sessions do what reaches into it: the bystander deletes the queue it consumes (a
    consumer cancel notification) and the memory alarm blocks publishers."""
    queue = f"newcomer-{uuid.uuid4().hex}"
    newcomer.feed(_frames(commands.Channel.Open(), commands.Queue.Declare(queue=queue),
                          Basic.Consume(queue=queue, consumer_tag="n"), channel=1)
                  + _publish(1, "", queue, b"hello", None, False))
    checker.observe(decode_all(newcomer.received_bytes(), "the newcomer"))
    world.bystander.send(commands.Queue.Delete(queue=queue), 1)
    frames = decode_all(world.bystander.received_bytes(), "the bystander")
    assert [type(frame) for _, frame in frames] == [commands.Queue.DeleteOk], frames
    world.broker.set_memory_alarm(True)
    world.broker.set_memory_alarm(False)
    checker.observe(decode_all(newcomer.received_bytes(), "the newcomer"))


# ====================================================================== (c) content headers and bodies

PROPERTY_FLAGS = commands.Basic.Properties.flags
SHARED = ["c-plain", "c-prio", "c-durable", "c-headers", "c-quorum", "c-dead"]


def _setup(*methods: Any) -> bytes:
    """Declarations for the victim's channel 2, as one piece of input."""
    return _frames(*methods, channel=2)


@functools.cache
def _content_setup() -> bytes:
    """Queues that decode properties in different places: priority, persistence, headers
    routing, quorum delivery counts, TTL expiry with dead-lettering, length limits, a delayed
    exchange."""
    Q, E = commands.Queue, commands.Exchange
    methods: list[Any] = [
        Q.Declare(queue="c-plain"),
        Q.Declare(queue="c-prio", arguments={"x-max-priority": 5}),
        Q.Declare(queue="c-durable", durable=True),
        Q.Declare(queue="c-headers"),
        Q.Declare(queue="c-quorum", durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 2}),
        Q.Declare(queue="c-ttl", durable=True, arguments={"x-message-ttl": 1000, "x-dead-letter-exchange": "c-dlx"}),
        Q.Declare(queue="c-maxlen", arguments={"x-max-length": 1, "x-dead-letter-exchange": "c-dlx"}),
        Q.Declare(queue="c-dead"),
    ]
    for name, kind in (("c-dlx", "fanout"), ("c-fan", "fanout"), ("c-hdr", "headers"),
                       ("c-delayed", "x-delayed-message")):
        arguments = {"x-delayed-type": "fanout"} if kind == "x-delayed-message" else {}
        methods.append(E.Declare(exchange=name, exchange_type=kind, durable=True, arguments=arguments))
    binds = [("c-dead", "c-dlx", {}), ("c-headers", "c-hdr", {"x-match": "any", "k": "v"}),
             ("c-headers", "amq.headers", {"x-match": "all"}), ("c-plain", "c-delayed", {})]
    binds += [(queue, "c-fan", {}) for queue in ("c-plain", "c-prio", "c-durable", "c-quorum", "c-ttl", "c-maxlen")]
    methods += [Q.Bind(queue=queue, exchange=exchange, arguments=arguments) for queue, exchange, arguments in binds]
    methods.append(E.Bind(destination="c-hdr", source="c-fan"))
    return _setup(*methods)


TARGETS = [("c-fan", ""), ("", "c-plain"), ("", "c-prio"), ("", "c-durable"), ("", "c-quorum"),
           ("", "c-ttl"), ("", "c-maxlen"), ("amq.headers", ""), ("c-hdr", ""), ("c-delayed", ""),
           ("", "amq.rabbitmq.reply-to")]

valid_properties = st.builds(
    commands.Basic.Properties,
    content_type=st.none() | st.sampled_from(["text/plain", "application/json"]),
    content_encoding=st.none() | st.just("gzip"),
    headers=st.none() | st.dictionaries(st.sampled_from(["k", "x-delay", "x-death", "x-match", "a"]),
                                        st.none() | st.integers(-5, 5000) | st.text(max_size=5) | st.booleans()
                                        | st.lists(st.integers(0, 3), max_size=2)
                                        | st.dictionaries(st.sampled_from(["queue", "reason", "count"]),
                                                          st.text(max_size=4) | st.integers(0, 3), max_size=3),
                                        max_size=4),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | st.just("c"),
    reply_to=st.none() | st.sampled_from(["r", "amq.rabbitmq.reply-to"]),
    expiration=st.none() | st.sampled_from(["0", "1", "500", "100000", "-1", "1.5", "bogus", "99999999999999999"]),
    message_id=st.none() | st.just("m"),
    timestamp=st.none() | st.just(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)),
    message_type=st.none() | st.just("t"),
    user_id=st.none() | st.sampled_from(["guest", "mallory"]),
    app_id=st.none() | st.just("a"),
)


@st.composite
def property_bytes(draw: st.DrawFn) -> bytes:
    """Property flags and property bytes: valid (half the time, so that routing, TTLs and
    dead-lettering get to run), valid with flags flipped (promising absent fields or hiding
    present ones), headers with a fuzzed table, continuation flag words, or noise."""
    kind = draw(st.sampled_from(["valid"] * 5 + ["flipped", "headers", "headers+octets", "continued", "noise"]))
    if kind in ("valid", "flipped"):
        encoded = pamqp_header.ContentHeader(0, 0, draw(valid_properties)).marshal()[12:]
        if kind == "flipped":
            flags = struct.unpack_from(">H", encoded)[0] ^ draw(st.integers(1, 0xFFFF))
            encoded = struct.pack(">H", flags) + encoded[2:]
        return encoded
    if kind == "headers":
        return struct.pack(">H", PROPERTY_FLAGS["headers"]) + draw(raw_table())
    if kind == "headers+octets":  # delivery mode and priority after the table: raw readers must skip it
        flags = PROPERTY_FLAGS["headers"] | PROPERTY_FLAGS["delivery_mode"] | PROPERTY_FLAGS["priority"]
        return struct.pack(">H", flags) + draw(raw_table()) + draw(st.binary(min_size=0, max_size=2))
    if kind == "continued":
        words = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=3))
        words = [word | 1 for word in words[:-1]] + [words[-1]]
        return b"".join(struct.pack(">H", word) for word in words) + draw(st.binary(max_size=24))
    return struct.pack(">H", draw(st.integers(0, 0xFFFF))) + draw(st.binary(max_size=40))


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    """One to four publishes on channel 1 with fuzzed content headers, then their bodies (in
    pieces adding up to the size, or not)."""
    frames = []
    for _ in range(draw(st.integers(1, 4))):
        exchange, key = draw(st.sampled_from(TARGETS))
        publish = Basic.Publish(exchange=exchange, routing_key=key, mandatory=draw(st.booleans()))
        frames.append(pamqp_frame.marshal(publish, 1))
        body = draw(st.binary(max_size=24))
        class_id = draw(st.sampled_from([60] * 8 + [50, 0]))
        size = len(body) if draw(st.integers(0, 5)) else draw(st.sampled_from([0, 1, 2**63, 2**64 - 1, 2**27 + 1]))
        header = struct.pack(">HHQ", class_id, draw(st.sampled_from([0, 0, 7])), size) + draw(property_bytes())
        if draw(st.integers(0, 19)) == 0:
            header = header[:draw(st.integers(0, len(header)))]
        frames.append(build_frame(2, 1, header))
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=3))
        for chunk in pieces(body, cuts):
            if chunk:
                frames.append(build_frame(3, 1, chunk))
    return b"".join(frames)


@FUZZ
@given(stream=contents(), data=st.data())
def test_content_headers_with_arbitrary_properties(stream: bytes, data: st.DataObject) -> None:
    for mode, cuts in both_ways(data, stream):
        note(f"mode {mode}")
        world = World(setup=_content_setup(), shared=SHARED)
        world.feed_victim(stream, cuts)
        world.tick(0.5)
        world.tick(10)  # TTLs run out: c-ttl dead-letters to c-dead, delayed messages are due
        world.check_all()


# ====================================================================== (d) sequences of valid methods

# Queues and exchanges with one declaration each (so redeclaring them is fine and sequences go
# deep), and one of each (``d-b``, ``d-r``) declared with random arguments every time.
QUEUE_DECLARATIONS: dict[str, dict[str, Any]] = {
    "d-a": {"arguments": {"x-message-ttl": 50, "x-dead-letter-exchange": "d-dlx"}},
    "d-dl": {},
    "d-prio": {"arguments": {"x-max-priority": 5}},
    "d-quorum": {"durable": True, "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 1,
                                                "x-dead-letter-exchange": "d-dlx"}},
    "d-len": {"durable": True, "arguments": {"x-max-length": 2, "x-overflow": "reject-publish-dlx",
                                             "x-dead-letter-exchange": "d-dlx"}},
    "d-sac": {"arguments": {"x-single-active-consumer": True, "x-expires": 3000}},
}
EXCHANGE_DECLARATIONS: dict[str, dict[str, Any]] = {
    "d-dlx": {"exchange_type": "fanout"},
    "d-x": {"exchange_type": "direct", "auto_delete": True},
    "d-t": {"exchange_type": "topic", "durable": True, "arguments": {"alternate-exchange": "d-dlx"}},
    "d-h": {"exchange_type": "headers"},
    "d-delay": {"exchange_type": "x-delayed-message", "arguments": {"x-delayed-type": "direct"}},
}
QUEUES = [*QUEUE_DECLARATIONS, "d-b"]
EXCHANGES = [*EXCHANGE_DECLARATIONS, "d-r", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", ""]
KEYS = ["", "k", "k.a", "#", "*.a", *QUEUES]
OP_CHANNELS = [1, 3]

queue_arguments = st.fixed_dictionaries({}, optional={
    "x-message-ttl": st.sampled_from([0, 1, 50, 1000, 60000]),
    "x-dead-letter-exchange": st.sampled_from(["d-dlx", "", "amq.fanout", "missing"]),
    "x-dead-letter-routing-key": st.sampled_from(QUEUES),
    "x-max-length": st.integers(0, 3),
    "x-max-length-bytes": st.integers(0, 40),
    "x-overflow": st.sampled_from(["drop-head", "reject-publish", "reject-publish-dlx"]),
    "x-expires": st.sampled_from([1, 100, 5000]),
    "x-max-priority": st.integers(0, 10),
    "x-queue-type": st.sampled_from(["classic", "quorum"]),
    "x-delivery-limit": st.integers(0, 3),
    "x-single-active-consumer": st.booleans(),
})

publish_properties = st.builds(
    commands.Basic.Properties,
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 12),
    expiration=st.none() | st.sampled_from(["0", "1", "40", "2000", "bogus"]),
    headers=st.none() | st.fixed_dictionaries({}, optional={"k": st.sampled_from(["v", "w"]),
                                                            "x-delay": st.sampled_from([0, 10, 2000, -5])}),
    reply_to=st.none() | st.just("amq.rabbitmq.reply-to"),
    user_id=st.none() | st.sampled_from(["guest", "mallory"]),
)


def _frames(*methods: Any, channel: int) -> bytes:
    return b"".join(pamqp_frame.marshal(method, channel) for method in methods)


BODY_FRAME = 4096 - 8  # the largest body frame payload a connection with the smallest frame_max takes


def _publish(channel: int, exchange: str, key: str, body: bytes, properties: Any, mandatory: bool) -> bytes:
    return (pamqp_frame.marshal(Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory), channel)
            + pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), properties), channel)
            + b"".join(pamqp_frame.marshal(pamqp_body.ContentBody(body[start:start + BODY_FRAME]), channel)
                       for start in range(0, len(body), BODY_FRAME)))


@st.composite
def operation(draw: st.DrawFn) -> tuple[str, bytes] | tuple[str, float]:
    """One client operation as its frames, on channel 1 or 3; or a step of time."""
    channel = draw(st.sampled_from(OP_CHANNELS))
    queue = draw(st.sampled_from(QUEUES))
    kind = draw(st.sampled_from([
        "declare", "declare", "exchange", "exchange", "bind", "bind", "unbind", "xbind", "publish", "publish", "publish",
        "publish", "get", "consume", "cancel", "qos", "ack", "ack", "nack", "reject", "recover",
        "purge", "delete", "xdelete", "confirm", "tx", "commit", "rollback", "close", "tick", "tick",
    ]))
    C, Q, E, B, T = commands.Channel, commands.Queue, commands.Exchange, commands.Basic, commands.Tx
    if kind == "tick":
        return "tick", draw(st.sampled_from([0.0, 0.0005, 0.002, 0.06, 1.5, 6.0, 100.0]))
    if kind == "declare":
        if queue in QUEUE_DECLARATIONS:
            method = Q.Declare(queue=queue, **QUEUE_DECLARATIONS[queue])
        else:
            method = Q.Declare(queue=queue, durable=draw(st.booleans()), exclusive=draw(st.booleans()),
                               auto_delete=draw(st.booleans()), arguments=draw(queue_arguments))
        data = _frames(method, channel=channel)
    elif kind == "exchange":
        name = draw(st.sampled_from(list(EXCHANGE_DECLARATIONS) + ["d-r", "d-r"]))
        if name in EXCHANGE_DECLARATIONS:
            method = E.Declare(exchange=name, **EXCHANGE_DECLARATIONS[name])
        else:
            exchange_type = draw(st.sampled_from(["direct", "fanout", "topic", "headers", "x-delayed-message"]))
            arguments = {"x-delayed-type": "direct"} if exchange_type == "x-delayed-message" else {}
            if draw(st.booleans()):
                arguments["alternate-exchange"] = draw(st.sampled_from(["d-x", "d-dlx", "d-r", "amq.fanout"]))
            method = E.Declare(exchange=name, exchange_type=exchange_type, durable=draw(st.booleans()),
                               auto_delete=draw(st.booleans()), arguments=arguments)
        data = _frames(method, channel=channel)
    elif kind in ("bind", "unbind"):
        arguments = draw(st.sampled_from([{}, {"x-match": "any", "k": "v"}, {"x-match": "all", "k": "w"}]))
        cls = Q.Bind if kind == "bind" else Q.Unbind
        data = _frames(cls(queue=queue, exchange=draw(st.sampled_from(EXCHANGES[:-1])),
                           routing_key=draw(st.sampled_from(KEYS)), arguments=arguments), channel=channel)
    elif kind == "xbind":
        data = _frames(E.Bind(destination=draw(st.sampled_from(EXCHANGES[:-1])),
                              source=draw(st.sampled_from(EXCHANGES[:-1])),
                              routing_key=draw(st.sampled_from(KEYS))), channel=channel)
    elif kind == "publish":
        body = draw(st.binary(max_size=12) | st.integers(4000, 9000).map(lambda size: b"b" * size))
        data = _publish(channel, draw(st.sampled_from(EXCHANGES)), draw(st.sampled_from(KEYS)),
                        body, draw(publish_properties), draw(st.booleans()))
    elif kind == "get":
        data = _frames(B.Get(queue=queue, no_ack=draw(st.booleans())), channel=channel)
    elif kind == "consume":
        target = queue if draw(st.integers(0, 5)) else "amq.rabbitmq.reply-to"
        data = _frames(B.Consume(queue=target, consumer_tag=draw(st.sampled_from(["c1", "c2", ""])),
                                 no_ack=draw(st.booleans()), exclusive=draw(st.booleans()),
                                 arguments=draw(st.sampled_from([{}, {"x-priority": 5}, {"x-priority": -1}]))),
                       channel=channel)
    elif kind == "cancel":
        data = _frames(B.Cancel(consumer_tag=draw(st.sampled_from(["c1", "c2"]))), channel=channel)
    elif kind == "qos":
        data = _frames(B.Qos(prefetch_count=draw(st.integers(0, 3)), global_=draw(st.booleans())), channel=channel)
    elif kind in ("ack", "nack", "reject"):
        tag = draw(st.integers(0, 8))
        if kind == "ack":
            method = B.Ack(delivery_tag=tag, multiple=draw(st.booleans()))
        elif kind == "nack":
            method = B.Nack(delivery_tag=tag, multiple=draw(st.booleans()), requeue=draw(st.booleans()))
        else:
            method = B.Reject(delivery_tag=tag, requeue=draw(st.booleans()))
        data = _frames(method, channel=channel)
    elif kind == "recover":
        data = _frames(B.Recover(requeue=True), channel=channel)
    elif kind == "purge":
        data = _frames(Q.Purge(queue=queue), channel=channel)
    elif kind == "delete":
        data = _frames(Q.Delete(queue=queue, if_unused=draw(st.booleans()), if_empty=draw(st.booleans())),
                       channel=channel)
    elif kind == "xdelete":
        data = _frames(E.Delete(exchange=draw(st.sampled_from([*EXCHANGE_DECLARATIONS, "d-r"]))), channel=channel)
    elif kind == "confirm":
        data = _frames(commands.Confirm.Select(), channel=channel)
    elif kind == "tx":
        data = _frames(T.Select(), channel=channel)
    elif kind == "commit":
        data = _frames(T.Commit(), channel=channel)
    elif kind == "rollback":
        data = _frames(T.Rollback(), channel=channel)
    else:  # the client closes the channel and opens it again
        data = _frames(C.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), C.Open(),
                       channel=channel)
    return kind, data


Script = list[tuple[int, list[tuple[str, Any]]]]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """Batches of operations, each for one of two connections (each batch is one piece of
    input, or cut at random points)."""
    batch = st.lists(operation(), min_size=1, max_size=6)
    return draw(st.lists(st.tuples(st.sampled_from([0, 0, 1]), batch), min_size=1, max_size=8))


@functools.cache
def _declare_d() -> bytes:
    Q = commands.Queue
    return _setup(*(commands.Exchange.Declare(exchange=name, **declaration)
                    for name, declaration in EXCHANGE_DECLARATIONS.items()),
                  *(Q.Declare(queue=name, **declaration) for name, declaration in QUEUE_DECLARATIONS.items()),
                  Q.Bind(queue="d-dl", exchange="d-dlx"), Q.Bind(queue="d-a", exchange="d-x", routing_key="k"),
                  Q.Bind(queue="d-prio", exchange="d-t", routing_key="k.*"),
                  Q.Bind(queue="d-quorum", exchange="d-h", arguments={"x-match": "any", "k": "v"}),
                  Q.Bind(queue="d-len", exchange="d-delay", routing_key="k"))


def run_script(world: World, script: Script, data: st.DataObject | None) -> None:
    for who, batch in script:
        peer = world.peers[who]
        if peer.connection.state is State.CLOSED:
            continue
        stream = b"".join(item for kind, item in batch if kind != "tick")
        cuts = data.draw(cut_points(len(stream)), label="cuts") if data is not None else []
        world.feed_victim(stream, cuts, peer=peer)
        for kind, item in batch:
            if kind == "tick":
                world.tick(item)
        if peer.checker.connection_closed:
            world.feed_victim(pamqp_frame.marshal(commands.Connection.CloseOk(), 0), peer=peer)
            assert peer.connection.state is State.CLOSED
            continue
        # the client's part of the protocol: answer the broker's channel.close, open again
        for channel in sorted(peer.checker.closing):
            reopened = world.feed_victim(_frames(commands.Channel.CloseOk(), commands.Channel.Open(),
                                                 channel=channel), peer=peer)
            assert [type(frame) for _, frame in reopened] == [commands.Channel.OpenOk], reopened
        assert_consistent(world.broker)


@FUZZ
@given(script=scripts(), data=st.data())
def test_sequences_of_valid_methods(script: Script, data: st.DataObject) -> None:
    for mode in ("whole", "split"):
        note(f"mode {mode}")
        # two connections sharing the queues; the first with the smallest frame_max there is
        world = World(setup=_declare_d(), victims=2, frame_max=4096)
        run_script(world, script, data if mode == "split" else None)
        world.tick(200)  # every TTL is over: expiry and dead-lettering ran
        world.check_all()


# ====================================================================== reproducers of bugs found


def _raw_method(channel: int, class_id: int, method_id: int, *fields: bytes) -> bytes:
    return build_frame(1, channel, struct.pack(">HH", class_id, method_id) + b"".join(fields))


def _shortstr(data: bytes) -> bytes:
    return u8(len(data)) + data


def test_repro_reply_text_of_multibyte_names_fits_a_shortstr():
    """A 404 quoting a name of 127 two-byte characters (254 bytes): the reply text must be cut
    to 255 *bytes*, or encoding channel.close raises out of receive_data."""
    world = World()
    name = ("é" * 127).encode()
    world.feed_victim(_raw_method(1, 50, 10, b"\x00\x00", _shortstr(name), b"\x01", u32(0)))  # passive declare
    (close,) = [frame for _, frame in world.checker.closes]
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 404
    world.check_all()


def test_repro_a_content_header_promising_absent_properties_is_refused_at_the_door():
    """Flags say content-type is there, no bytes follow: the broker must refuse it when it
    arrives (it cannot be delivered), not hand it to another session that cannot decode it."""
    world = World(setup=_setup(commands.Queue.Declare(queue="c-plain")), shared=["c-plain"])
    header = struct.pack(">HHQH", 60, 0, 1, PROPERTY_FLAGS["content_type"])
    world.feed_victim(pamqp_frame.marshal(Basic.Publish(exchange="", routing_key="c-plain"), 1)
                      + build_frame(2, 1, header) + build_frame(3, 1, b"x"))
    world.check_all()


def test_repro_start_ok_with_capabilities_that_are_not_a_table():
    """``capabilities`` a string and a wrong password: looking up
    ``authentication_failure_close`` must not raise (AttributeError: 'str' has no 'get')."""
    client = FakeClient(handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.received()
    start_ok = commands.Connection.StartOk(client_properties={"capabilities": "x"}, mechanism="PLAIN",
                                           response="\0guest\0wrong", locale="en_US")
    client.feed(pamqp_frame.marshal(start_ok, 0))
    frames = client.received()
    assert all(not (isinstance(frame, commands.Connection.Close) and supervisor_close(frame))
               for _, frame in frames), [frame.reply_text for _, frame in frames]
    assert client.connection.state in (State.CLOSING, State.CLOSED)


def test_repro_capabilities_that_are_not_a_table_break_another_sessions_queue_delete():
    """A client logs in with ``capabilities`` a string and consumes a queue; another session
    deletes that queue: the consumer-cancel notice looks the capability up on the first
    connection (``Connection.client_capability``: 'str' object has no attribute 'get') and the
    *deleting* session is closed with 541."""
    world = World()
    weird = FakeClient(world.broker, handshake=False)
    weird.feed(PROTOCOL_HEADER)
    start_ok = commands.Connection.StartOk(client_properties={"capabilities": "x"}, mechanism="PLAIN",
                                           response="\0guest\0guest", locale="en_US")
    weird.feed(pamqp_frame.marshal(start_ok, 0)
               + pamqp_frame.marshal(commands.Connection.TuneOk(frame_max=131072), 0)
               + pamqp_frame.marshal(commands.Connection.Open(), 0))
    assert weird.connection.state is State.OPEN
    live_with_others(world, weird, ProtocolChecker())
    world.check_all()


def test_repro_start_ok_with_a_deeply_nested_client_properties_table():
    """client-properties nested 2000 deep: refused as malformed, not a RecursionError (which
    escaped receive_data, then became a 541)."""
    nested = deep_table(2000)
    client = FakeClient(handshake=False)
    client.feed(PROTOCOL_HEADER)
    client.received()
    payload = (struct.pack(">HH", 10, 11) + nested + _shortstr(b"PLAIN")
               + u32(12) + b"\x00guest\x00guest" + _shortstr(b"en_US"))
    client.feed(build_frame(1, 0, payload))
    frames = client.received()
    assert all(not supervisor_close(frame) for _, frame in frames), [frame.reply_text for _, frame in frames]
    assert client.connection.state in (State.CLOSING, State.CLOSED)


def test_repro_queue_declare_with_deeply_nested_arguments():
    """queue.declare whose arguments nest 2000 deep: refused as malformed, not a 541 from the
    RecursionError pamqp's recursive table decoder raises."""
    world = World()
    world.feed_victim(_raw_method(1, 50, 10, b"\x00\x00", _shortstr(b"q"), b"\x00", deep_table(2000)))
    world.check_all()


def test_repro_a_content_header_with_only_the_continuation_flag_is_refused_at_the_door():
    """Property flags 0x0001 (no property, "another flags word follows") and no further word:
    the broker takes the message and hands the header on unchanged; a consumer on another
    connection cannot decode it (pamqp: "Content header flags are truncated")."""
    world = World(setup=_setup(commands.Queue.Declare(queue="c-plain")), shared=["c-plain"])
    world.feed_victim(pamqp_frame.marshal(Basic.Publish(exchange="", routing_key="c-plain"), 1)
                      + build_frame(2, 1, struct.pack(">HHQH", 60, 0, 0, 0x0001)))
    world.check_all()


def test_repro_publish_to_a_delayed_exchange_of_fanout_type():
    """An ``x-delayed-message`` exchange with ``x-delayed-type: fanout``: every publish to it
    ends in 541 (NotImplementedError from ``Exchange._match``: ``FanoutExchange`` routes in
    ``route`` and has no ``_match``, which ``DelayedExchange`` calls); a delayed one is dropped
    by the timer instead of being routed."""
    world = World()
    victim = world.victim
    victim.send(commands.Exchange.Declare(exchange="dx", exchange_type="x-delayed-message",
                                          arguments={"x-delayed-type": "fanout"}), 2)
    victim.expect(commands.Exchange.DeclareOk)
    victim.declare_queue("dq", channel=2)
    victim.send(commands.Queue.Bind(queue="dq", exchange="dx"), 2)
    world.victim_output()
    world.feed_victim(_publish(1, "dx", "", b"now", None, False))
    world.tick(1)
    assert world.broker.vhosts["/"].queues["dq"].message_count == 1
    world.check_all()


def test_repro_deleting_an_auto_delete_exchange_that_has_bindings():
    """exchange.delete of an auto-delete exchange with a binding: unbinding its last binding
    auto-deletes it, then ``VirtualHost.apply(DeleteExchange)`` deletes it again (KeyError),
    and the client gets 541 instead of delete-ok."""
    world = World()
    victim = world.victim
    victim.send(commands.Exchange.Declare(exchange="ad", exchange_type="fanout", auto_delete=True), 2)
    victim.expect(commands.Exchange.DeclareOk)
    victim.declare_queue("aq", channel=2)
    victim.send(commands.Queue.Bind(queue="aq", exchange="ad"), 2)
    world.victim_output()
    frames = world.feed_victim(_frames(commands.Exchange.Delete(exchange="ad"), channel=1))
    assert [type(frame) for _, frame in frames] == [commands.Exchange.DeleteOk], frames
    world.check_all()


def deep_table(depth: int) -> bytes:
    table = u32(0)
    for _ in range(depth):
        entries = b"\x00F" + table
        table = u32(len(entries)) + entries
    return table
