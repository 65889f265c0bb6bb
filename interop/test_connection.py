"""Connection-level interop: handshake, auth, tuning, heartbeats, framing errors, channels.

Every expectation here was checked against RabbitMQ 3.10.8.  Malformed input that no
client library would send goes through a tiny raw-socket client built on pamqp.
"""

from __future__ import annotations

import socket
import struct
import time

import amqp
import pika
import pika.exceptions
import pytest
from pamqp import body as pbody
from pamqp import commands, frame, header, heartbeat

pytestmark = pytest.mark.timeout(30)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
)


# --------------------------------------------------------------------------- helpers


def _params(url: str, **overrides) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.blocked_connection_timeout = 10
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def _connect(url: str, **overrides) -> pika.BlockingConnection:
    return pika.BlockingConnection(_params(url, **overrides))


def _py_amqp(url: str, **kwargs) -> amqp.Connection:
    p = pika.URLParameters(url)
    kwargs.setdefault("userid", p.credentials.username)
    kwargs.setdefault("password", p.credentials.password)
    kwargs.setdefault("virtual_host", p.virtual_host)
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("read_timeout", 5)
    kwargs.setdefault("write_timeout", 5)
    return amqp.Connection(f"{p.host}:{p.port}", **kwargs)


def _close_quietly(conn) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception:
        pass


@pytest.fixture
def conn(amqp_url):
    c = _connect(amqp_url)
    yield c
    _close_quietly(c)


class RawClient:
    """Just enough AMQP 0-9-1 over a plain socket to send what no client would."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        p = pika.URLParameters(url)
        self.user = p.credentials.username
        self.password = p.credentials.password
        self.vhost = p.virtual_host
        self.sock = socket.create_connection((p.host, p.port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, value, channel: int = 0) -> None:
        self.send(frame.marshal(value, channel))

    def recv_frame(self, timeout: float = 5.0):
        """Next (channel, frame); raises EOFError when the server closed the socket."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 7:
                size = struct.unpack(">I", self.buf[3:7])[0]
                if len(self.buf) >= size + 8:
                    consumed, channel, value = frame.unmarshal(self.buf)
                    self.buf = self.buf[consumed:]
                    return channel, value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame from server")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError("server closed the socket")
            self.buf += data

    def recv_method(self, timeout: float = 5.0):
        """Next non-heartbeat frame."""
        deadline = time.monotonic() + timeout
        while True:
            channel, value = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if not isinstance(value, heartbeat.Heartbeat):
                return channel, value

    def wait_closed(self, timeout: float) -> tuple[bool, bytes]:
        """Read until EOF; (closed, bytes read meanwhile)."""
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, data
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False, data
            except ConnectionResetError:
                return True, data
            if not chunk:
                return True, data
            data += chunk

    def start(self, capabilities: dict | None = None, password: str | None = None):
        self.send(PROTOCOL_HEADER)
        _, start = self.recv_frame()
        assert isinstance(start, commands.Connection.Start)
        props = {"product": "interop-raw", "capabilities": capabilities or {}}
        pw = self.password if password is None else password
        self.send_frame(
            commands.Connection.StartOk(
                client_properties=props,
                mechanism="PLAIN",
                response=f"\0{self.user}\0{pw}",
                locale="en_US",
            )
        )
        return start

    def handshake(self, heartbeat_: int = 0, frame_max: int = 131072, channel_max: int = 2047):
        start = self.start()
        _, tune = self.recv_frame()
        assert isinstance(tune, commands.Connection.Tune)
        self.send_frame(
            commands.Connection.TuneOk(
                channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat_
            )
        )
        self.send_frame(commands.Connection.Open(virtual_host=self.vhost))
        _, ok = self.recv_method()
        assert isinstance(ok, commands.Connection.OpenOk), ok
        return start, tune

    def open_channel(self, number: int = 1) -> None:
        self.send_frame(commands.Channel.Open(), number)
        channel, ok = self.recv_method()
        assert channel == number and isinstance(ok, commands.Channel.OpenOk), ok

    def expect_connection_close(self, timeout: float = 5.0) -> commands.Connection.Close:
        channel, value = self.recv_method(timeout)
        assert channel == 0, (channel, value)
        assert isinstance(value, commands.Connection.Close), value
        return value


