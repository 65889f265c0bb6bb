"""Sans-IO test clients: a broker and sessions in memory, driven with pamqp-built frames.

A :class:`FakeClient` plays the client side of one connection. It builds frames with pamqp,
feeds them to its session's :class:`~amqpbroker.protocol.connection.Connection` and calls
``end_of_batch()`` after each piece of input, as the transport does after each socket read.
What the broker wrote is decoded with ``pamqp.frame.unmarshal`` and handed back by
:meth:`FakeClient.received` as ``(channel, frame)`` pairs.

Feeding modes (h11's ``test_io`` style): ``chunk_size=None`` feeds each send whole;
``chunk_size=1`` feeds it one byte at a time, with an end of batch after every byte, so every
test written against a client can be run both ways (see :data:`FEED_MODES`).

No socket, thread or clock is involved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pamqp import body as pamqp_body, commands, frame as pamqp_frame, header as pamqp_header
from pamqp.heartbeat import Heartbeat

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.session import Session

__all__ = [
    "FakeClient", "ClientPair", "Delivery", "FEED_MODES", "CLIENT_CAPABILITIES",
    "plain_response", "decode_frames", "deliveries", "methods_of", "only",
]

# The ways input is fed: whole, then one byte at a time.
FEED_MODES = {"whole": None, "bytewise": 1}

CLIENT_CAPABILITIES = {
    "consumer_cancel_notify": True,
    "authentication_failure_close": True,
    "publisher_confirms": True,
    "basic.nack": True,
}

_CONTENT_METHODS = (commands.Basic.Deliver, commands.Basic.GetOk, commands.Basic.Return)


def plain_response(user: str = "guest", password: str = "guest") -> str:
    """A SASL PLAIN response: authorization id (empty), user, password, NUL-separated."""
    return f"\0{user}\0{password}"


def decode_frames(data: bytes) -> list[tuple[int, Any]]:
    """Every frame in ``data`` as ``(channel, pamqp frame object)``; a partial frame is an error."""
    frames = []
    offset = 0
    while offset < len(data):
        consumed, channel, frame = pamqp_frame.unmarshal(data[offset:])
        frames.append((channel, frame))
        offset += consumed
    return frames


def methods_of(frames: Iterable[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Only the method frames (and protocol headers) of a list of decoded frames."""
    return [(channel, frame) for channel, frame in frames
            if not isinstance(frame, (pamqp_header.ContentHeader, pamqp_body.ContentBody, Heartbeat))]


def only(frames: list[tuple[int, Any]], kind: type) -> Any:
    """The one frame of type ``kind`` in ``frames`` (asserts there is exactly one)."""
    found = [frame for _, frame in frames if isinstance(frame, kind)]
    assert len(found) == 1, f"expected one {kind.__name__}, got {found!r} in {frames!r}"
    return found[0]


@dataclass
class Delivery:
    """A content-bearing method with its assembled content."""

    channel: int
    method: Any  # Basic.Deliver, Basic.GetOk or Basic.Return
    properties: commands.Basic.Properties
    body: bytes
    body_frames: int

    @property
    def tag(self) -> int:
        return self.method.delivery_tag

    @property
    def redelivered(self) -> bool:
        return self.method.redelivered


def deliveries(frames: list[tuple[int, Any]]) -> list[Delivery]:
    """Assemble ``Deliver``/``GetOk``/``Return`` + header + body frames into :class:`Delivery`
    objects; checks that each content arrives whole and on its method's channel."""
    found: list[Delivery] = []
    index = 0
    while index < len(frames):
        channel, frame = frames[index]
        index += 1
        if not isinstance(frame, _CONTENT_METHODS):
            continue
        header_channel, header = frames[index]
        assert header_channel == channel and isinstance(header, pamqp_header.ContentHeader), frames[index]
        index += 1
        chunks = []
        while sum(map(len, chunks)) < header.body_size:
            body_channel, body = frames[index]
            assert body_channel == channel and isinstance(body, pamqp_body.ContentBody), frames[index]
            chunks.append(body.value)
            index += 1
        data = b"".join(chunks)
        assert len(data) == header.body_size
        found.append(Delivery(channel, frame, header.properties, data, len(chunks)))
    return found


