"""A raw-socket AMQP 0-9-1 client for sending what no client library would.

Two halves:

* byte builders (``frame``, ``method``, ``shortstr``, ``table``, ``queue_declare`` …) that put
  exactly the given bytes on the wire: lengths may lie, strings need not be UTF-8, flags may
  promise fields that are absent;
* ``RawConnection``, a blocking socket with just enough protocol to get to the point where the
  hostile bytes go out (``handshake``, ``open_channel``), and ``answer()``, which reads what the
  broker sends back until the first significant reply and reports it as an ``Answer``.

Well-formed frames are built with pamqp (``pamqp_frame``); replies are decoded with pamqp too.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from pamqp import commands
from pamqp import exceptions as pexceptions, frame as pframe

__all__ = [
    "PROTOCOL_HEADER",
    "Answer",
    "RawConnection",
    "amqp_name",
    "basic_get",
    "basic_publish",
    "content_body",
    "content_header",
    "exchange_declare",
    "field",
    "frame",
    "longstr",
    "method",
    "pamqp_frame",
    "queue_declare",
    "shortstr",
    "start_ok",
    "table",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"
_FRAME_HEADER = struct.Struct(">BHI")
_CAMEL = re.compile(r"(?<!^)([A-Z])")
EMPTY_TABLE = b"\x00\x00\x00\x00"


# --------------------------------------------------------------------------- byte builders


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def frame(frame_type: int, channel: int, payload: bytes, end: bytes = FRAME_END) -> bytes:
    """One frame with an honest size field (``end`` may be replaced to break it)."""
    return _FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + end


def method(channel: int, class_id: int, method_id: int, arguments: bytes = b"") -> bytes:
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + arguments)


def shortstr(value: bytes | str) -> bytes:
    data = _bytes(value)
    return struct.pack("B", len(data)) + data


def longstr(value: bytes | str) -> bytes:
    data = _bytes(value)
    return struct.pack(">I", len(data)) + data


def table(entries: bytes) -> bytes:
    """A field table around already encoded ``entries`` (see ``field``)."""
    return struct.pack(">I", len(entries)) + entries


def field(key: bytes | str, tag: bytes, value: bytes) -> bytes:
    return shortstr(key) + tag + value


def pamqp_frame(value: Any, channel: int = 0) -> bytes:
    return pframe.marshal(value, channel)


def queue_declare(channel: int, queue: bytes | str, *, passive: bool = False, durable: bool = False,
                  exclusive: bool = False, auto_delete: bool = False, nowait: bool = False,
                  arguments: bytes = EMPTY_TABLE) -> bytes:
    bits = passive | durable << 1 | exclusive << 2 | auto_delete << 3 | nowait << 4
    return method(channel, 50, 10, b"\x00\x00" + shortstr(queue) + bytes([bits]) + arguments)


def exchange_declare(channel: int, exchange: bytes | str, kind: bytes | str = b"direct", *,
                     auto_delete: bool = False, arguments: bytes = EMPTY_TABLE) -> bytes:
    bits = auto_delete << 2
    return method(channel, 40, 10,
                  b"\x00\x00" + shortstr(exchange) + shortstr(kind) + bytes([bits]) + arguments)


def basic_publish(channel: int, exchange: bytes | str, routing_key: bytes | str,
                  mandatory: bool = False) -> bytes:
    return method(channel, 60, 40,
                  b"\x00\x00" + shortstr(exchange) + shortstr(routing_key) + bytes([mandatory]))


def basic_get(channel: int, queue: bytes | str, no_ack: bool = True) -> bytes:
    return method(channel, 60, 70, b"\x00\x00" + shortstr(queue) + bytes([no_ack]))


def content_header(channel: int, body_size: int, flags: int = 0, properties: bytes = b"",
                   class_id: int = 60) -> bytes:
    """A content header frame with raw ``flags`` and property bytes (both may lie)."""
    payload = struct.pack(">HHQH", class_id, 0, body_size, flags) + properties
    return frame(2, channel, payload)


def content_body(channel: int, data: bytes) -> bytes:
    return frame(3, channel, data)


def start_ok(user: str, password: str, client_properties: bytes | None = None,
             mechanism: str = "PLAIN") -> bytes:
    """connection.start-ok; ``client_properties`` is an encoded field table (default: empty)."""
    props = client_properties if client_properties is not None else EMPTY_TABLE
    response = f"\0{user}\0{password}"
    return method(0, 10, 11, props + shortstr(mechanism) + longstr(response) + shortstr("en_US"))


# --------------------------------------------------------------------------- answers


def amqp_name(value: Any) -> str:
    """pamqp's ``Queue.DeclareOk`` as the spec spells it: ``queue.declare-ok``."""
    cls, meth = value.name.split(".")
    return cls.lower() + "." + _CAMEL.sub(r"-\1", meth).lower()