@pytest.fixture
def raw(amqp_url):
    clients: list[RawClient] = []

    def make() -> RawClient:
        c = RawClient(amqp_url)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


# --------------------------------------------------------------------------- handshake


def test_pika_handshake_reports_capabilities(conn):
    props = conn._impl.server_properties
    caps = props["capabilities"]
    for name in CAPABILITIES:
        assert caps.get(name) is True, name
    assert "version" in props and "product" in props


def test_connection_start_advertises_0_9_and_mechanisms(raw):
    client = raw()
    client.send(PROTOCOL_HEADER)
    channel, start = client.recv_frame()
    assert channel == 0
    assert isinstance(start, commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    mechanisms = start.mechanisms.split()
    assert "PLAIN" in mechanisms and "AMQPLAIN" in mechanisms
    assert "en_US" in start.locales.split()
    for name in CAPABILITIES:
        assert start.server_properties["capabilities"][name] is True


def test_raw_handshake_server_tune_defaults(raw):
    client = raw()
    _, tune = client.handshake()
    # RabbitMQ's defaults: clients without their own limits adopt these
    assert tune.channel_max == 2047
    assert tune.frame_max == 131072
    assert tune.heartbeat == 60
    client.open_channel(1)


@pytest.mark.parametrize("login_method", ["PLAIN", "AMQPLAIN"])
def test_py_amqp_login_methods(amqp_url, unique, login_method):
    c = _py_amqp(amqp_url, login_method=login_method)
    c.connect()
    try:
        assert c.connected
        caps = c.server_properties["capabilities"]
        for name in CAPABILITIES:
            assert caps[name] is True
        ch = c.channel()
        q, _, _ = ch.queue_declare(f"{unique}-q", exclusive=True)
        ch.basic_publish(amqp.Message(b"hello"), exchange="", routing_key=q)
        deadline = time.monotonic() + 3
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = ch.basic_get(q, no_ack=True)
        assert msg is not None and msg.body == b"hello"
    finally:
        c.close()


def test_pika_wrong_password_is_403(amqp_url):
    p = _params(amqp_url)
    p.credentials = pika.PlainCredentials(p.credentials.username, "definitely-wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(p)
    text = str(info.value)
    assert "403" in text
    assert "ACCESS_REFUSED" in text


@pytest.mark.parametrize("login_method", ["PLAIN", "AMQPLAIN"])
def test_py_amqp_wrong_password_is_403(amqp_url, login_method):
    c = _py_amqp(amqp_url, password="definitely-wrong", login_method=login_method)
    with pytest.raises(amqp.exceptions.AccessRefused) as info:
        c.connect()
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED" in info.value.reply_text
    assert login_method in info.value.reply_text
    c.collect()


def test_raw_wrong_password_with_auth_failure_close_gets_connection_close(raw):
    client = raw()
    client.start(capabilities={"authentication_failure_close": True}, password="nope")
    close = client.expect_connection_close()
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED")
    assert "PLAIN" in close.reply_text


def test_pika_unknown_vhost_is_530(amqp_url, unique):
    p = _params(amqp_url, virtual_host=f"{unique}-nohost")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika.BlockingConnection(p)
    text = str(info.value)
    assert "530" in text
    assert "NOT_ALLOWED" in text
    assert f"{unique}-nohost" in text


def test_py_amqp_unknown_vhost_is_530(amqp_url, unique):
    c = _py_amqp(amqp_url, virtual_host=f"{unique}-nohost")
    with pytest.raises(amqp.exceptions.NotAllowed) as info:
        c.connect()
    assert info.value.reply_code == 530
    assert info.value.reply_text.startswith("NOT_ALLOWED")
    assert f"vhost {unique}-nohost not found" in info.value.reply_text
    # the close names connection.open as the failing method
    assert tuple(info.value.method_sig) == (10, 40)
    c.collect()


# --------------------------------------------------------------------------- tuning


def test_pika_adopts_server_tune_defaults(conn):
    params = conn._impl.params
    assert params.frame_max == 131072
    assert params.channel_max == 2047
    assert params.heartbeat == 60


def test_tune_negotiation_client_limits(amqp_url, unique):
    c = _connect(amqp_url, frame_max=8192, channel_max=10, heartbeat=5)
    try:
        params = c._impl.params
        assert params.frame_max == 8192
        assert params.channel_max == 10
        assert params.heartbeat == 5
        # a body bigger than frame_max crosses both ways in several body frames
        ch = c.channel()
        q = ch.queue_declare(f"{unique}-q", exclusive=True).method.queue
        ch.confirm_delivery()
        payload = bytes(range(256)) * 80  # 20480 bytes
        ch.basic_publish("", q, payload)
        method, _, got = ch.basic_get(q, auto_ack=True)
        assert method is not None
        assert got == payload
    finally:
        _close_quietly(c)


def test_channel_number_above_channel_max_is_accepted(amqp_url, unique):
    """RabbitMQ limits how many channels are open, not which numbers they use."""
    c = _connect(amqp_url, channel_max=10)
    try:
        assert c._impl.params.channel_max == 10
        for number in (11, 65535):
            ch = c.channel(number)
            assert ch.channel_number == number
            ok = ch.queue_declare(f"{unique}-{number}", exclusive=True)
            assert ok.method.queue == f"{unique}-{number}"
        assert c.is_open
    finally:
        _close_quietly(c)


def test_opening_more_channels_than_channel_max_closes_connection(amqp_url):
    c = _connect(amqp_url, channel_max=3)
    try:
        for number in (1, 2, 3):
            c.channel(number)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            c.channel(4)
        assert info.value.reply_code == 530
        assert info.value.reply_text.startswith("NOT_ALLOWED")
        assert "channel_max (3)" in info.value.reply_text
        assert c.is_closed
    finally:
        _close_quietly(c)


def test_closing_a_channel_frees_a_channel_max_slot(amqp_url, unique):
    c = _connect(amqp_url, channel_max=2)
    try:
        first = c.channel(1)
        c.channel(2)
        first.close()
        again = c.channel(3)
        assert again.queue_declare(f"{unique}-q", exclusive=True).method.queue == f"{unique}-q"
        assert c.is_open
    finally:
        _close_quietly(c)


@pytest.mark.parametrize("frame_max", [1024, 200000], ids=["below-4096", "above-server-max"])
def test_tune_ok_with_unacceptable_frame_max_is_refused(raw, frame_max):
    client = raw()
    client.start()
    _, tune = client.recv_frame()
    assert isinstance(tune, commands.Connection.Tune)
    client.send_frame(commands.Connection.TuneOk(channel_max=0, frame_max=frame_max, heartbeat=0))
    client.send_frame(commands.Connection.Open(virtual_host=client.vhost))
    # RabbitMQ never answers open-ok; it drops the socket (after a ~3 s anti-DoS delay)
    closed, data = client.wait_closed(8)
    assert closed
    client.buf += data
    while len(client.buf) >= 8:
        _, value = client.recv_frame(0.1)
        assert not isinstance(value, commands.Connection.OpenOk)


# --------------------------------------------------------------------------- heartbeats


def test_silent_client_is_disconnected_after_missed_heartbeats(raw):
    client = raw()
    client.handshake(heartbeat_=1)
    started = time.monotonic()
    closed, data = client.wait_closed(6)
    elapsed = time.monotonic() - started
    assert closed, "broker kept a silent heartbeat=1 connection open for 6 s"
    assert elapsed >= 1.0, f"closed too early ({elapsed:.2f}s)"
    # the broker only sent heartbeats before dropping the socket, no connection.close
    client.buf = data
    while len(client.buf) >= 8:
        channel, value = client.recv_frame(0.1)
        assert channel == 0
        assert isinstance(value, heartbeat.Heartbeat)


def test_server_sends_heartbeats_and_keeps_a_beating_client(raw):
    client = raw()
    client.handshake(heartbeat_=1)
    beats = 0
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        channel, value = client.recv_frame(2.0)
        assert channel == 0
        assert isinstance(value, heartbeat.Heartbeat), value
        beats += 1
        client.send_frame(heartbeat.Heartbeat())
    assert beats >= 3
    # still alive after more than two heartbeat intervals
    client.open_channel(1)


def test_pika_heartbeat_negotiated_to_one_second_stays_open(amqp_url, unique):
    c = _connect(amqp_url, heartbeat=1)
    try:
        assert c._impl.params.heartbeat == 1
        c.sleep(2.5)
        assert c.is_open
        ch = c.channel()
        assert ch.queue_declare(f"{unique}-q", exclusive=True).method.queue == f"{unique}-q"
    finally:
        _close_quietly(c)


# --------------------------------------------------------------------------- framing errors


@pytest.mark.parametrize(
    "greeting",
    [b"AMQP\x00\x00\x08\x00", b"HTTP/1.1\r\n", b"AMQP\x00\x00\x09\x00", b"AMQP\x00\x00\x00\x09"],
    ids=["amqp-0-8", "http", "amqp-0-9-0", "amqp-0-0-9"],
)
def test_wrong_protocol_header_gets_supported_version_and_close(raw, greeting):
    client = raw()
    client.send(greeting)
    closed, data = client.wait_closed(3)
    assert data == PROTOCOL_HEADER
    assert closed


def test_bad_frame_end_is_501(raw):
    client = raw()
    client.handshake()
    data = bytearray(frame.marshal(commands.Channel.Open(), 1))
    data[-1] = 0x00
    client.send(bytes(data))
    close = client.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")


def test_frame_larger_than_negotiated_frame_max_is_501(raw):
    client = raw()
    client.handshake(frame_max=8192)
    client.open_channel(1)
    # a body frame header announcing far more than frame_max; the payload never follows
    client.send(struct.pack(">BHI", 3, 1, 100_000))
    close = client.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")
    # after a framing error the broker stops reading and drops the socket on its own
    # (RabbitMQ: ~3 s later), without waiting for close-ok
    closed, _ = client.wait_closed(6)
    assert closed


def test_frame_exactly_at_frame_max_is_accepted(raw, unique):
    client = raw()
    client.handshake(frame_max=8192)
    client.open_channel(1)
    client.send_frame(commands.Queue.Declare(queue=f"{unique}-q", exclusive=True), 1)
    _, ok = client.recv_method()
    assert isinstance(ok, commands.Queue.DeclareOk)
    payload = b"x" * (8192 - 8)  # whole frame == frame_max
    client.send_frame(commands.Basic.Publish(exchange="", routing_key=f"{unique}-q"), 1)
    client.send_frame(
        header.ContentHeader(body_size=len(payload), properties=commands.Basic.Properties()), 1
    )
    client.send_frame(pbody.ContentBody(payload), 1)
    client.send_frame(commands.Basic.Get(queue=f"{unique}-q", no_ack=True), 1)
    _, got = client.recv_method()
    assert isinstance(got, commands.Basic.GetOk)
    _, content_header = client.recv_method()
    assert content_header.body_size == len(payload)
    received = b""
    while len(received) < len(payload):
        _, chunk = client.recv_method()
        assert isinstance(chunk, pbody.ContentBody)
        received += chunk.value
    assert received == payload


def test_unknown_frame_type_is_501(raw):
    client = raw()
    client.handshake()
    client.send(b"\x05\x00\x00\x00\x00\x00\x00\xce")
    close = client.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR")


@pytest.mark.parametrize("kind", ["header", "body"])
def test_content_frame_without_publish_is_505(raw, kind):
    client = raw()
    client.handshake()
    client.open_channel(1)
    if kind == "header":
        value = header.ContentHeader(body_size=3, properties=commands.Basic.Properties())
    else:
        value = pbody.ContentBody(b"abc")
    client.send_frame(value, 1)
    close = client.expect_connection_close()
    assert close.reply_code == 505
    assert close.reply_text.startswith("UNEXPECTED_FRAME")


def test_method_frame_where_content_header_expected_is_505(raw, unique):
    client = raw()
    client.handshake()
    client.open_channel(1)
    client.send_frame(commands.Basic.Publish(exchange="", routing_key=f"{unique}-q"), 1)
    client.send_frame(commands.Queue.Declare(queue="", exclusive=True), 1)
    close = client.expect_connection_close()
    assert close.reply_code == 505
    assert close.reply_text.startswith("UNEXPECTED_FRAME")
    assert "content header" in close.reply_text
    assert (close.class_id, close.method_id) == (60, 40)


def test_heartbeat_on_nonzero_channel_is_505(raw):
    client = raw()
    client.handshake()
    client.open_channel(1)
    client.send(b"\x08\x00\x01\x00\x00\x00\x00\xce")
    close = client.expect_connection_close()
    assert close.reply_code == 505
    assert close.reply_text.startswith("UNEXPECTED_FRAME")


def test_method_on_unopened_channel_is_504(raw):
    client = raw()
    client.handshake()
    client.send_frame(commands.Queue.Declare(queue="", exclusive=True), 3)
    close = client.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR")
    assert "channel.open" in close.reply_text
    assert (close.class_id, close.method_id) == (50, 10)


def test_channel_close_on_unopened_channel_is_504(raw):
    client = raw()
    client.handshake()
    client.send_frame(
        commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 7
    )
    close = client.expect_connection_close()
    assert close.reply_code == 504
    assert (close.class_id, close.method_id) == (20, 40)


def test_second_channel_open_on_same_number_is_504(raw):
    client = raw()
    client.handshake()
    client.open_channel(1)
    client.send_frame(commands.Channel.Open(), 1)
    close = client.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR")
    assert (close.class_id, close.method_id) == (20, 10)


def test_non_connection_method_on_channel_zero_is_504(raw):
    client = raw()
    client.handshake()
    client.send_frame(commands.Queue.Declare(queue="", exclusive=True), 0)
    close = client.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR")


def test_after_server_close_only_close_ok_matters(raw):
    client = raw()
    client.handshake()
    client.send_frame(commands.Queue.Declare(queue="", exclusive=True), 3)
    close = client.expect_connection_close()
    assert close.reply_code == 504
    # anything but close-ok is discarded while the server waits for close-ok
    client.send_frame(commands.Channel.Open(), 1)
    with pytest.raises(TimeoutError):
        client.recv_method(timeout=0.5)
    client.send_frame(commands.Connection.CloseOk())
    closed, _ = client.wait_closed(3)
    assert closed


# --------------------------------------------------------------------------- close / channels / flow


def test_client_initiated_close_handshake_raw(raw):
    client = raw()
    client.handshake()
    client.open_channel(1)
    client.send_frame(
        commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    )
    channel, ok = client.recv_method()
    assert channel == 0
    assert isinstance(ok, commands.Connection.CloseOk)


def test_client_initiated_close_pika(amqp_url, unique):
    c = _connect(amqp_url)
    ch = c.channel()
    ch.queue_declare(f"{unique}-q", exclusive=True)
    c.close()
    assert c.is_closed
    # exclusive queue went away with its connection
    with _connect(amqp_url) as other:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            other.channel().queue_declare(f"{unique}-q", passive=True)
        assert info.value.reply_code == 404


def test_py_amqp_close(amqp_url):
    c = _py_amqp(amqp_url)
    c.connect()
    c.channel()
    c.close()
    assert not c.connected


def test_channel_close_and_reopen_same_number(conn, unique):
    ch = conn.channel(5)
    ch.queue_declare(f"{unique}-q", exclusive=True)
    ch.close()
    assert ch.is_closed
    again = conn.channel(5)
    assert again.channel_number == 5
    ok = again.queue_declare(f"{unique}-q", passive=True)
    assert ok.method.queue == f"{unique}-q"


def test_channel_error_leaves_connection_and_other_channels_usable(conn, unique):
    bystander = conn.channel()
    bystander.queue_declare(f"{unique}-q", exclusive=True)
    victim = conn.channel(7)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        victim.queue_declare(f"{unique}-missing", passive=True)
    assert info.value.reply_code == 404
    assert conn.is_open
    assert bystander.is_open
    bystander.confirm_delivery()
    bystander.basic_publish("", f"{unique}-q", b"still-here")
    method, _, got = bystander.basic_get(f"{unique}-q", auto_ack=True)
    assert got == b"still-here"
    # the failed channel's number can be opened again
    reopened = conn.channel(7)
    assert reopened.queue_declare(f"{unique}-q", passive=True).method.message_count == 0


def test_channel_flow_active_true_is_acknowledged(conn):
    ch = conn.channel()
    assert ch.flow(True) is True
    assert conn.is_open


def test_channel_flow_inactive_is_not_implemented_pika(conn):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.flow(False)
    assert info.value.reply_code == 540
    assert info.value.reply_text.startswith("NOT_IMPLEMENTED")
    assert "active=false" in info.value.reply_text
    assert conn.is_closed


def test_channel_flow_inactive_is_not_implemented_py_amqp(amqp_url):
    c = _py_amqp(amqp_url)
    c.connect()
    try:
        ch = c.channel()
        with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as info:
            ch.flow(False)
        assert info.value.reply_code == 540
        assert tuple(info.value.method_sig) == (20, 20)
        assert not c.connected
    finally:
        c.collect()