class FakeClient:
    """One client connection to ``broker`` through a :class:`Session`, fed in memory.

    ``capabilities`` are the client capabilities sent in ``start-ok``; ``chunk_size`` is how many
    bytes are fed per ``receive_data`` call (None: each send whole).
    """

    def __init__(self, broker: Broker | None = None, *, chunk_size: int | None = None,
                 handshake: bool = True, user: str = "guest", password: str = "guest",
                 vhost: str = "/", capabilities: dict[str, bool] | None = None,
                 product: str = "amqpbroker-tests", frame_max: int | None = None,
                 channel_max: int | None = None, heartbeat: int = 0) -> None:
        self.broker = broker if broker is not None else Broker()
        self.session = Session(self.broker)
        self.connection = self.session.connection
        self.chunk_size = chunk_size
        self.capabilities = dict(CLIENT_CAPABILITIES if capabilities is None else capabilities)
        self.product = product
        self.raw = bytearray()  # every byte the broker ever wrote to this client
        self._unread = 0
        if handshake:
            self.handshake(user=user, password=password, vhost=vhost, frame_max=frame_max,
                           channel_max=channel_max, heartbeat=heartbeat)

    # ------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        """Give ``data`` to the connection (whole or in chunks), ending a batch after each piece."""
        size = self.chunk_size or len(data) or 1
        for start in range(0, len(data), size):
            self.connection.receive_data(data[start:start + size])
            self.session.end_of_batch()

    def send(self, method: Any, channel: int = 1) -> None:
        """Send one method frame."""
        self.feed(pamqp_frame.marshal(method, channel))

    def send_many(self, *frames: tuple[Any, int] | bytes) -> None:
        """Send several frames as one piece of input (one read batch when fed whole).

        Each item is ``(pamqp frame object, channel)`` or already encoded bytes."""
        self.feed(b"".join(item if isinstance(item, bytes) else pamqp_frame.marshal(*item)
                           for item in frames))

    def publish_frames(self, channel: int, exchange: str, routing_key: str, body: bytes = b"",
                       properties: commands.Basic.Properties | None = None, *,
                       mandatory: bool = False, body_frame_size: int | None = None) -> bytes:
        """The encoded frames of one publish: method, header, body split every ``body_frame_size``
        bytes (default: one body frame; none for an empty body)."""
        parts = [
            pamqp_frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                       mandatory=mandatory), channel),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), properties), channel),
        ]
        step = body_frame_size or len(body) or 1
        for start in range(0, len(body), step):
            parts.append(pamqp_frame.marshal(pamqp_body.ContentBody(body[start:start + step]), channel))
        return b"".join(parts)

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes = b"",
                properties: commands.Basic.Properties | None = None, *, mandatory: bool = False,
                body_frame_size: int | None = None) -> None:
        """Publish one message (one piece of input)."""
        self.feed(self.publish_frames(channel, exchange, routing_key, body, properties,
                                      mandatory=mandatory, body_frame_size=body_frame_size))

    # ------------------------------------------------------------ output

    def received_bytes(self) -> bytes:
        """The bytes the broker wrote since the last call."""
        out = self.session.out
        data = b"".join(out)
        del out[:]  # the list is shared with the connection and channels: clear it in place
        self.raw += data
        return data

    def received(self) -> list[tuple[int, Any]]:
        """The frames the broker wrote since the last call, as ``(channel, frame)``."""
        return decode_frames(self.received_bytes())

    def methods(self) -> list[tuple[int, Any]]:
        """Like :meth:`received`, method frames only."""
        return methods_of(self.received())

    def expect(self, *kinds: type) -> list[Any]:
        """Assert the broker wrote exactly these method types since the last call; return them."""
        got = self.methods()
        assert [type(frame) for _, frame in got] == list(kinds), got
        return [frame for _, frame in got]

    # ------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self.connection.closed

    # ------------------------------------------------------------ conveniences

    def handshake(self, *, user: str = "guest", password: str = "guest", vhost: str = "/",
                  frame_max: int | None = None, channel_max: int | None = None,
                  heartbeat: int = 0) -> None:
        """Protocol header, start-ok (PLAIN), tune-ok, open; asserts each answer."""
        self.feed(pamqp_header.ProtocolHeader().marshal())
        self.expect(commands.Connection.Start)
        self.send(self.start_ok(user, password), 0)
        (tune,) = self.expect(commands.Connection.Tune)
        self.send(commands.Connection.TuneOk(
            channel_max=tune.channel_max if channel_max is None else channel_max,
            frame_max=tune.frame_max if frame_max is None else frame_max,
            heartbeat=heartbeat), 0)
        self.expect()
        self.send(commands.Connection.Open(virtual_host=vhost), 0)
        self.expect(commands.Connection.OpenOk)

    def start_ok(self, user: str = "guest", password: str = "guest") -> commands.Connection.StartOk:
        properties: dict[str, Any] = {"product": self.product, "capabilities": self.capabilities}
        return commands.Connection.StartOk(client_properties=properties, mechanism="PLAIN",
                                           response=plain_response(user, password), locale="en_US")

    def open_channel(self, channel: int = 1) -> None:
        self.send(commands.Channel.Open(), channel)
        self.expect(commands.Channel.OpenOk)

    def declare_queue(self, name: str, channel: int = 1, **flags: Any) -> commands.Queue.DeclareOk:
        self.send(commands.Queue.Declare(queue=name, **flags), channel)
        (ok,) = self.expect(commands.Queue.DeclareOk)
        return ok

    def consume(self, queue: str, tag: str, channel: int = 1, *, no_ack: bool = False,
                **flags: Any) -> list[tuple[int, Any]]:
        """``basic.consume``; returns every frame written, ``consume-ok`` first."""
        self.send(commands.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack, **flags), channel)
        frames = self.received()
        assert isinstance(frames[0][1], commands.Basic.ConsumeOk), frames
        return frames

    def ack(self, tag: int, channel: int = 1, *, multiple: bool = False) -> None:
        self.send(commands.Basic.Ack(delivery_tag=tag, multiple=multiple), channel)

    def close(self) -> None:
        self.send(commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 0)


class ClientPair:
    """One broker, two connected clients (``a`` and ``b``), each with channel 1 open."""

    def __init__(self, *, chunk_size: int | None = None, **client_options: Any) -> None:
        self.broker = Broker()
        self.a = FakeClient(self.broker, chunk_size=chunk_size, **client_options)
        self.b = FakeClient(self.broker, chunk_size=chunk_size, **client_options)
        self.a.open_channel(1)
        self.b.open_channel(1)
