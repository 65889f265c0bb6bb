"""Start, serve, stop: listen, and on SIGTERM/SIGINT close every connection with 320
CONNECTION_FORCED, give them ``shutdown_timeout`` seconds to go, then stop."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import signal
import socket
import time
from typing import Any

import anyio
from anyio.abc import TaskStatus

from amqpbroker.broker.broker import Broker, Limits
from amqpbroker.broker.recovery import restore
from amqpbroker.config import Config
from amqpbroker.errors import AMQPError, ReplyCode, log_internal_error
from amqpbroker.http.definitions import import_definitions
from amqpbroker.http.errors import HTTPError
from amqpbroker.http.management import management_app
from amqpbroker.http.prometheus import prometheus_app
from amqpbroker.http.views import NODE
from amqpbroker.server.http import serve_http
from amqpbroker.server.listener import ListenError, listen, listen_error
from amqpbroker.broker.compatibility import profile
from amqpbroker.server.memory import max_fds, open_fds, resident_bytes, watermark_bytes
from amqpbroker.store.base import StoreError
from amqpbroker.store.rocks import RocksStore
from amqpbroker.server.persistence import StoreWriter
from amqpbroker.server.tls import TLSConfigError, server_context

__all__ = ["serve", "run"]

log = logging.getLogger("amqpbroker")

SHUTDOWN_TEXT = "broker forced connection closure with reason 'shutdown'"


def build_broker(config: Config) -> Broker:
    rules = profile(config.compatibility)
    limits = Limits(channel_max=config.channel_max, frame_max=config.frame_max, heartbeat=config.heartbeat,
                    max_message_size=(rules.max_message_size if config.max_message_size is None
                                      else config.max_message_size),
                    connection_max=config.connection_max, connection_max_per_user=config.connection_max_per_user,
                    consumer_max_per_channel=config.consumer_max_per_channel,
                    queue_max_per_vhost=config.queue_max_per_vhost, consumer_timeout=config.consumer_timeout,
                    delivery_limit_classic=config.delivery_limit_classic,
                    delivery_limit_quorum=(rules.quorum_delivery_limit if config.delivery_limit_quorum is None
                                           else config.delivery_limit_quorum),
                    compatibility=rules)
    broker = Broker(limits, default_user=config.default_user, default_password=config.default_password,
                    loopback_users=config.loopback_user_names(), default_vhost=config.default_vhost,
                    paging_window=(config.queue_window_messages, config.queue_window_bytes))
    broker.node.memory_limit = watermark_bytes(config.memory_high_watermark)
    broker.node.disk_free_limit = config.disk_free_limit
    return broker


def open_store(config: Config, broker: Broker) -> RocksStore:
    """Open the data directory and rebuild the broker from it (blocking: before serving)."""
    path = os.path.join(config.data_dir, "rocksdb")
    os.makedirs(path, exist_ok=True)
    store = RocksStore(path, os.path.join(config.data_dir, "streams"))
    try:
        restore(broker, store)
    except BaseException:
        store.close()
        raise
    broker.journal.enabled = True
    log.info("data directory %s", config.data_dir)
    return store


async def serve(config: Config, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled or signalled; reports the bound ports through ``task_status``."""
    broker = build_broker(config)
    store = open_store(config, broker)
    writer = StoreWriter(store, broker)
    try:
        if config.load_definitions:
            load_definitions(config.load_definitions, broker)
        await _serve(config, broker, writer, task_status)
    finally:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(config.shutdown_timeout):
                await writer.drain()
            store.close()


async def _serve(config: Config, broker: Broker, writer: StoreWriter, task_status: TaskStatus[Any]) -> None:
    http_stop = anyio.Event()
    http_apps = []
    if config.prometheus_port:
        http_apps.append((prometheus_app(broker, writer), config.prometheus_host, config.prometheus_port,
                          "Prometheus metrics", _https(config, config.prometheus_tls)))
    if config.management_port:
        listeners = _listeners(config)
        http_apps.append((management_app(broker, listeners, watermark_bytes(config.memory_high_watermark),
                                         allowed_hosts=config.management_allowed_hosts),
                          config.management_host, config.management_port, "the management API",
                          _https(config, config.management_tls)))
    for _, host, port, what, _ in http_apps:
        _check_port(host, port, what)  # a port in use stops start-up, as the AMQP one does
    http_done = [anyio.Event() for _ in http_apps]
    async with anyio.create_task_group() as group:
        for (app, host, port, what, tls), done in zip(http_apps, http_done):
            group.start_soon(serve_http, app, host, port, http_stop, done, what, tls)
        group.start_soon(writer.run)
        group.start_soon(writer.run_pages)
        group.start_soon(writer.run_retries)
        group.start_soon(_tick, broker, watermark_bytes(config.memory_high_watermark))
        group.start_soon(_watch_disk, broker, config.data_dir, config.disk_free_limit)
        group.start_soon(_sample_process, broker)
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
        http_stop.set()
        with anyio.move_on_after(HTTP_STOP_TIMEOUT):
            for done in http_done:
                await done.wait()
        group.cancel_scope.cancel()
    log.info("stopped")


def _check_port(host: str | None, port: int, what: str) -> None:
    """Can an HTTP endpoint listen there? (Checked before its server starts, which would only log
    the failure and serve AMQP without it.)"""
    for family, _, _, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):  # (not an address family this machine lacks)
                    raise listen_error(what, host, port, exc) from None


