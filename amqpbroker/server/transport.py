"""One client connection on a socket: a reader, a writer and a timer in one task group.

The reader takes one large ``receive()`` at a time, feeds it whole to the connection machine,
then lets the broker dispatch once for the batch. Output is written when the batch is done: at
once, straight to the asyncio transport under the stream when nothing is waiting to be sent (no
task switch between a publish and its delivery), otherwise by the writer, which sleeps until
woken, joins every pending output piece, sends once and waits while the socket is full. The
timer sends heartbeats and drops a peer that missed two heartbeat intervals (or did not finish
its handshake in time).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import anyio
import anyio.lowlevel
import anyio.abc
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSAttribute

from amqpbroker.broker.auth import is_loopback_address
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.flow import FLOW_WAIT
from amqpbroker.broker.session import Session
from amqpbroker.codec.frames import HEARTBEAT_FRAME
from amqpbroker.errors import ReplyCode, log_internal_error
from amqpbroker.protocol.connection import State
from amqpbroker.server.tls import certificate_user

__all__ = ["serve_connection", "HANDSHAKE_TIMEOUT", "CLOSE_TIMEOUT"]

log = logging.getLogger("amqpbroker.transport")

READ_SIZE = 256 * 1024
BLOCKED_POLL = 0.05  # seconds between looks at the alarms while a publisher is blocked
HANDSHAKE_TIMEOUT = 10.0  # seconds to complete connection.open, as RabbitMQ
CLOSE_TIMEOUT = 3.0  # seconds to wait for close-ok after the broker sent connection.close
CLOSED_WAIT = 10.0  # seconds to wait for the client to close its socket after close-ok
PAUSED_POLL = 0.5  # seconds between looks at a paused connection (its heartbeat clock held)


def direct_transport(stream: object) -> asyncio.WriteTransport | None:
    """The asyncio transport under an anyio socket stream (anyio's asyncio backend keeps it as
    ``_transport``), written to without a task switch; None where there is none (another
    backend, a wrapping stream such as TLS): then every write goes through the writer task.
    ``tests/test_transport.py`` checks that a plain TCP stream has one."""
    transport = getattr(stream, "_transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None


class _Transport:
    def __init__(self, stream: SocketStream, broker: Broker, cert_login_from: str = "common_name") -> None:
        self.stream = stream
        self.broker = broker
        remote = stream.extra(SocketAttribute.remote_address, ("?", 0))
        host = str(remote[0]) if isinstance(remote, tuple) else str(remote)
        self.peer = f"{host}:{remote[1]}" if isinstance(remote, tuple) else host
        local = stream.extra(SocketAttribute.local_address, ("?", 0))
        local_text = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local)
        tls = stream.extra(TLSAttribute.ssl_object, None) is not None
        certificate = stream.extra(TLSAttribute.peer_certificate, None) if tls else None
        self.session = Session(broker, peer=self.peer, from_loopback=is_loopback_address(host), tls=tls,
                               certificate_user=certificate_user(certificate, cert_login_from))
        self.session.name = f"{self.peer} -> {local_text}"  # as RabbitMQ names connections
        self.session.wake = self.wake
        self.session.on_resume = self._on_resume
        self._resumed: anyio.Event | None = None  # made while the connection is paused
        self.connection = self.session.connection
        self._output_ready: anyio.Event | None = None  # made with the writer task
        self._direct = direct_transport(stream)
        self._sending = False  # the writer holds output not yet handed to the transport
        self._group: anyio.abc.TaskGroup | None = None  # the connection's tasks, while it runs
        self.last_read = self.last_write = time.monotonic()
        self.closing_since: float | None = None

    def wake(self) -> None:
        """Output is pending: write it now if nothing is queued before it, else wake the writer."""
        out = self.connection.out
        direct = self._direct
        if (out and direct is not None and not self._sending and not direct.get_write_buffer_size()
                and not direct.is_closing()):
            data = b"".join(out)
            out.clear()
            session = self.session
            session.out_bytes = 0
            try:
                direct.write(data)
            except (RuntimeError, OSError):  # the socket is going: the reader sees it
                self._wake_writer()
                return
            self.last_write = time.monotonic()
            connection = self.connection
            if (direct.get_write_buffer_size() or session.paused_for_output or session.output_saturated
                    or (connection.closed and not connection.client_closes)):
                self._wake_writer()  # it waits for the socket and resumes output, or ends the connection
            return
        self._wake_writer()

    def _wake_writer(self) -> None:
        """The writer task starts the first time it is needed (a full socket, or no transport
        to write to directly): most connections never need it."""
        if self._output_ready is None:
            if self._group is None:  # not running any more
                return
            self._output_ready = anyio.Event()
            self._group.start_soon(self._write_loop, self._group.cancel_scope)
        self._output_ready.set()

    def _on_resume(self) -> None:
        if self._resumed is not None:
            self._resumed.set()
        self.wake()

    async def run(self) -> None:
        try:
            sock = self.stream.extra(SocketAttribute.raw_socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, anyio.TypedAttributeLookupError):
            pass
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                if self._direct is None:  # every write goes through the writer
                    self._wake_writer()
                group.start_soon(self._timer_loop, group.cancel_scope)
                await self._read_loop()
                group.cancel_scope.cancel()
        finally:
            self._group = None
            self._lost()

    async def _read_loop(self) -> None:
        connection = self.connection
        session = self.session
        receive = self.stream.receive
        broker = self.broker
        while not connection.closed:
            try:
                data = await receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            if broker.alarms and (session.published or connection.mid_content()):
                await self._blocked()  # what it sent waits, unprocessed, until the alarm clears
            self.last_read = time.monotonic()
            connection.slice_frames = await self._frames_for_turn()
            if not self._handled(connection.receive_data, data):
                await self._flush_and_wait()  # the close frame goes out before the socket
                return
            while True:
                # a deferred reply (basic.get waiting for a page, tx.commit for a sync, answers
                # the client does not read): read no more until it is resumed; the held input is
                # handled then, in whichever task resumed it, so a close among it is seen just
                # below. The peer is not expected to send heartbeats meanwhile (they wait unread)
                while connection.paused and not connection.closed:
                    if self._resumed is None:
                        self._resumed = anyio.Event()
                    with anyio.move_on_after(PAUSED_POLL):
                        await self._resumed.wait()
                    if self._resumed.is_set():
                        self._resumed = None
                    self.last_read = time.monotonic()
                if not connection.input_pending or connection.closed:
                    break
                # the rest of a large read waits one turn of the loop: consumers' acks and
                # deliveries go between a publisher's slices
                if connection.out:
                    self.wake()
                await anyio.lowlevel.checkpoint()
                if broker.alarms and (session.published or connection.mid_content()):
                    await self._blocked()
                connection.slice_frames = await self._frames_for_turn()
                self.last_read = time.monotonic()  # its input (heartbeats too) is being read
                if not self._handled(connection.receive_more):
                    await self._flush_and_wait()
                    return
            if connection.out:
                self.wake()
            if connection.closed:
                await self._flush_and_wait()
                if connection.client_closes:
                    await self._wait_for_client_to_close()
                return

    async def _frames_for_turn(self) -> int:
        """The frames this turn may handle (flow.py): a publisher whose queues delivered
        nothing since its last turn waits for them, a millisecond at a time."""
        flow = self.session.flow
        frames = flow.frames_for_turn()
        while not frames:
            await anyio.sleep(FLOW_WAIT)
            frames = flow.frames_for_turn(waited=True)
        return frames

    def _handled(self, handle, *args) -> bool:
        """Feed input to the connection machine and dispatch what it changed; False when a bug of
        ours for this connection closed it (the broker stays)."""
        try:
            handle(*args)
            self.session.end_of_batch()
            return True
        except Exception as exc:
            log_internal_error(log, f"connection {self.peer}", exc)
            self.connection.close(ReplyCode.INTERNAL_ERROR, "internal error")
            return False

    async def _blocked(self) -> None:
        """A publisher while a resource alarm is on: tell it (``connection.blocked``) and take
        nothing more from it until the alarm clears, as RabbitMQ does. Its heartbeats are not
        expected meanwhile (they wait unread)."""
        self.session.block()
        self.wake()
        while self.broker.alarms and self.connection.state is State.OPEN:  # not closing
            await anyio.sleep(BLOCKED_POLL)
            self.last_read = time.monotonic()
        self.session.unblock()
        self.wake()

    async def _flush_and_wait(self) -> None:
        """Give the writer a moment to send the last frames (close-ok) before the socket goes."""
        with anyio.move_on_after(1.0):
            while self.connection.out:
                self.wake()
                await anyio.sleep(0.005)

    async def _wait_for_client_to_close(self) -> None:
        """After close-ok the client closes the socket; until it does (or ``CLOSED_WAIT``
        passes), what it still sends is read and discarded. Closing at once would reset a client
        still writing (amqplib's close can overtake publishes queued on its channels) and it
        would never see its close-ok."""
        with anyio.move_on_after(CLOSED_WAIT):
            while True:
                try:
                    await self.stream.receive(READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return

    async def _write_loop(self, scope: anyio.CancelScope) -> None:
        out = self.connection.out
        send = self.stream.send
        session = self.session
        while True:
            await self._output_ready.wait()
            self._output_ready = anyio.Event()
            data = b"".join(out)  # (empty after a direct write: send waits for a full socket)
            out.clear()
            session.out_bytes = 0
            self._sending = True
            try:
                await send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                scope.cancel()
                return
            finally:
                self._sending = False
            if data:
                self.last_write = time.monotonic()
            session.output_drained()
            if self.connection.closed and not out and not self.connection.client_closes:
                scope.cancel()
                return

    async def _timer_loop(self, scope: anyio.CancelScope) -> None:
        connection = self.connection
        started = time.monotonic()
        while True:
            interval = connection.heartbeat if connection.state is State.OPEN else 0
            await anyio.sleep(interval / 2 if interval else 0.5)
            now = time.monotonic()
            state = connection.state
            if state is State.CLOSED:
                return  # the read loop waits for the client to close, within its own timeout
            if state is State.CLOSING:
                if self.closing_since is None:
                    self.closing_since = now
                elif now - self.closing_since > CLOSE_TIMEOUT:
                    scope.cancel()
                    return
                continue
            if state is not State.OPEN:
                if now - started > HANDSHAKE_TIMEOUT:
                    log.warning("closing %s: handshake not finished in %.0f s", self.peer, HANDSHAKE_TIMEOUT)
                    scope.cancel()
                    return
                continue
            heartbeat = connection.heartbeat
            if not heartbeat:
                continue
            if now - self.last_read > 2 * heartbeat:
                log.warning("closing %s: missed heartbeats from client, timeout: %ds", self.peer, heartbeat)
                scope.cancel()
                return
            if now - self.last_write >= heartbeat / 2:
                connection.out.append(HEARTBEAT_FRAME)
                self.wake()

    def _lost(self) -> None:
        """Release everything the connection held (consumers, unacked, exclusive queues), always."""
        try:
            if not self.connection.closed:
                self.connection.lost()
        except Exception as exc:
            log_internal_error(log, f"releasing connection {self.peer}", exc)
            self.broker.sessions.discard(self.session)
        finally:
            self.broker.run_pending()
        log.info("connection closed: %s (user %r)", self.peer, self.connection.user)


async def serve_connection(stream: SocketStream, broker: Broker, *, cert_login_from: str = "common_name") -> None:
    """Serve one accepted socket (TCP, or TLS after its handshake) until either side closes it."""
    transport = _Transport(stream, broker, cert_login_from)
    log.info("accepting AMQP connection %s", transport.peer)
    try:
        await transport.run()
    except Exception as exc:  # never let one connection take the listener down
        log_internal_error(log, f"connection {transport.peer}", exc)
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
