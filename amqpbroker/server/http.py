"""Serve an ASGI app (the HTTP endpoints) with Hypercorn on the broker's event loop."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from amqpbroker.errors import log_internal_error

__all__ = ["serve_http"]

log = logging.getLogger("amqpbroker.http")


async def serve_http(app: Any, host: str | None, port: int, stop: anyio.Event, done: anyio.Event,
                     what: str, tls: tuple[str, str] | None = None) -> None:
    """Serve ``app`` on ``host:port`` (every interface when ``host`` is None; HTTPS with ``tls``,
    certificate and key files) until ``stop``;
    ``done`` is set once it has stopped. Stop it this way rather than by cancelling it: Hypercorn
    does not survive a cancellation during its graceful shutdown."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if host and ":" in host else f"{host or '[::]'}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("amqpbroker.http.server")
    config.graceful_timeout = 1.0
    if tls is not None:  # HTTPS with the broker's certificate and key
        config.certfile, config.keyfile = tls
        what = f"{what} (HTTPS)"
    log.info("listening for %s on %s", what, config.bind[0])
    try:
        await serve(app, config, shutdown_trigger=stop.wait, mode="asgi")
    except OSError as exc:  # the port is taken: AMQP goes on without this endpoint
        log.error("cannot serve %s on %s: %s", what, config.bind[0], exc)
    except Exception as exc:  # the HTTP server failed: AMQP goes on without this endpoint
        log_internal_error(log, f"the server for {what}", exc)
    finally:
        done.set()