class DefinitionsError(Exception):
    """The load_definitions file cannot be read or applied: start-up stops, naming the entry."""


def load_definitions(path: str, broker: Broker) -> None:
    """Import a definitions file at start-up (idempotent: every start imports it again, as
    RabbitMQ's load_definitions); what it changed is journaled like any API change."""
    try:
        with open(path, encoding="utf-8") as file:
            definitions = json.load(file)
        if not isinstance(definitions, dict):
            raise ValueError("not a JSON object")
        import_definitions(broker, definitions)
    except (OSError, ValueError) as exc:
        raise DefinitionsError(f"cannot load definitions from {path}: {exc}") from None
    except HTTPError as exc:
        raise DefinitionsError(f"cannot load definitions from {path}: {exc.reason}") from None
    except AMQPError as exc:
        raise DefinitionsError(f"cannot load definitions from {path}: {exc.reply_text}") from None
    broker.run_pending()
    log.info("loaded definitions from %s", path)


def _https(config: Config, wanted: bool) -> tuple[str, str] | None:
    return (config.tls_certfile, config.tls_keyfile) if wanted else None


def _listeners(config: Config) -> list[dict[str, Any]]:
    """What ``/api/overview`` lists as listeners."""
    entries = [("amqp", config.host, config.port),
               ("https" if config.management_tls else "http", config.management_host, config.management_port),
               ("https/prometheus" if config.prometheus_tls else "http/prometheus", config.prometheus_host,
                config.prometheus_port)]
    if config.tls_certfile:
        entries.insert(1, ("amqp/ssl", config.host, config.tls_port))
    return [{"node": NODE, "protocol": protocol, "ip_address": host or "::", "port": port}
            for protocol, host, port in entries if port]


TICK_SECONDS = 0.05  # how often TTLs and queue expiry are looked at
HTTP_STOP_TIMEOUT = 3.0  # seconds the HTTP endpoints get to stop at shutdown


async def _tick(broker: Broker, watermark: int | None) -> None:
    """Timed work, and the memory alarm (publishers blocked above the watermark)."""
    while True:
        await anyio.sleep(TICK_SECONDS)
        try:
            if watermark is not None:
                resident = resident_bytes()
                if resident is not None:
                    broker.set_memory_alarm(resident > watermark)
            broker.tick(time.time())
        except Exception as exc:  # a bug in timed work must not end the broker; the timer goes on
            log_internal_error(log, "the broker's timer", exc)


DISK_CHECK_SECONDS = 1.0


async def _watch_disk(broker: Broker, path: str, limit: int) -> None:
    """The disk alarm: publishers are blocked while the data directory's file system has less
    than ``limit`` bytes free, before RocksDB fails for want of space (RabbitMQ's
    ``disk_free_limit``, 50 MB by default; 0: no alarm, the free space is still shown). Read in
    a worker thread: statvfs can block."""
    while True:
        try:
            free = await anyio.to_thread.run_sync(free_bytes, path)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", path, exc)
        else:
            broker.node.disk_free = free
            try:
                if limit:
                    broker.set_alarm("disk", free < limit)
            except Exception as exc:
                log_internal_error(log, "the disk alarm", exc)
        await anyio.sleep(DISK_CHECK_SECONDS)


PROCESS_SAMPLE_SECONDS = 1.0


async def _sample_process(broker: Broker) -> None:
    """The process's memory and file descriptors for /api/nodes and /metrics, once a second, in a
    worker thread (listing /proc/self/fd takes longer with many connections)."""
    node = broker.node
    while True:
        try:
            node.resident_bytes, node.open_fds, node.max_fds = await anyio.to_thread.run_sync(
                lambda: (resident_bytes(), open_fds(), max_fds()))
        except Exception as exc:  # a sample missed: the figures stay as they were
            log_internal_error(log, "sampling the process's memory and file descriptors", exc)
        await anyio.sleep(PROCESS_SAMPLE_SECONDS)


def free_bytes(path: str) -> int:
    """Bytes free for unprivileged use on the file system holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


# The cyclic garbage collector's thresholds: CPython's default (700 allocations per young
# collection) had it scanning survivors over and over once a few thousand connections were open
# (1,000 idle connections accepted at 434/s instead of 583/s, with it off 726/s). Refcounting
# frees a message and its queue entry; what the collector is for here is the occasional cycle.
GC_THRESHOLDS = (50_000, 20, 100)


def run(config: Config) -> int:
    try:
        server_context(config)  # checked before anything starts: a bad TLS setting is one line
        if (config.management_tls or config.prometheus_tls) and not (config.tls_certfile and config.tls_keyfile):
            raise TLSConfigError("management_tls / prometheus_tls need tls_certfile and tls_keyfile")
    except TLSConfigError as exc:
        log.error("%s; refusing to start", exc)
        return 1
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what the imports made lives for ever: never scan it again
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
    except (StoreError, DefinitionsError, ListenError) as exc:
        log.error("%s; refusing to start", exc)
        return 1
    except BaseExceptionGroup as group:  # (raised from a task group: a port that is in use)
        refusal = next((exc for exc in _leaves(group) if isinstance(exc, ListenError)), None)
        if refusal is None:
            raise
        log.error("%s; refusing to start", refusal)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
