"""TCP listeners: bind, report the bound ports, serve each accepted socket in its own task."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import SocketAttribute, TaskStatus
from anyio.streams.tls import TLSListener

from amqpbroker.broker.broker import Broker
from amqpbroker.config import Config
from amqpbroker.server.tls import server_context
from amqpbroker.server.transport import HANDSHAKE_TIMEOUT, serve_connection

__all__ = ["ListenError", "listen_error", "listen", "Connections"]

log = logging.getLogger("amqpbroker.listener")


class Connections:
    """The listening sockets and the connections they accepted."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.tls_ports: list[int] = []
        self.active = 0
        self._idle = anyio.Event()
        self._accepting = anyio.CancelScope()

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    async def wait_all_closed(self) -> None:
        while self.active:
            self._idle = anyio.Event()
            await self._idle.wait()

    def _closed_one(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()


class _AMQPSListener(TLSListener):
    async def handle_handshake_error(self, exc: BaseException, stream: Any) -> None:
        """A client that is not speaking TLS, or fails the handshake: one line, and its socket
        closed (anyio logs a traceback for each)."""
        await anyio.aclose_forcefully(stream)
        if isinstance(exc, anyio.get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        log.warning("TLS handshake failed: %s", exc)


class ListenError(Exception):
    """A configured port cannot be listened on (in use, not allowed): start-up stops, saying which."""


def listen_error(what: str, host: str | None, port: int, exc: OSError) -> ListenError:
    where = f"[{host}]:{port}" if host and ":" in host else f"{host or '*'}:{port}"
    return ListenError(f"cannot listen for {what} on {where}: {exc.strerror or exc}")


async def _tcp_listener(host: str | None, port: int, what: str) -> tuple[Any, list[int]]:
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        raise listen_error(what, host, port, exc) from None
    addresses = [each.extra(SocketAttribute.local_address) for each in getattr(listener, "listeners", [listener])]
    log.info("listening for %s on %s", what, ", ".join(f"[{a[0]}]:{a[1]}" if ":" in str(a[0])
                                                       else f"{a[0]}:{a[1]}" for a in addresses))
    return listener, sorted({address[1] for address in addresses})


async def listen(config: Config, broker: Broker, *, task_status: TaskStatus[Connections]) -> None:
    """AMQP on ``port`` and, when a certificate is configured, AMQPS on ``tls_port``."""
    context = server_context(config)  # (a bad TLS setting stops start-up here)
    listener, ports = await _tcp_listener(config.host, config.port, "AMQP")
    listeners = [listener]
    connections = Connections(ports)
    if context is not None and config.tls_port:
        tls_listener, connections.tls_ports = await _tcp_listener(config.host, config.tls_port, "AMQPS (TLS)")
        listeners.append(_AMQPSListener(tls_listener, context, standard_compatible=False,
                                        handshake_timeout=HANDSHAKE_TIMEOUT))
    task_status.started(connections)

    async def handle(stream: Any) -> None:
        connections.active += 1
        try:
            await serve_connection(stream, broker, cert_login_from=config.tls_cert_login_from)
        finally:
            connections._closed_one()

    async with anyio.create_task_group() as group:
        with connections._accepting:
            async with anyio.create_task_group() as serving:
                for each in listeners:
                    serving.start_soon(each.serve, handle, group)
        for each in listeners:
            await each.aclose()
