"""Hostile input over raw sockets: what the broker answers, and that it keeps serving others.

One table, ``ROWS``: each row says how far the raw connection gets first (``setup``), the bytes
it then sends (``payload``), and the first significant answer RabbitMQ 3.10.8 gives:

* ``("connection.close", code)``: the connection is closed with ``code``; the test answers
  close-ok and the socket must then be closed by the broker;
* ``("channel.close", code)``: only the channel is closed;
* ``("ok", "queue.declare-ok")``: an ordinary reply (the input was accepted);
* ``("protocol header", b"AMQP...")``: the broker answered with the header it speaks, then closed;
* ``("socket closed", None)``: the broker closed TCP without sending a close frame.

Every expectation was found by running the row against RabbitMQ 3.10.8, not from the spec.
A row that allows several outcomes (a frozenset) says why next to it: RabbitMQ 4.x answers
differently, or RabbitMQ's process crashes on the input (then an explicit answer is allowed too).
After every row a pika connection opened *before* the row must still round-trip a message.

Run against the reference broker with ``AMQP_URL=amqp://guest:guest@127.0.0.1:5682/``.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field as dc_field
from typing import Any

import pika
import pytest
from pamqp import commands

from interop import rawamqp as raw
from interop.rawamqp import Answer, RawConnection
from interop.support import connect

pytestmark = pytest.mark.timeout(60)

HEADER_0_9_1 = raw.PROTOCOL_HEADER
BAD_UTF8 = b"\xff\xfe\xc3\x28"  # 0xff/0xfe never occur in UTF-8; c3 28 is a broken 2-byte sequence
NAME_CHARS = "()!*?=~$%&;<>"

# reply texts start with the constant's name, as RabbitMQ's do ("NOT_FOUND - no queue 'q' ...")
REPLY_NAMES = {
    403: "ACCESS_REFUSED", 406: "PRECONDITION_FAILED", 501: "FRAME_ERROR", 502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID", 504: "CHANNEL_ERROR", 505: "UNEXPECTED_FRAME", 530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED", 541: "INTERNAL_ERROR",
}

# property flags of basic (AMQP 0-9-1 section 4.2.6.1, highest bit first)
CONTENT_TYPE, DELIVERY_MODE, HEADERS, EXPIRATION = 0x8000, 0x1000, 0x2000, 0x0100


# --------------------------------------------------------------------------- names


@dataclass
class Names:
    """Per-row names (bytes, since some are not UTF-8) and what to delete afterwards."""

    prefix: str
    user: str
    password: str
    exchanges: list[bytes] = dc_field(default_factory=list)

    def q(self, suffix: bytes | str = b"q") -> bytes:
        """A queue name; rows declare their queues exclusive, so they go with the connection."""
        return self.prefix.encode() + b"-" + (suffix.encode() if isinstance(suffix, str) else suffix)

    def x(self, suffix: bytes | str = b"x") -> bytes:
        name = self.q(suffix)
        self.exchanges.append(name)
        return name


# --------------------------------------------------------------------------- payload pieces


def nested_table(depth: int) -> bytes:
    """{"a": {"a": ... {} }} ``depth`` tables deep."""
    value = raw.table(b"")
    for _ in range(depth - 1):
        value = raw.table(raw.field(b"a", b"F", value))
    return value


def client_properties(extra: bytes = b"") -> bytes:
    return raw.table(raw.field(b"product", b"S", raw.longstr(b"interop-rawamqp")) + extra)


def start_ok_with(props_extra: bytes) -> Callable[[Names], bytes]:
    return lambda n: raw.start_ok(n.user, n.password, client_properties(props_extra))


def declare(n: Names, suffix: bytes | str = b"q", channel: int = 1) -> bytes:
    return raw.queue_declare(channel, n.q(suffix), exclusive=True)


def publish_with(flags: int, props: bytes, body: bytes = b"abc") -> Callable[[Names], bytes]:
    """Declare a queue, publish to it with raw property ``flags``/``props``, then basic.get."""
    return lambda n: (declare(n) + raw.basic_publish(1, b"", n.q())
                      + raw.content_header(1, len(body), flags, props)
                      + raw.content_body(1, body) + raw.basic_get(1, n.q()))


def declare_args(entries: bytes) -> Callable[[Names], bytes]:
    return lambda n: raw.queue_declare(1, n.q(), exclusive=True, arguments=raw.table(entries))


def pipelined(count: int) -> Callable[[Names], bytes]:
    """channel.open, declare, ``count`` publishes and a queue.delete, all in one write."""

    def build(n: Names) -> bytes:
        message = (raw.basic_publish(1, b"", n.q()) + raw.content_header(1, 5)
                   + raw.content_body(1, b"hello"))
        return (raw.pamqp_frame(commands.Channel.Open(), 1) + declare(n) + message * count
                + raw.method(1, 50, 40, b"\x00\x00" + raw.shortstr(n.q()) + b"\x00"))

    return build


# --------------------------------------------------------------------------- setups


def _greeted(c: RawConnection) -> None:
    c.greet()


def _tuned(c: RawConnection) -> None:
    c.start()
    c.tune()


def _opened(frame_max: int = 131072) -> Callable[[RawConnection], None]:
    return lambda c: c.handshake(frame_max=frame_max)


def _with_channels(*numbers: int, frame_max: int = 131072) -> Callable[[RawConnection], None]:
    def setup(c: RawConnection) -> None:
        c.handshake(frame_max=frame_max)
        for number in numbers:
            c.open_channel(number)

    return setup


def _closed_channel(c: RawConnection) -> None:
    c.handshake()
    c.open_channel(1)
    c.close_channel(1)


SETUPS: dict[str, Callable[[RawConnection], None]] = {
    "tcp": lambda c: None,                      # nothing sent yet
    "greeted": _greeted,                        # protocol header sent, connection.start read
    "tuned": _tuned,                            # start-ok and tune-ok sent, no connection.open yet
    "open": _opened(),                          # connection open (frame_max 131072, no heartbeat)
    "channel": _with_channels(1),               # ... and channel 1 open
    "channel-8k": _with_channels(1, frame_max=8192),
    "channels-1-2": _with_channels(1, 2),
    "closed-channel": _closed_channel,          # channel 1 opened, then closed (close/close-ok)
}


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    id: str
    setup: str
    payload: bytes | Callable[[Names], bytes]
    expect: tuple[str, Any] | frozenset[tuple[str, Any]]
    text: str = ""                      # a substring of the reply text both brokers should share
    skip: tuple[str, ...] = ()          # replies to pass over before the significant one
    shutdown: bool = False              # half-close our side after sending
    check: Callable[[Answer], bool] | None = None

    def expected(self) -> frozenset[tuple[str, Any]]:
        return self.expect if isinstance(self.expect, frozenset) else frozenset([self.expect])


def conn_close(code: int) -> tuple[str, int]:
    return ("connection.close", code)


def chan_close(code: int) -> tuple[str, int]:
    return ("channel.close", code)


def ok(name: str) -> tuple[str, str]:
    return ("ok", name)


SOCKET_CLOSED = ("socket closed", None)
HEADER_REPLY = ("protocol header", HEADER_0_9_1)
DECLARE_OK = ok("queue.declare-ok")

# RabbitMQ 4.0+ serves AMQP 1.0 on the same port: a header it refuses is answered with the
# AMQP 1.0 SASL header instead of 0-9-1's (rabbit_reader:refuse_connection/2, 4.0+).
HEADER_REPLY_4X = ("protocol header", b"AMQP\x03\x01\x00\x00")
HEADER_REFUSED = frozenset([HEADER_REPLY, HEADER_REPLY_4X])


def also(*outcomes: tuple[str, Any]) -> frozenset[tuple[str, Any]]:
    return frozenset(outcomes)


# Where RabbitMQ's reader *crashes* on the input (its log shows a "crasher" and the client only
# sees TCP close), a row also accepts the answer RabbitMQ gives deliberately for the same kind
# of error, so a broker that explains itself is not failed for it:
# 501 FRAME_ERROR "cannot decode" for undecodable method fields, a hard close for unknown methods.
READER_CRASH_UNDECODABLE = also(SOCKET_CLOSED, conn_close(501))
READER_CRASH_UNKNOWN_METHOD = also(SOCKET_CLOSED, conn_close(503), conn_close(540))

EVERY_TABLE_TYPE = b"".join([
    raw.field(b"S", b"S", raw.longstr(b"long string")),
    raw.field(b"T", b"T", struct.pack(">Q", 1_700_000_000)),
    raw.field(b"b", b"b", struct.pack(">b", -1)),
    raw.field(b"B", b"B", struct.pack(">B", 255)),
    raw.field(b"s", b"s", struct.pack(">h", -2)),
    raw.field(b"u", b"u", struct.pack(">H", 65535)),
    raw.field(b"I", b"I", struct.pack(">i", -3)),
    raw.field(b"i", b"i", struct.pack(">I", 2**32 - 1)),
    raw.field(b"d", b"d", struct.pack(">d", 1.5)),
    raw.field(b"f", b"f", struct.pack(">f", 2.5)),
    raw.field(b"l", b"l", struct.pack(">q", -4)),
    raw.field(b"L", b"L", struct.pack(">q", 5)),
    raw.field(b"t", b"t", b"\x01"),
    raw.field(b"D", b"D", b"\x02" + struct.pack(">I", 12345)),
    raw.field(b"F", b"F", raw.table(raw.field(b"k", b"V", b""))),
    raw.field(b"A", b"A", raw.table(b"S" + raw.longstr(b"x") + b"b\x01" + b"V")),
    raw.field(b"x", b"x", raw.longstr(b"\x00\xff bytes")),
    raw.field(b"V", b"V", b""),
])


def start_ok_frame_of(size: int) -> Callable[[Names], bytes]:
    """A start-ok whose whole frame is ``size`` bytes (padded in a client property)."""

    def build(n: Names) -> bytes:
        bare = len(start_ok_with(raw.field(b"pad", b"S", raw.longstr(b"")))(n))
        return start_ok_with(raw.field(b"pad", b"S", raw.longstr(b"p" * (size - bare))))(n)

    return build


ROWS: list[Row] = [
    # ---- protocol header: RabbitMQ answers with the header it speaks and closes at once
    Row("header-0-9-2", "tcp", b"AMQP\x00\x00\x09\x02", HEADER_REPLY),
    Row("header-0-10", "tcp", b"AMQP\x01\x01\x00\x0a", HEADER_REFUSED),
    Row("header-amqp-1-0", "tcp", b"AMQP\x00\x01\x00\x00", HEADER_REFUSED),
    # 4.0+ would start an AMQP 1.0 SASL exchange here; for a 0-9-1 broker 3.x's answer is the one
    Row("header-amqp-1-0-sasl", "tcp", b"AMQP\x03\x01\x00\x00", HEADER_REPLY),
    Row("header-http-get", "tcp", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", HEADER_REFUSED),
    Row("header-garbage-before", "tcp", b"\x16\x03junk" + HEADER_0_9_1, HEADER_REFUSED),
    Row("header-lowercase", "tcp", b"amqp\x00\x00\x09\x01", HEADER_REFUSED),
    # the 0-9 header: RabbitMQ (3.x and 4.x) speaks 0-9-1 to it
    Row("header-legacy-0-9", "tcp", b"AMQP\x01\x01\x00\x09", ok("connection.start")),
    # the 0-8 header: 3.x speaks 0-8; 4.0 dropped 0-8 and refuses (as a 0-9-1-only broker may)
    Row("header-legacy-0-8", "tcp", b"AMQP\x01\x01\x08\x00",
        also(ok("connection.start"), HEADER_REPLY, HEADER_REPLY_4X)),
    Row("header-short-then-close", "tcp", b"AMQP\x00", SOCKET_CLOSED, shutdown=True),
    Row("header-again-after-open", "open", HEADER_0_9_1, conn_close(501)),  # a 1.3 GB frame
    # ---- framing (RabbitMQ drops the socket ~3 s after a fatal frame error, close-ok or not)
    Row("frame-type-unknown", "channel", raw.frame(9, 1, b"\x00\x32\x00\x0a"), conn_close(501)),
    Row("frame-end-wrong", "channel", lambda n: declare(n)[:-1] + b"\x00", conn_close(501)),
    Row("frame-over-frame-max", "channel-8k",
        lambda n: raw.queue_declare(1, n.q(), exclusive=True, arguments=raw.table(
            raw.field(b"x-pad", b"S", raw.longstr(b"p" * 9000)))), conn_close(501)),
    Row("frame-size-4gb", "channel", b"\x01\x00\x01\xff\xff\xff\xff", conn_close(501)),
    Row("frame-truncated-then-close", "channel", lambda n: declare(n)[:10], SOCKET_CLOSED,
        shutdown=True),
    Row("frame-method-payload-empty", "channel", raw.frame(1, 1, b""), conn_close(501)),
    Row("frame-method-args-truncated", "channel", raw.method(1, 50, 10, b"\x00"), conn_close(501)),
    # ---- handshake. Before tune-ok the frame limit is 4096 bytes in 3.x (8192 since 4.1);
    # an error before connection.open is answered by dropping the socket (after ~3 s)
    Row("start-ok-4096-before-tune", "greeted", start_ok_frame_of(4096), ok("connection.tune")),
    Row("start-ok-5000-before-tune", "greeted", start_ok_frame_of(5000),
        also(SOCKET_CLOSED, ok("connection.tune"))),  # 3.x: too large; 4.1+: within 8192
    Row("start-ok-10000-before-tune", "greeted", start_ok_frame_of(10000), SOCKET_CLOSED),
    Row("start-ok-1mb", "greeted",
        start_ok_with(raw.field(b"pad", b"S", raw.longstr(b"p" * (1 << 20)))), SOCKET_CLOSED),
    # RabbitMQ decodes any depth; amqpbroker refuses tables nested deeper than 100
    # (amqpbroker.codec.tables.MAX_DEPTH) with 501 before anything is created, so no later decode,
    # encode or JSON view can exhaust Python's stack (docs/compatibility.md)
    Row("start-ok-props-nested-500", "greeted",
        start_ok_with(raw.field(b"nested", b"F", nested_table(500))),
        also(ok("connection.tune"), conn_close(501))),
    Row("bad-credentials-with-auth-failure-close", "greeted",
        lambda n: raw.start_ok(n.user, "wrong-password", client_properties(raw.field(
            b"capabilities", b"F",
            raw.table(raw.field(b"authentication_failure_close", b"t", b"\x01"))))),
        conn_close(403)),
    Row("bad-credentials-without-capability", "greeted",
        lambda n: raw.start_ok(n.user, "wrong-password", client_properties()), SOCKET_CLOSED),
    Row("open-unknown-vhost", "tuned",
        lambda n: raw.pamqp_frame(commands.Connection.Open(virtual_host=n.prefix + "-vhost")),
        conn_close(530), text="not found"),
    Row("start-ok-after-open", "open", lambda n: raw.start_ok(n.user, n.password), conn_close(504)),
    Row("connection-close-ok-unsolicited", "open", raw.method(0, 10, 51), conn_close(504)),
    Row("channel-close-ok-unsolicited", "channel", raw.method(1, 20, 41), conn_close(503)),
    # ---- content assembly
    Row("header-without-publish", "channel", raw.content_header(1, 3), conn_close(505)),
    Row("body-without-header", "channel", raw.content_body(1, b"abc"), conn_close(505)),
    # 3.10 takes the 10-byte body for a 3-byte message and waits for more: the basic.get that
    # follows is the unexpected frame (505). 4.2.6+ refuses the body itself with 501
    # ("content body frame exceeds remaining content size", rabbit_command_assembler).
    Row("body-longer-than-body-size", "channel",
        lambda n: (declare(n) + raw.basic_publish(1, b"", n.q()) + raw.content_header(1, 3)
                   + raw.content_body(1, b"0123456789") + raw.basic_get(1, n.q())),
        also(conn_close(505), conn_close(501)), skip=("queue.declare-ok",)),
    # 3.10 waits for 2^63 body bytes, so the basic.get is the unexpected frame (505); 4.2.6+
    # refuses a body size over 512 MiB in the header with 501; amqpbroker refuses any body size
    # over max_message_size (16 MiB, RabbitMQ 4's default) in the header with 406, before a byte
    # of body is buffered
    Row("body-size-2-63", "channel",
        lambda n: (declare(n) + raw.basic_publish(1, b"", n.q()) + raw.content_header(1, 1 << 63)
                   + raw.content_body(1, b"abc") + raw.basic_get(1, n.q())),
        also(conn_close(505), conn_close(501), chan_close(406)), skip=("queue.declare-ok",)),
    Row("header-on-other-channel", "channels-1-2",
        lambda n: raw.basic_publish(1, b"", n.q()) + raw.content_header(2, 3), conn_close(505)),
    Row("header-wrong-class", "channel",
        lambda n: raw.basic_publish(1, b"", n.q()) + raw.content_header(1, 3, class_id=50),
        conn_close(505)),
    Row("method-where-header-expected", "channel",
        lambda n: raw.basic_publish(1, b"", n.q()) + declare(n), conn_close(505)),
    Row("heartbeat-on-channel-1", "channel", raw.frame(8, 1, b""), conn_close(505)),
    Row("heartbeat-with-payload", "channel", lambda n: raw.frame(8, 0, b"hi") + declare(n),
        conn_close(501)),
    # ---- channels and methods
    Row("method-on-unopened-channel", "open", lambda n: declare(n, channel=3), conn_close(504)),
    Row("method-on-closed-channel", "closed-channel", lambda n: declare(n), conn_close(504)),
    Row("channel-open-twice", "channel", raw.pamqp_frame(commands.Channel.Open(), 1),
        conn_close(504)),
    Row("channel-open-on-channel-0", "open", raw.method(0, 20, 10, b"\x00"), conn_close(504)),
    Row("queue-method-on-channel-0", "open", lambda n: declare(n, channel=0), conn_close(504)),
    # RabbitMQ's reader exits with {unknown_method_id, {Class, Method}} (3.10 and 4.3 alike)
    Row("unknown-class-id", "channel", raw.method(1, 99, 10), READER_CRASH_UNKNOWN_METHOD),
    Row("unknown-method-id", "channel", raw.method(1, 50, 99), READER_CRASH_UNKNOWN_METHOD),
    Row("unknown-class-id-on-channel-0", "open", raw.method(0, 99, 10),
        READER_CRASH_UNKNOWN_METHOD),
    Row("basic-ack-unknown-tag", "channel",
        raw.pamqp_frame(commands.Basic.Ack(delivery_tag=42), 1), chan_close(406)),
    Row("basic-qos-prefetch-size", "channel",
        raw.pamqp_frame(commands.Basic.Qos(prefetch_size=1024), 1), conn_close(540)),
    # ---- field tables and strings
    Row("table-every-rabbitmq-type", "channel", declare_args(EVERY_TABLE_TYPE), DECLARE_OK),
    # RabbitMQ's reader dies in rabbit_binary_parser:parse_table (function_clause)
    Row("table-unknown-tag-in-queue-args", "channel",
        declare_args(raw.field(b"x-foo", b"Z", b"\x00\x00\x00\x01")), READER_CRASH_UNDECODABLE),
    Row("table-longstr-past-frame", "channel",
        declare_args(raw.field(b"x-s", b"S", struct.pack(">I", 5000) + b"abc")),
        READER_CRASH_UNDECODABLE),
    Row("table-length-past-frame", "channel",
        lambda n: raw.queue_declare(1, n.q(), exclusive=True,
                                    arguments=struct.pack(">I", 1000) + b"\x00"), conn_close(501)),
    Row("table-nested-10000-in-queue-args", "channel",
        declare_args(raw.field(b"x-nested", b"F", nested_table(10000))), also(DECLARE_OK, conn_close(501))),
    Row("table-key-invalid-utf8", "channel", declare_args(raw.field(BAD_UTF8, b"t", b"\x01")),
        DECLARE_OK),
    Row("shortstr-length-past-frame", "channel", raw.method(1, 50, 10, b"\x00\x00\xc8abc"),
        conn_close(501)),
    Row("queue-name-invalid-utf8", "channel", lambda n: declare(n, BAD_UTF8), conn_close(501),
        text="UTF-8"),
    Row("exchange-name-invalid-utf8", "channel",
        lambda n: raw.exchange_declare(1, n.x(BAD_UTF8), auto_delete=True), conn_close(501),
        text="UTF-8"),
    # the routing key is not checked: the message is simply unroutable on amq.direct
    Row("routing-key-invalid-utf8", "channel",
        lambda n: (declare(n) + raw.basic_publish(1, b"amq.direct", BAD_UTF8)
                   + raw.content_header(1, 3) + raw.content_body(1, b"abc")
                   + raw.basic_get(1, n.q())),
        ok("basic.get-empty"), skip=("queue.declare-ok",)),
    Row("queue-name-255-bytes", "channel",
        lambda n: raw.queue_declare(1, n.q().ljust(255, b"n"), exclusive=True), DECLARE_OK),
    Row("exchange-name-255-bytes", "channel",
        lambda n: raw.exchange_declare(1, n.x(b"x".ljust(255 - len(n.prefix) - 1, b"n"))),
        ok("exchange.declare-ok")),
    Row("queue-name-non-ascii", "channel", lambda n: declare(n, "ünï-€-😀-名前"), DECLARE_OK),
    Row("queue-name-punctuation", "channel", lambda n: declare(n, NAME_CHARS), DECLARE_OK),
    Row("queue-name-nul-bytes", "channel", lambda n: declare(n, b"a\x00b\x00"), DECLARE_OK),
    # ---- message properties: RabbitMQ decodes them on basic.publish; a failure kills the
    # channel process, which RabbitMQ reports as 541 INTERNAL_ERROR on the connection
    Row("properties-unknown-tag-in-headers", "channel",
        publish_with(HEADERS, raw.table(raw.field(b"h", b"Z", b"\x00\x00\x00\x01"))),
        conn_close(541), skip=("queue.declare-ok",)),
    Row("properties-truncated", "channel",
        publish_with(CONTENT_TYPE | DELIVERY_MODE, b""), conn_close(541), skip=("queue.declare-ok",)),
    Row("properties-flags-continuation", "channel",
        publish_with(0x0001, b"\x00\x00"), conn_close(541), skip=("queue.declare-ok",)),
    Row("expiration-abc", "channel",
        publish_with(EXPIRATION, raw.shortstr(b"abc")), chan_close(406), text="expiration",
        skip=("queue.declare-ok",)),
    Row("expiration-invalid-utf8", "channel",
        publish_with(EXPIRATION, raw.shortstr(b"1\xff0")), chan_close(406), text="expiration",
        skip=("queue.declare-ok",)),
    Row("content-type-invalid-utf8", "channel",
        publish_with(CONTENT_TYPE, raw.shortstr(b"\xff\xfe")), ok("basic.get-ok"),
        skip=("queue.declare-ok",)),
    # ---- many frames in one write
    Row("pipelined-300-publishes", "open", pipelined(300), ok("queue.delete-ok"),
        skip=("channel.open-ok", "queue.declare-ok"),
        check=lambda a: a.value.message_count == 300),
]


# --------------------------------------------------------------------------- the bystander


class Bystander:
    """A pika connection opened before the row; it must still round-trip a message after."""

    def __init__(self, url: str, prefix: str) -> None:
        self.connection = connect(url)
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare(f"{prefix}-bystander", exclusive=True).method.queue
        self.channel.confirm_delivery()

    def round_trip(self) -> None:
        payload = uuid.uuid4().bytes
        self.channel.basic_publish("", self.queue, payload)
        for method, _, got in self.channel.consume(self.queue, auto_ack=True, inactivity_timeout=5):
            assert method is not None, "bystander: no delivery within 5 s"
            assert got == payload
            break
        self.channel.cancel()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def _delete(url: str, names: Names) -> None:
    """Delete the exchanges a row may have left behind (raw, since names need not be UTF-8)."""
    if not names.exchanges:
        return
    c = RawConnection(url)
    try:
        c.handshake()
        c.open_channel(1)
        for name in names.exchanges:
            c.send(raw.method(1, 40, 20, b"\x00\x00" + raw.shortstr(name) + b"\x00"))
        c.send(raw.pamqp_frame(commands.Connection.Close(
            reply_code=200, reply_text="bye", class_id=0, method_id=0)))
        c.answer(timeout=5, skip=("exchange.delete-ok",), eof_timeout=0)
    finally:
        c.close()


def run_row(url: str, row: Row, names: Names) -> Answer:
    c = RawConnection(url)
    try:
        SETUPS[row.setup](c)
        c.send(row.payload(names) if callable(row.payload) else row.payload)
        if row.shutdown:
            c.shutdown_write()
        return c.answer(skip=row.skip)
    finally:
        c.close()


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_hostile_input(amqp_url: str, row: Row) -> None:
    prefix = f"hostile-{uuid.uuid4().hex[:10]}"
    creds = pika.URLParameters(amqp_url).credentials
    names = Names(prefix, creds.username, creds.password)
    bystander = Bystander(amqp_url, prefix)
    try:
        answer = run_row(amqp_url, row, names)
        try:
            bystander.round_trip()
        except Exception as exc:  # noqa: BLE001 - any failure here is the broker's
            pytest.fail(f"the bystander connection broke after {row.id} (answer {answer}): {exc!r}")
    finally:
        bystander.close()
        _delete(amqp_url, names)

    assert answer.outcome in row.expected(), f"{row.id}: got {answer}"
    if answer.kind in ("connection.close", "channel.close"):
        name = REPLY_NAMES[answer.detail]
        assert answer.text.startswith(name), f"{row.id}: reply text should start with {name}"
    if row.text:
        assert row.text in answer.text, f"{row.id}: got {answer}"
    if answer.kind in ("connection.close", "protocol header"):
        assert answer.closed_after, f"{row.id}: socket still open after {answer}"
    if row.check is not None:
        assert row.check(answer), f"{row.id}: got {answer}"


def test_a_connection_that_never_finishes_its_handshake_is_closed(amqp_url: str) -> None:
    """A socket that sends nothing, and one that sends the protocol header and stalls, are both
    closed by the broker after its handshake timeout (10 s, as RabbitMQ's), not kept for ever."""
    import socket
    import time
    from urllib.parse import urlparse

    url = urlparse(amqp_url)
    silent = socket.create_connection((url.hostname, url.port or 5672), timeout=30)
    stalled = socket.create_connection((url.hostname, url.port or 5672), timeout=30)
    try:
        stalled.sendall(b"AMQP\x00\x00\x09\x01")
        started = time.monotonic()
        for sock in (silent, stalled):
            try:
                while sock.recv(65536):  # connection.start for the stalled one, then EOF
                    pass
            except ConnectionResetError:  # RabbitMQ resets rather than closes
                pass
        waited = time.monotonic() - started
        assert 5 < waited < 25, waited
    finally:
        silent.close()
        stalled.close()
