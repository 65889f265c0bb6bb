"""TCP listeners: bind, report the bound ports, serve each accepted socket in its own task."""

from __future__ import annotations

import logging

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from amqpbroker.broker.broker import Broker
from amqpbroker.config import Config
from amqpbroker.server.transport import serve_connection

__all__ = ["listen", "Connections"]

log = logging.getLogger("amqpbroker.listener")


class Connections:
    """The listening sockets and the connections they accepted."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
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


async def listen(config: Config, broker: Broker, *, task_status: TaskStatus[Connections]) -> None:
    listener = await anyio.create_tcp_listener(local_host=config.host, local_port=config.port,
                                               reuse_port=False)
    addresses = []
    for sock_listener in getattr(listener, "listeners", [listener]):
        address = sock_listener.extra(SocketAttribute.local_address)
        addresses.append(address)
    ports = sorted({address[1] for address in addresses})
    connections = Connections(ports)
    log.info("listening for AMQP on %s", ", ".join(f"[{a[0]}]:{a[1]}" if ":" in str(a[0])
                                                    else f"{a[0]}:{a[1]}" for a in addresses))
    task_status.started(connections)

    async def handle(stream: SocketStream) -> None:
        connections.active += 1
        try:
            await serve_connection(stream, broker)
        finally:
            connections._closed_one()

    async with anyio.create_task_group() as group:
        with connections._accepting:
            await listener.serve(handle, task_group=group)
        await listener.aclose()
