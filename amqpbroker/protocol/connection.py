"""The connection state machine: handshake, tuning, channels, errors, close.

Theory of operation
-------------------
``receive_data(bytes)`` feeds the machine; it appends every frame it answers with to ``out``
(a list of ``bytes`` the transport joins and sends once per batch) and calls its
:class:`ConnectionHandler` (the broker session) for logins, vhost opening and channel traffic.
It never touches a socket or a clock: the transport tells it when time passed
(:meth:`heartbeat_due`).

States::

    AWAIT_HEADER ─► AWAIT_START_OK ─► AWAIT_TUNE_OK ─► AWAIT_OPEN ─► OPEN ─► CLOSING ─► CLOSED
                                                                        └──────────────────►┘

Errors: anything raised while handling a frame that is an :class:`~amqpbroker.errors.AMQPError`
is turned into frames here and nowhere else: a ``ChannelError`` becomes ``channel.close`` (the
channel then discards frames until ``close-ok``); a ``ConnectionError``, or any error on channel 0
or during the handshake, becomes ``connection.close`` (then everything but ``close`` /
``close-ok`` is discarded).
"""

from __future__ import annotations

import enum
import functools
import logging
import platform
from collections.abc import Mapping
from typing import Any, Protocol

from pamqp import commands

from amqpbroker import __version__
from amqpbroker.codec.frames import (
    FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE, HEARTBEAT_FRAME,
    PROTOCOL_HEADER, PUBLISH_CONTENT, FrameReader,
)
from amqpbroker.codec.methods import PUBLISH_ID, Publish, decode_method, encode_method, method_ids
from amqpbroker.errors import AMQPError, ChannelError, ConnectionError, ReplyCode, log_internal_error
from amqpbroker.protocol.channel import MAX_MESSAGE_SIZE, ChannelMachine

__all__ = ["Connection", "ConnectionHandler", "State", "AuthenticationFailed", "SERVER_CAPABILITIES"]

log = logging.getLogger("amqpbroker.connection")

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class State(enum.Enum):
    AWAIT_HEADER = "await protocol header"
    AWAIT_START_OK = "await connection.start-ok"
    AWAIT_TUNE_OK = "await connection.tune-ok"
    AWAIT_OPEN = "await connection.open"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class AuthenticationFailed(Exception):
    """Raised by :meth:`ConnectionHandler.login`; the text goes to the log, not to the client."""


class ConnectionHandler(Protocol):
    """What the connection machine calls; implemented by :class:`amqpbroker.broker.session.Session`."""

    def login(self, mechanism: str, response: bytes) -> str: ...
    def open_vhost(self, name: str) -> None: ...
    def channel_opened(self, channel: int) -> None: ...
    def channel_closed(self, channel: int) -> None: ...
    def on_method(self, channel: int, method: Any) -> None: ...
    def on_publish(self, channel: int, publish: Publish, header: bytes, body: bytes) -> None: ...
    def connection_closed(self) -> None: ...


# AMQP 0-9 as some old clients announce it (class 1, instance 1): RabbitMQ serves them 0-9-1
_LEGACY_0_9_HEADER = b"AMQP\x01\x01\x00\x09"
FRAME_LIMIT_BEFORE_TUNE = 8192  # RabbitMQ 4.1+ (3.x: 4096); larger start-oks are dropped


# the handshake's answers are the same for every connection: encoded once
@functools.lru_cache(maxsize=8)
def _start_frame(cluster_name: str, mechanisms: str) -> bytes:
    properties = {
        "capabilities": SERVER_CAPABILITIES,
        "cluster_name": cluster_name,
        "copyright": "amqpbroker contributors",
        "information": "A RabbitMQ-compatible AMQP 0-9-1 broker in Python",
        "platform": f"Python {platform.python_version()}",
        "product": "amqpbroker",
        "version": __version__,
    }
    return encode_method(0, commands.Connection.Start(
        version_major=0, version_minor=9, server_properties=properties,
        mechanisms=mechanisms, locales="en_US"))


