"""Start, serve, stop: listen, and on SIGTERM/SIGINT close every connection with 320
CONNECTION_FORCED, give them ``shutdown_timeout`` seconds to go, then stop."""

from __future__ import annotations

import logging
import signal
from typing import Any

import anyio
from anyio.abc import TaskStatus

from amqpbroker.broker.broker import Broker, Limits
from amqpbroker.config import Config
from amqpbroker.errors import ReplyCode
from amqpbroker.server.listener import listen

__all__ = ["serve", "run"]

log = logging.getLogger("amqpbroker")

SHUTDOWN_TEXT = "broker forced connection closure with reason 'shutdown'"


def build_broker(config: Config) -> Broker:
    return Broker(Limits(channel_max=config.channel_max, frame_max=config.frame_max,
                         heartbeat=config.heartbeat),
                  default_user=config.default_user, default_password=config.default_password,
                  default_user_loopback_only=config.loopback_users)


async def serve(config: Config, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled or signalled; reports the bound ports through ``task_status``."""
    broker = build_broker(config)
    async with anyio.create_task_group() as group:
        connections = await group.start(listen, config, broker)
        task_status.started(connections.ports)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: closing connections", signal.Signals(signum).name)
                break
        connections.stop_accepting()
        for session in list(broker.sessions):
            session.close(ReplyCode.CONNECTION_FORCED, SHUTDOWN_TEXT)
        broker.run_pending()
        with anyio.move_on_after(config.shutdown_timeout):
            await connections.wait_all_closed()
        group.cancel_scope.cancel()
    log.info("stopped")


def run(config: Config) -> int:
    backend_options = {}
    try:
        import uvloop  # noqa: F401
        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    try:
        anyio.run(serve, config, backend="asyncio", backend_options=backend_options)
    except KeyboardInterrupt:
        pass
    return 0