@dataclass
class Answer:
    """The first significant thing a broker answered.

    ``kind`` is one of ``connection.close``, ``channel.close`` (``detail``: the reply code),
    ``ok`` (``detail``: the method, e.g. ``queue.declare-ok``), ``protocol header`` (``detail``:
    the 8 bytes), ``socket closed`` (``detail``: None; EOF with no close frame) or ``silence``
    (nothing within the timeout).
    """

    kind: str
    detail: Any
    text: str = ""
    class_method: tuple[int, int] | None = None
    channel: int = 0
    value: Any = None
    closed_after: bool | None = None  # socket closed after our close-ok / the protocol header

    @property
    def outcome(self) -> tuple[str, Any]:
        return self.kind, self.detail

    def __str__(self) -> str:
        extra = f" {self.text!r}" if self.text else ""
        if self.class_method:
            extra += f" on {self.class_method}"
        if self.closed_after is not None:
            extra += " then EOF" if self.closed_after else " then socket still open"
        return f"({self.kind!r}, {self.detail!r}){extra}"


class RawConnection:
    """A blocking socket speaking as little AMQP as a test needs."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parsed = urlparse(url)
        self.user = unquote(parsed.username or "guest")
        self.password = unquote(parsed.password or "guest")
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        self.vhost = unquote(path) if path else "/"
        self.sock = socket.create_connection((parsed.hostname, parsed.port or 5672), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    # ----------------------------------------------------------------- plumbing

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on timeout. Sets ``eof`` when the peer closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return True
        self.buf += data
        return True

    def read_frame(self, timeout: float = 10.0) -> tuple[int, int, Any]:
        """Next (frame type, channel, pamqp value); EOFError on close, TimeoutError on silence."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 7:
                frame_type, channel, size = _FRAME_HEADER.unpack_from(self.buf)
                if len(self.buf) >= size + 8:
                    data = bytes(self.buf[: size + 8])
                    try:
                        _, channel, value = pframe.unmarshal(data)
                    except (ValueError, pexceptions.UnmarshalingException):
                        # RabbitMQ echoes bytes that are not UTF-8 in some reply texts
                        value = pframe.unmarshal(_reply_text_as_utf8(data))[2]
                    del self.buf[: size + 8]
                    return frame_type, channel, value
            if self.eof:
                raise EOFError("broker closed the socket")
            if not self._fill(deadline):
                raise TimeoutError("no complete frame from the broker")

    def read_method(self, timeout: float = 10.0) -> tuple[int, Any]:
        """Next method frame (heartbeats, headers and bodies skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            frame_type, channel, value = self.read_frame(max(0.01, deadline - time.monotonic()))
            if frame_type == 1:
                return channel, value

    def wait_eof(self, timeout: float) -> bool:
        """Read and discard until the broker closes the socket; False if it is still open."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline):
                return False
            self.buf.clear()
        return True

    # ----------------------------------------------------------------- handshake

    def greet(self, header: bytes = PROTOCOL_HEADER) -> commands.Connection.Start:
        self.send(header)
        _, start = self.read_method()
        assert isinstance(start, commands.Connection.Start), start
        return start

    def start(self, capabilities: dict | None = None, password: str | None = None,
              client_properties: bytes | None = None) -> None:
        """Protocol header, connection.start, then start-ok (default: good credentials)."""
        self.greet()
        if client_properties is None:
            props = {"product": "interop-rawamqp", "capabilities": capabilities or {}}
            self.send(pamqp_frame(commands.Connection.StartOk(
                client_properties=props, mechanism="PLAIN",
                response=f"\0{self.user}\0{self.password if password is None else password}",
                locale="en_US")))
        else:
            self.send(start_ok(self.user, self.password if password is None else password,
                               client_properties))

    def tune(self, frame_max: int = 131072, heartbeat: int = 0, channel_max: int = 2047) -> None:
        _, tune = self.read_method()
        assert isinstance(tune, commands.Connection.Tune), tune
        self.send(pamqp_frame(commands.Connection.TuneOk(
            channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat)))

    def handshake(self, frame_max: int = 131072, heartbeat: int = 0) -> None:
        self.start()
        self.tune(frame_max=frame_max, heartbeat=heartbeat)
        self.send(pamqp_frame(commands.Connection.Open(virtual_host=self.vhost)))
        _, ok = self.read_method()
        assert isinstance(ok, commands.Connection.OpenOk), ok

    def open_channel(self, number: int = 1) -> None:
        self.send(pamqp_frame(commands.Channel.Open(), number))
        channel, ok = self.read_method()
        assert channel == number and isinstance(ok, commands.Channel.OpenOk), (channel, ok)

    def close_channel(self, number: int = 1) -> None:
        self.send(pamqp_frame(
            commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), number))
        channel, ok = self.read_method()
        assert channel == number and isinstance(ok, commands.Channel.CloseOk), (channel, ok)

    # ----------------------------------------------------------------- the answer

    def answer(self, timeout: float = 10.0, skip: tuple[str, ...] = (),
               eof_timeout: float = 10.0) -> Answer:
        """The first significant reply within ``timeout``.

        Heartbeats, content frames and methods named in ``skip`` are passed over. A
        connection.close is answered with close-ok and the socket watched for EOF; a
        channel.close is answered with channel.close-ok.
        """
        deadline = time.monotonic() + timeout
        while not self.buf and not self.eof and self._fill(deadline):
            pass
        while True:
            if self.buf[:4] == b"AMQP":
                while len(self.buf) < 8 and not self.eof and self._fill(deadline):
                    pass
                greeting = bytes(self.buf[:8])
                del self.buf[:8]
                return Answer("protocol header", greeting, closed_after=self.wait_eof(eof_timeout))
            try:
                frame_type, channel, value = self.read_frame(max(0.0, deadline - time.monotonic()))
            except EOFError:
                return Answer("socket closed", None)
            except TimeoutError:
                return Answer("silence", None)
            if frame_type != 1:
                continue
            name = amqp_name(value)
            if isinstance(value, commands.Connection.Close):
                try:
                    self.send(pamqp_frame(commands.Connection.CloseOk()))
                except OSError:
                    pass
                return Answer("connection.close", value.reply_code, value.reply_text,
                              (value.class_id, value.method_id), channel, value,
                              closed_after=self.wait_eof(eof_timeout))
            if isinstance(value, commands.Channel.Close):
                self.send(pamqp_frame(commands.Channel.CloseOk(), channel))
                return Answer("channel.close", value.reply_code, value.reply_text,
                              (value.class_id, value.method_id), channel, value)
            if name in skip:
                continue
            return Answer("ok", name, channel=channel, value=value)


def _reply_text_as_utf8(frame: bytes) -> bytes:
    """A connection.close / channel.close frame with its reply text made valid UTF-8."""
    payload = frame[7:-1]
    text_length = payload[6]
    text = payload[7:7 + text_length].decode("utf-8", "replace").encode()[:255]
    payload = payload[:6] + bytes((len(text),)) + text + payload[7 + text_length:]
    return frame[:3] + struct.pack(">I", len(payload)) + payload + frame[-1:]