@functools.lru_cache(maxsize=8)
def _tune_frame(channel_max: int, frame_max: int, heartbeat: int) -> bytes:
    return encode_method(0, commands.Connection.Tune(channel_max=channel_max, frame_max=frame_max,
                                                     heartbeat=heartbeat))


@functools.lru_cache(maxsize=256)
def _channel_open_ok_frame(number: int) -> bytes:
    return encode_method(number, commands.Channel.OpenOk())


_OPEN_OK_FRAME = encode_method(0, commands.Connection.OpenOk())


def _check_frame_type(frame_type: int, number: int, payload: bytes = b"") -> None:
    """Frame types other than method, header and body: heartbeats belong on channel 0 only,
    with no payload."""
    if frame_type == FRAME_HEARTBEAT:
        if number:
            raise ConnectionError(ReplyCode.UNEXPECTED_FRAME, f"heartbeat frame on channel {number}")
        if payload:
            raise ConnectionError(ReplyCode.FRAME_ERROR, "heartbeat frame with a payload")
    elif frame_type not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY):
        raise ConnectionError(ReplyCode.FRAME_ERROR, f"unknown frame type {frame_type}")


class Connection:
    """One client connection's AMQP state, from protocol header to close."""

    def __init__(self, handler: ConnectionHandler, *, channel_max: int = 2047,
                 frame_max: int = 131072, heartbeat: int = 60, cluster_name: str = "amqpbroker",
                 max_message_size: int = MAX_MESSAGE_SIZE, mechanisms: str = "PLAIN AMQPLAIN") -> None:
        self.handler = handler
        self.mechanisms = mechanisms  # offered in connection.start (EXTERNAL with a client certificate)
        self.max_message_size = max_message_size  # larger declared body sizes get 406
        self.state = State.AWAIT_HEADER
        self.out: list[bytes] = []
        self.server_channel_max = channel_max
        self.server_frame_max = frame_max
        self.server_heartbeat = heartbeat
        self.channel_max = channel_max
        self.frame_max = FRAME_MIN_SIZE
        self.heartbeat = 0
        self.cluster_name = cluster_name
        self.client_properties: Mapping[str, Any] = {}
        self.user = ""
        self.vhost = ""
        self.channels: dict[int, ChannelMachine] = {}
        self.close_reason: AMQPError | None = None
        # before tune-ok, frames up to FRAME_LIMIT_BEFORE_TUNE (a start-ok with large client
        # properties); then the negotiated frame_max
        self._reader = FrameReader(frame_max=FRAME_LIMIT_BEFORE_TUNE, publishes=True)
        # the last publish method decoded, by its payload (the reader hands a repeated one over
        # as the same object)
        self._publish_payload = b""
        self._publish: Publish | None = None
        self._handshake_method: type | None = commands.Connection.StartOk
        # a reply is deferred (basic.get waiting for a page): frames after it wait, in order
        self.paused = False
        self._pauses = 0  # reasons holding the input back (each resume() releases one)
        self._held: list[tuple] = []
        # frames handled per turn (0: all that came in): the transport sets it so that one busy
        # publisher's large read cannot keep the loop from everyone else; what is left over
        # waits in the reader and ``input_pending`` says so
        self.slice_frames = 0
        self.input_pending = False
        self.client_closes = False  # close-ok was sent: the client is the one to close the socket

    # ----------------------------------------------------------------- public API

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def client_capability(self, name: str) -> bool:
        capabilities = self.client_properties.get("capabilities")
        return isinstance(capabilities, Mapping) and bool(capabilities.get(name, False))

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; answers accumulate in ``out``."""
        if self.state is State.CLOSED:
            return
        self._reader.feed(data)
        if self.paused:
            return
        if self.state is State.AWAIT_HEADER:
            header = self._reader.take_bytes(len(PROTOCOL_HEADER))
            if header is None:
                return
            if header != PROTOCOL_HEADER and header != _LEGACY_0_9_HEADER:
                self.out.append(PROTOCOL_HEADER)
                self._set_closed()
                return
            self._send_start()
        self._process()

    def pause(self) -> None:
        """Hold every frame after the one being handled until :meth:`resume` (the session
        deferred its reply); the transport stops reading meanwhile. Pauses nest: each one is
        released by one :meth:`resume`, and input goes on once all are."""
        self._pauses += 1
        self.paused = True

    def resume(self) -> None:
        """Release one pause; once none is left, handle the frames held, then whatever else
        was fed."""
        if self._pauses:
            self._pauses -= 1
        if self.paused and not self._pauses:
            self.paused = False
            self._process()

    def receive_more(self) -> None:
        """Go on with input left over by the last turn (``input_pending``)."""
        if self.state is not State.CLOSED and not self.paused:
            self._process()

    def _process(self) -> None:
        budget = self.slice_frames
        self.input_pending = False
        while self.state is not State.CLOSED and not self.paused:
            if budget < 0:
                self.input_pending = True  # the rest on the next turn
                return
            held = bool(self._held)
            if held:
                frames, self._held = self._held, []
            else:
                try:
                    frames = self._reader.read_frames(budget)
                except ConnectionError as exc:
                    if self.state in (State.OPEN, State.CLOSING):
                        self._connection_error(exc)  # (once: closing discards the rest)
                    else:  # a frame error during the handshake: RabbitMQ just drops the socket
                        log.warning("closing a connection during its handshake: %s", exc.reply_text)
                        self._set_closed()
                    return
                if not frames:
                    return
            if budget:
                taken = self._reader.frames_taken if not held else sum(
                    3 if frame[0] == PUBLISH_CONTENT else 1 for frame in frames)
                budget = budget - taken or -1
            self._handle_frames(frames)

    def close(self, reply_code: int, text: str) -> None:
        """Server-initiated close (shutdown, an operator): ``connection.close`` to the client."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if self.state is not State.OPEN:
            self._set_closed()
            return
        self._connection_error(ConnectionError(reply_code, text))

    def _send_close_ok(self) -> None:
        """The client closed: close-ok, after which the client closes the socket (the transport
        waits for that, discarding what still arrives, as RabbitMQ does)."""
        self.out.append(encode_method(0, commands.Connection.CloseOk()))
        self.client_closes = True

    def mid_content(self) -> bool:
        """Is a message being received (its method or header in, its body not all there)? A
        resource alarm holds such a connection back too: a large first message is memory."""
        return any(channel.mid_content for channel in self.channels.values())

    def close_channel(self, number: int, exc: ChannelError) -> None:
        """Server-initiated ``channel.close`` outside the handling of a frame (a deferred reply
        that failed)."""
        channel = self.channels.get(number)
        if channel is not None and not channel.closing and self.state is State.OPEN:
            self._channel_error(channel, exc)

    def heartbeat_frame(self) -> bytes:
        return HEARTBEAT_FRAME

    def lost(self) -> None:
        """The transport is gone (socket closed or heartbeats missed)."""
        self._set_closed()

    # ----------------------------------------------------------------- frames

    def _handle_frames(self, frames: list[tuple]) -> None:
        channels = self.channels
        on_publish = self.handler.on_publish
        is_open = State.OPEN
        count = len(frames)
        index = 0
        while index < count:
            frame = frames[index]
            index += 1
            if self.paused:
                self._held = frames[index - 1:]
                return
            if frame[0] == PUBLISH_CONTENT:  # the usual publish: its header and whole body taken at once
                _, number, payload, header, body = frame
                channel = channels.get(number)
                if self.state is is_open and channel is not None and not channel.closing:
                    method = self._publish if payload is self._publish_payload else self._decoded_publish(payload)
                    if method is not None and channel.whole_content(header, body):
                        try:
                            on_publish(number, method, header, body)
                        except AMQPError as exc:
                            self._frame_failed(channel, exc.for_method(*PUBLISH_ID))
                        except Exception as exc:  # a bug of ours: this connection goes, the broker stays
                            self._internal_error(f"channel {number}", exc)
                        continue
                # anything unusual (or a channel not open): frame by frame, which answers it
                frames[index - 1:index] = ((FRAME_METHOD, number, payload), (FRAME_HEADER, number, header),
                                           (FRAME_BODY, number, body))
                count += 2
                index -= 1
                continue
            frame_type, number, payload = frame
            if self.state is not is_open:
                self._handle_outside_open(frame_type, number, payload)
                if self.state is State.CLOSED:
                    return
                continue
            channel = channels.get(number)  # channel 0 is never in the table
            method = None
            try:
                if channel is None or channel.closing:
                    self._handle_unopened_or_closing(frame_type, number, channel, payload)
                elif frame_type == FRAME_BODY:
                    content = channel.on_body(payload)
                    if content is not None:
                        on_publish(number, *content)
                elif frame_type == FRAME_METHOD:
                    method = decode_method(payload)
                    if type(method) is Publish:
                        channel.start_content(method)
                    else:
                        channel.reject_method_mid_content()
                        self._channel_method(channel, method)
                elif frame_type == FRAME_HEADER:
                    content = channel.on_header(payload)
                    if content is not None:
                        on_publish(number, *content)
                else:
                    _check_frame_type(frame_type, number, payload)
            except AMQPError as exc:
                if frame_type != FRAME_METHOD:
                    exc.for_method(*PUBLISH_ID)
                elif method is not None:
                    exc.for_method(*method_ids(method))
                self._frame_failed(channel, exc)
            except Exception as exc:  # a bug of ours: this connection goes, the broker stays
                self._internal_error(f"channel {number}", exc)

    def _decoded_publish(self, payload: bytes) -> Publish | None:
        """A publish method's payload decoded and kept as the last one (None: it does not decode;
        frame by frame answers that)."""
        try:
            method = decode_method(payload)
        except AMQPError:
            return None
        self._publish_payload, self._publish = payload, method
        return method  # type: ignore[return-value]

    def _frame_failed(self, channel: ChannelMachine | None, exc: AMQPError) -> None:
        if isinstance(exc, ChannelError) and channel is not None and not channel.closing:
            self._channel_error(channel, exc)
        else:
            self._connection_error(exc)

    def _channel_method(self, channel: ChannelMachine, method: Any) -> None:
        if isinstance(method, commands.Channel.Close):
            self._channel_close_from_client(channel)
        elif isinstance(method, commands.Channel.Open):
            raise ConnectionError(ReplyCode.CHANNEL_ERROR, "second 'channel.open' seen", 20, 10)
        else:
            self.handler.on_method(channel.number, method)

    def _handle_unopened_or_closing(self, frame_type: int, number: int, channel: ChannelMachine | None,
                                    payload: bytes) -> None:
        if channel is None:
            self._handle_unopened(frame_type, number, payload)
        else:
            self._handle_closing_channel(frame_type, channel, payload)

    def _handle_unopened(self, frame_type: int, number: int, payload: bytes) -> None:
        _check_frame_type(frame_type, number, payload)
        if frame_type == FRAME_HEARTBEAT:
            return
        if frame_type != FRAME_METHOD:
            raise ConnectionError(ReplyCode.UNEXPECTED_FRAME if number == 0 else ReplyCode.CHANNEL_ERROR,
                                  f"unexpected frame type {frame_type} on channel {number}")
        method = decode_method(payload)
        if number == 0:
            self._handle_channel_zero(method)
            return
        if isinstance(method, commands.Channel.Open):
            if len(self.channels) >= self.channel_max:
                raise ConnectionError(ReplyCode.NOT_ALLOWED,
                                      f"number of channels opened ({len(self.channels)}) has reached "
                                      f"the negotiated channel_max ({self.channel_max})", 20, 10)
            self.handler.channel_opened(number)  # (may refuse it: a limit)
            self.channels[number] = ChannelMachine(number, self.max_message_size)
            self.out.append(_channel_open_ok_frame(number))
            return
        class_id, method_id = method_ids(method)
        raise ConnectionError(ReplyCode.CHANNEL_ERROR, f"expected 'channel.open' on channel {number}",
                              class_id, method_id)

    def _handle_closing_channel(self, frame_type: int, channel: ChannelMachine, payload: bytes) -> None:
        if frame_type != FRAME_METHOD:
            return
        method = decode_method(payload)
        if isinstance(method, commands.Channel.CloseOk):
            del self.channels[channel.number]
        elif isinstance(method, commands.Channel.Close):
            self.out.append(encode_method(channel.number, commands.Channel.CloseOk()))

    def _handle_channel_zero(self, method: object) -> None:
        if isinstance(method, commands.Connection.Close):
            self._send_close_ok()
            self._set_closed()
        elif isinstance(method, commands.Connection.CloseOk):
            raise ConnectionError(ReplyCode.CHANNEL_ERROR, "unexpected connection.close-ok", 10, 51)
        elif isinstance(method, commands.Connection.UpdateSecret):
            self.out.append(encode_method(0, commands.Connection.UpdateSecretOk()))
        elif isinstance(method, (commands.Connection.Blocked, commands.Connection.Unblocked)):
            pass  # a client telling us it is blocked needs no answer
        else:
            class_id, method_id = method_ids(method)
            raise ConnectionError(ReplyCode.CHANNEL_ERROR,
                                  f"unexpected method {type(method).__name__} on channel 0",
                                  class_id, method_id)

    def _channel_close_from_client(self, channel: ChannelMachine) -> None:
        del self.channels[channel.number]
        self.handler.channel_closed(channel.number)
        self.out.append(encode_method(channel.number, commands.Channel.CloseOk()))

    # ----------------------------------------------------------------- handshake

    def _send_start(self) -> None:
        self.state = State.AWAIT_START_OK
        self.out.append(_start_frame(self.cluster_name, self.mechanisms))

    def _handle_outside_open(self, frame_type: int, number: int, payload: bytes) -> None:
        try:
            if self.state is State.CLOSING:
                if frame_type == FRAME_METHOD and number == 0:
                    method = decode_method(payload)
                    if isinstance(method, commands.Connection.Close):
                        self._send_close_ok()
                        self._set_closed()
                    elif isinstance(method, commands.Connection.CloseOk):
                        self._set_closed()
                return
            if frame_type == FRAME_HEARTBEAT:
                return
            if frame_type != FRAME_METHOD or number != 0:
                raise ConnectionError(ReplyCode.UNEXPECTED_FRAME,
                                      f"unexpected frame on channel {number} during handshake")
            method = decode_method(payload)
            if isinstance(method, commands.Connection.Close):
                self._send_close_ok()
                self._set_closed()
                return
            expected = self._handshake_method
            if not isinstance(method, expected):
                class_id, method_id = method_ids(method)
                raise ConnectionError(ReplyCode.COMMAND_INVALID,
                                      f"expected {expected.__name__}, got {type(method).__name__}",
                                      class_id, method_id)
            if isinstance(method, commands.Connection.StartOk):
                self._on_start_ok(method)
            elif isinstance(method, commands.Connection.TuneOk):
                self._on_tune_ok(method)
            elif isinstance(method, commands.Connection.Open):
                self._on_open(method)
        except AMQPError as exc:  # every error before OPEN closes the connection
            self._connection_error(exc)
        except Exception as exc:
            self._internal_error("the handshake", exc)

    def _on_start_ok(self, start_ok: commands.Connection.StartOk) -> None:
        properties = start_ok.client_properties
        self.client_properties = properties if isinstance(properties, Mapping) else {}
        mechanism = start_ok.mechanism
        response = start_ok.response
        if isinstance(response, str):
            response = response.encode("utf-8", "surrogateescape")
        try:
            self.user = self.handler.login(mechanism, response)
        except AuthenticationFailed as exc:
            log.warning("login refused: %s", exc)
            text = (f"Login was refused using authentication mechanism {mechanism}. "
                    f"For details see the broker logfile.")
            if self.client_capability("authentication_failure_close"):
                self._connection_error(ConnectionError(ReplyCode.ACCESS_REFUSED, text, 10, 11))
            else:
                self._set_closed()
            return
        self._handshake_method = commands.Connection.TuneOk
        self.state = State.AWAIT_TUNE_OK
        self.out.append(_tune_frame(self.server_channel_max, self.server_frame_max, self.server_heartbeat))

    def _on_tune_ok(self, tune_ok: commands.Connection.TuneOk) -> None:
        frame_max = tune_ok.frame_max
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise ConnectionError(ReplyCode.NOT_ALLOWED,
                                  f"frame_max={frame_max} < {FRAME_MIN_SIZE} min size", 10, 31)
        if self.server_frame_max and frame_max > self.server_frame_max:
            raise ConnectionError(ReplyCode.NOT_ALLOWED,
                                  f"frame_max={frame_max} > {self.server_frame_max} max size", 10, 31)
        if tune_ok.channel_max > self.server_channel_max:
            raise ConnectionError(ReplyCode.NOT_ALLOWED,
                                  f"channel_max={tune_ok.channel_max} > {self.server_channel_max} max", 10, 31)
        self.frame_max = frame_max or self.server_frame_max
        self.channel_max = tune_ok.channel_max or self.server_channel_max or 65535
        self.heartbeat = tune_ok.heartbeat
        self._reader.frame_max = self.frame_max
        self._handshake_method = commands.Connection.Open
        self.state = State.AWAIT_OPEN

    def _on_open(self, open_method: commands.Connection.Open) -> None:
        vhost = open_method.virtual_host or "/"
        self.handler.open_vhost(vhost)
        self.vhost = vhost
        self._handshake_method = None
        self.state = State.OPEN
        self.out.append(_OPEN_OK_FRAME)
        name = self.client_properties.get("connection_name")
        log.info("connection opened: user %r, vhost %r, client %s%s", self.user, vhost,
                 self.client_properties.get("product", "?"), f", name {name!r}" if name else "")

    # ----------------------------------------------------------------- errors and close

    def _channel_error(self, channel: ChannelMachine, exc: ChannelError) -> None:
        log.info("channel %d closed by the broker: %s", channel.number, exc.reply_text)
        channel.closing = True
        self.handler.channel_closed(channel.number)
        self.out.append(encode_method(channel.number, commands.Channel.Close(
            reply_code=exc.reply_code, reply_text=exc.reply_text,
            class_id=exc.class_id, method_id=exc.method_id)))

    def _internal_error(self, where: str, exc: Exception) -> None:
        """An unexpected exception while handling this connection's input: logged (bounded),
        and the connection closed with 541 INTERNAL_ERROR; nothing else is affected."""
        log_internal_error(log, f"{where} of a connection (user {self.user!r})", exc)
        self._connection_error(ConnectionError(ReplyCode.INTERNAL_ERROR,
                                               f"internal error ({type(exc).__name__})"))

    def _connection_error(self, exc: AMQPError) -> None:
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if exc.reply_code != ReplyCode.CONNECTION_FORCED:
            log.warning("closing connection (user %r): %s", self.user, exc.reply_text)
        self.close_reason = exc
        self.out.append(encode_method(0, commands.Connection.Close(
            reply_code=exc.reply_code, reply_text=exc.reply_text,
            class_id=exc.class_id, method_id=exc.method_id)))
        self.state = State.CLOSING
        self._release_channels()

    def _release_channels(self) -> None:
        numbers = list(self.channels)
        self.channels.clear()
        for number in numbers:
            self.handler.channel_closed(number)

    def _set_closed(self) -> None:
        if self.state is State.CLOSED:
            return
        previous = self.state
        self.state = State.CLOSED
        # input not handled yet (a partial frame, frames held behind a pause) is dropped now,
        # not when the collector frees the session and its connection
        self._reader = FrameReader(frame_max=self.frame_max, publishes=True)
        self._held = []
        self._release_channels()
        if previous in (State.OPEN, State.CLOSING):
            self.handler.connection_closed()
