"""``python -m interop.soak``: a long-running churn soak against amqpbroker (or any AMQP 0-9-1 broker).

Examples::

    .venv/bin/python -m interop.soak --minutes 60                      # starts its own amqpbroker
    .venv/bin/python -m interop.soak --minutes 3 --connections 300 --csv /tmp/soak.csv
    .venv/bin/python -m interop.soak --minutes 60 --url amqp://guest:guest@127.0.0.1:5672/ \\
        --management-url http://guest:guest@127.0.0.1:15672/

Without ``--url`` the soak starts ``python -m amqpbroker`` itself on free 127.0.0.1 ports (AMQP and
management API), with a temporary data directory and its log in a temporary file, and stops it at
the end. All load is on loopback, bounded in time (``--minutes``) and in size (``--connections``).

The load (one asyncio/uvloop process):

* a churning pool of ``--connections`` connections, kept at that size (a connection that ends is
  replaced at once): each lives a random ``--life-min``..``--life-max`` seconds, opens 1-3 channels
  with random roles (an exclusive server-named queue bound to ``amq.topic`` it consumes from; a
  named auto-delete queue it consumes from; a publisher, half of them with confirms; a manual-ack
  consumer with prefetch 5 on a steady queue that leaves some deliveries unacknowledged; a
  ``basic.get`` poller), does a little every 2-8 s, then ends one of three ways (``--close-mix``):
  clean (channels closed, then the connection), connection.close with its channels still open, or
  the socket dropped (``transport.abort()``, no close handshake). These use a small raw client
  (pamqp frames over an asyncio Protocol, no tasks per connection), which keeps 1,000 of them at
  roughly a third of a core and sees every frame: a broker-initiated connection.close /
  channel.close / basic.cancel, a nack, a lost socket or an RPC that gets no answer in 30 s counts
  as a client error;
* steady traffic (aiormq clients) on a handful of durable and transient queues: four publishers
  (persistent with and without confirms, transient with and without confirms) at ``--rate`` msg/s
  in total and one manual-ack consumer per queue (prefetch 10/50/100); publishers skip a queue that
  holds more than ``--max-backlog`` messages.

Every ``--interval`` seconds (default 60) it samples the broker process (RSS, open fds, CPU %),
the management API's ``/api/overview`` (connections, channels, queues, message rates) when there
is one, else client-side counts, and the load itself; prints one line per sample and writes it to
``--csv``. At the end the load is stopped, the broker is given time to clean up and a "drained"
sample is taken, then a summary: first/last/max RSS and fds, the RSS slope over the last half of
the run, client errors (unexpected closes), and the verdict:

* memory flat: least-squares RSS slope over the samples of the last half of the run < 1 MB/min
  (``--max-rss-slope``);
* fds flat: among the samples taken once the pool has settled (ramp-up plus one maximum lifetime),
  the last one's fd count, corrected to the same pool size (fds - connections open at that instant
  + connections open at the first one), is within 5 % of the first one's.

Exit status 0 when memory and fds are flat, no client saw an unexpected error and the drained
broker has no connections and only the steady queues left; 1 otherwise.

Columns: pool = churn connections open (client view), hshk = churn connections in TCP connect +
AMQP handshake, conns/chans/queues/msgs = broker's object totals, bCPU%/lCPU% = broker/load CPU
(100 = one core), bWait%/lWait% = time runnable but waiting for a CPU (machine contention),
lag_ms = the load's event-loop delay mean/max, pub/s cons/s = client counts, b_pub/s b_dlv/s =
the broker's publish and deliver/get counters, open_ms = handshake time p50/max, http_ms = the
management API's response time, errs = client errors so far. The CSV has a few more (machine busy
%, the load's RSS, the data dir's size).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import json
import logging
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import body as pbody
from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from amqpbroker.testing import free_port, _wait_for_port
from interop.bench.procstat import cpu_seconds, listener_pid, rss_kb, system_cpu

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

DURABLE_QUEUES = ("soak.durable.0", "soak.durable.1")
TRANSIENT_QUEUES = ("soak.transient.0", "soak.transient.1", "soak.transient.2")
STEADY_QUEUES = DURABLE_QUEUES + TRANSIENT_QUEUES
TOPIC_KEYS = 50  # churn exclusive queues bind amq.topic with one of soak.churn.0..49
_SLAB = bytes(random.getrandbits(8) for _ in range(4096)) * 64  # 256 KB to slice bodies from
PERSISTENT = spec.Basic.Properties(delivery_mode=2)
TRANSIENT = spec.Basic.Properties(delivery_mode=1)
RPC_TIMEOUT = 30.0


def body() -> bytes:
    """A random-sized body: mostly small, sometimes a few KB, rarely larger than a frame."""
    r = random.random()
    size = random.randint(16, 512) if r < 0.8 else random.randint(512, 8192) if r < 0.995 else 200_000
    start = random.randint(0, len(_SLAB) - size)
    return _SLAB[start:start + size]


# ----------------------------------------------------------------------------------------- stats

@dataclass
class Stats:
    published: int = 0          # client side, all publishers
    consumed: int = 0           # deliveries + get-oks received
    nacked: int = 0
    blocked: int = 0            # connection.blocked notifications (churn clients)
    opened: int = 0             # churn connections opened
    pool_open: int = 0          # churn connections open right now
    connecting: int = 0         # churn connections in TCP connect + AMQP handshake right now
    steady_open: int = 0        # steady connections open right now
    live_queues: int = 0        # exclusive/auto-delete queues the churn holds (client view)
    closes: Counter = field(default_factory=Counter)  # churn close modes
    errors: Counter = field(default_factory=Counter)
    error_examples: dict = field(default_factory=dict)
    open_ms: list = field(default_factory=list)       # handshake latencies since the last sample

    def error(self, where: str, exc: BaseException | str) -> None:
        key = f"{where}: {exc if isinstance(exc, str) else type(exc).__name__}"
        self.errors[key] += 1
        if key not in self.error_examples and not isinstance(exc, str):
            self.error_examples[key] = str(exc)[:200] or repr(exc)[:200]


class Life:
    """One connection's lifetime: errors count once, and not after we started closing it."""
    __slots__ = ("ours", "failed", "stats", "where")

    def __init__(self, stats: Stats, where: str) -> None:
        self.ours = False
        self.failed = False
        self.stats = stats
        self.where = where

    def fail(self, exc: BaseException | str) -> None:
        if self.ours or self.failed:
            return
        self.failed = True
        self.stats.error(self.where, exc)

    def watch(self, resource_: Any) -> None:
        """Count an unexpected close of a connection or channel (e.g. while idle)."""
        def done(fut: asyncio.Future) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                self.fail(exc)
        resource_.closing.add_done_callback(done)


async def _quiet_close(conn: aiormq.Connection | None, timeout: float = 10.0) -> None:
    if conn is None:
        return
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(conn.close(), timeout)


# ----------------------------------------------------------------------------------------- churn

@dataclass
class Opts:
    url: str
    connections: int
    life_min: float
    life_max: float
    rate: float
    max_backlog: int
    close_mix: tuple[float, float, float] = (40, 30, 30)  # clean, channels-left-open, abrupt

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5672
        self.user, self.password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        self.vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def churn_worker(wid: int, opts: Opts, stats: Stats, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        try:
            await churn_life(f"{wid}.{n}", opts, stats, stop)
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not shrink the pool
            stats.error("churn (soak bug)", exc)
            await _wait(stop, 1.0)


# The churning connections use a small raw AMQP client (pamqp frames over an asyncio Protocol):
# a connection is one Protocol object, deliveries are counted and acked inside data_received, and
# there are no per-connection or per-channel tasks, so 1,000 of them stay cheap. It also sees every
# frame, so a broker-initiated channel.close / connection.close or an unexpected frame is counted.

class ChurnError(Exception):
    pass


@dataclass
class _Chan:
    manual: bool = False          # consumer acks (manual) or no_ack
    leave_unacked: float = 0.0    # share of deliveries left unacknowledged (requeued at close)
    confirms: bool = False
    content: list | None = None   # [remaining body bytes, delivery tag, is_get] while a message arrives


class ChurnConnection(asyncio.Protocol):
    def __init__(self, life: Life, stats: Stats) -> None:
        self.life, self.stats = life, stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiters: dict[int, tuple[tuple[type, ...], asyncio.Future]] = {}
        self.channels: dict[int, _Chan] = {}
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.frame_max = 131072
        self.heartbeat = 0
        self.last_sent = 0.0
        self.closing = False      # we started closing: no more acks, server frames are not errors

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.life.fail(f"connection lost ({type(exc).__name__ if exc else 'closed by the broker'})")
        error = ChurnError(f"connection lost: {exc or 'EOF'}")
        for _, fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(error)
        self.waiters.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        off = 0
        while len(buf) - off >= 8:
            size = int.from_bytes(buf[off + 3:off + 7], "big")
            end = off + 8 + size
            if end > len(buf):
                break
            try:
                _, channel, frame = pframe.unmarshal(bytes(buf[off:end]))
            except Exception as exc:  # noqa: BLE001
                self._protocol_error(f"undecodable frame: {exc!r}")
                return
            off = end
            self._on_frame(channel, frame)
            if self.transport is None or self.transport.is_closing():
                break
        del buf[:off]

    # -- frames
    def _on_frame(self, channel: int, frame: Any) -> None:
        chan = self.channels.get(channel)
        if isinstance(frame, pheader.ContentHeader):
            if chan is not None and chan.content is not None:
                chan.content[0] = frame.body_size
                if frame.body_size == 0:
                    self._delivered(channel, chan)
            return
        if isinstance(frame, pbody.ContentBody):
            if chan is not None and chan.content is not None:
                chan.content[0] -= len(frame.value)
                if chan.content[0] <= 0:
                    self._delivered(channel, chan)
            return
        if isinstance(frame, pheartbeat.Heartbeat):
            return
        if isinstance(frame, spec.Basic.Deliver):
            if chan is not None:
                chan.content = [-1, frame.delivery_tag, False]
            return
        if isinstance(frame, (spec.Basic.Ack, spec.Basic.Nack)):
            if isinstance(frame, spec.Basic.Nack):
                self.stats.nacked += 1
                self.life.fail("broker nacked a publish")
            return
        if isinstance(frame, (spec.Connection.Blocked, spec.Connection.Unblocked)):
            self.stats.blocked += isinstance(frame, spec.Connection.Blocked)
            return
        if isinstance(frame, spec.Basic.GetOk) and chan is not None:
            chan.content = [-1, frame.delivery_tag, True]
        if isinstance(frame, spec.Connection.Close):
            if not self.closing:
                self.life.fail(f"broker closed the connection: {frame.reply_code} {frame.reply_text}")
            self._send(0, spec.Connection.CloseOk())
            self.closing = True
            self.transport.close()
            return
        if isinstance(frame, spec.Channel.Close):
            self.life.fail(f"broker closed channel: {frame.reply_code} {frame.reply_text}")
            self._send(channel, spec.Channel.CloseOk())
            self.channels.pop(channel, None)
            waiter = self.waiters.pop(channel, None)
            if waiter and not waiter[1].done():
                waiter[1].set_exception(ChurnError(f"channel closed: {frame.reply_code} {frame.reply_text}"))
            return
        if isinstance(frame, spec.Basic.Cancel):
            if not self.closing:
                self.life.fail("broker cancelled a consumer")
            return
        waiter = self.waiters.get(channel)
        if waiter is not None and isinstance(frame, waiter[0]):
            del self.waiters[channel]
            if not waiter[1].done():
                waiter[1].set_result(frame)
            return
        if not self.closing:
            self._protocol_error(f"unexpected {type(frame).__name__} on channel {channel}")

    def _delivered(self, channel: int, chan: _Chan) -> None:
        _, tag, is_get = chan.content
        chan.content = None
        self.stats.consumed += 1
        if is_get:
            return  # acked by the getter after its rpc returns
        if chan.manual and not self.closing and random.random() >= chan.leave_unacked:
            self._send(channel, spec.Basic.Ack(delivery_tag=tag))

    def _protocol_error(self, message: str) -> None:
        self.life.fail(message)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # -- sending
    def _send(self, channel: int, frame: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pframe.marshal(frame, channel))
            self.last_sent = time.monotonic()

    async def rpc(self, channel: int, method: Any, *expect: type) -> Any:
        if self.lost.done():
            raise ChurnError("connection lost")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[channel] = (expect, fut)
        try:
            self._send(channel, method)
        except BaseException:
            self.waiters.pop(channel, None)
            raise
        return await asyncio.wait_for(fut, RPC_TIMEOUT)

    def publish(self, channel: int, exchange: str, key: str, payload: bytes, props: Any) -> None:
        out = [pframe.marshal(spec.Basic.Publish(exchange=exchange, routing_key=key), channel),
               pframe.marshal(pheader.ContentHeader(0, len(payload), props), channel)]
        chunk = self.frame_max - 8
        for i in range(0, len(payload), chunk):
            out.append(pframe.marshal(pbody.ContentBody(payload[i:i + chunk]), channel))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
            self.last_sent = time.monotonic()
        self.stats.published += 1

    def maybe_heartbeat(self) -> None:
        if self.heartbeat and time.monotonic() - self.last_sent > self.heartbeat / 2:
            self._send(0, pheartbeat.Heartbeat())

    # -- lifecycle
    async def handshake(self, user: str, password: str, vhost: str) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[0] = ((spec.Connection.Start,), fut)
        self.transport.write(pheader.ProtocolHeader().marshal())
        await asyncio.wait_for(fut, RPC_TIMEOUT)
        props = {"product": "interop.soak", "connection_name": "soak-churn",
                 "capabilities": {"consumer_cancel_notify": True, "publisher_confirms": True,
                                  "basic.nack": True, "connection.blocked": True}}
        tune = await self.rpc(0, spec.Connection.StartOk(client_properties=props, mechanism="PLAIN",
                                                         response=f"\0{user}\0{password}", locale="en_US"),
                              spec.Connection.Tune)
        self.frame_max = min(tune.frame_max or 131072, 131072)
        self.heartbeat = tune.heartbeat
        self._send(0, spec.Connection.TuneOk(channel_max=tune.channel_max or 2047, frame_max=self.frame_max,
                                             heartbeat=self.heartbeat))
        await self.rpc(0, spec.Connection.Open(virtual_host=vhost), spec.Connection.OpenOk)

    async def open_channel(self, channel: int, confirms: bool = False) -> _Chan:
        await self.rpc(channel, spec.Channel.Open(), spec.Channel.OpenOk)
        chan = self.channels[channel] = _Chan(confirms=confirms)
        if confirms:
            await self.rpc(channel, spec.Confirm.Select(), spec.Confirm.SelectOk)
        return chan

    async def close(self, mode: str) -> None:
        """clean: every channel closed, then the connection; open: connection.close with channels
        open; abrupt: the socket dropped with no close handshake."""
        self.closing = True
        if self.lost.done():
            return
        try:
            if mode == "abrupt":
                self.transport.abort()
                return
            if mode == "clean":
                for channel in list(self.channels):
                    await self.rpc(channel, spec.Channel.Close(reply_code=200, reply_text="bye", class_id=0,
                                                              method_id=0), spec.Channel.CloseOk)
                    self.channels.pop(channel, None)
            await self.rpc(0, spec.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
                           spec.Connection.CloseOk)
        except (ChurnError, asyncio.TimeoutError) as exc:
            self.life.ours = False  # a close the broker does not answer is its fault
            self.life.fail(f"close ({mode}): {type(exc).__name__} {exc}")
            self.life.ours = True
        finally:
            if not self.transport.is_closing():
                self.transport.close()


async def churn_life(name: str, opts: Opts, stats: Stats, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    life = Life(stats, "churn")
    t0 = loop.time()
    conn: ChurnConnection | None = None
    stats.connecting += 1
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: ChurnConnection(life, stats), opts.host, opts.port), RPC_TIMEOUT)
        await conn.handshake(opts.user, opts.password, opts.vhost)
    except Exception as exc:
        if not life.failed:
            stats.error("connect", exc)
        if conn is not None:
            conn.closing = True
            conn.transport.abort()
        await _wait(stop, 1.0)
        return
    finally:
        stats.connecting -= 1
    stats.open_ms.append((loop.time() - t0) * 1000)
    stats.opened += 1
    stats.pool_open += 1
    deadline = t0 + random.uniform(opts.life_min, opts.life_max)
    roles: list[tuple[int, str, str | None]] = []  # (channel, role, queue)
    queues_held = 0
    try:
        for channel in range(1, 1 + random.choice((1, 1, 2, 3))):
            role, queue = await _churn_channel(conn, channel, name)
            roles.append((channel, role, queue))
            if queue is not None:
                queues_held += 1
                stats.live_queues += 1
        while not await _wait(stop, min(random.uniform(2, 8), deadline - loop.time())):
            if loop.time() >= deadline or life.failed:
                break
            conn.maybe_heartbeat()
            await _churn_act(conn, *random.choice(roles))
    except Exception as exc:
        life.fail(exc)
    finally:
        stats.pool_open -= 1
        stats.live_queues -= queues_held
        if life.failed:
            stats.closes["after-error"] += 1
            conn.closing = True
            life.ours = True
            conn.transport.abort()
        else:
            mode = random.choices(("clean", "open", "abrupt"), opts.close_mix)[0]
            stats.closes[{"open": "channels-left-open"}.get(mode, mode)] += 1
            await conn.close(mode)
            life.ours = True


async def _churn_channel(conn: ChurnConnection, channel: int, name: str) -> tuple[str, str | None]:
    role = random.choices(("exclusive", "autodelete", "publisher", "steadyconsumer", "getter"),
                          (30, 25, 30, 10, 5))[0]
    chan = await conn.open_channel(channel, confirms=role == "publisher" and random.random() < 0.5)
    queue = None
    if role == "exclusive":
        ok = await conn.rpc(channel, spec.Queue.Declare(queue="", exclusive=True), spec.Queue.DeclareOk)
        queue = ok.queue
        await conn.rpc(channel, spec.Queue.Bind(queue=queue, exchange="amq.topic",
                                                routing_key=f"soak.churn.{random.randrange(TOPIC_KEYS)}"),
                       spec.Queue.BindOk)
        chan.manual = random.random() < 0.5
        if chan.manual:
            await conn.rpc(channel, spec.Basic.Qos(prefetch_count=10), spec.Basic.QosOk)
        await conn.rpc(channel, spec.Basic.Consume(queue=queue, no_ack=not chan.manual), spec.Basic.ConsumeOk)
    elif role == "autodelete":
        queue = f"soak.ad.{name}.{channel}"
        await conn.rpc(channel, spec.Queue.Declare(queue=queue, auto_delete=True), spec.Queue.DeclareOk)
        await conn.rpc(channel, spec.Basic.Qos(prefetch_count=10), spec.Basic.QosOk)
        chan.manual = True
        await conn.rpc(channel, spec.Basic.Consume(queue=queue), spec.Basic.ConsumeOk)
    elif role == "steadyconsumer":
        await conn.rpc(channel, spec.Basic.Qos(prefetch_count=5), spec.Basic.QosOk)
        chan.manual, chan.leave_unacked = True, 0.2
        await conn.rpc(channel, spec.Basic.Consume(queue=random.choice(STEADY_QUEUES)), spec.Basic.ConsumeOk)
    return role, queue


async def _churn_act(conn: ChurnConnection, channel: int, role: str, queue: str | None) -> None:
    if role == "getter":
        got = await conn.rpc(channel, spec.Basic.Get(queue=random.choice(TRANSIENT_QUEUES)),
                             spec.Basic.GetOk, spec.Basic.GetEmpty)
        if isinstance(got, spec.Basic.GetOk):
            conn._send(channel, spec.Basic.Ack(delivery_tag=got.delivery_tag))
        return
    if role == "steadyconsumer":
        return
    for _ in range(random.randint(1, 3)):
        if queue is not None and random.random() < 0.7:
            exchange, key = "", queue
        elif random.random() < 0.5:
            exchange, key = "amq.topic", f"soak.churn.{random.randrange(TOPIC_KEYS)}"
        else:
            exchange, key = "", random.choice(TRANSIENT_QUEUES)
        conn.publish(channel, exchange, key, body(), TRANSIENT)


# ---------------------------------------------------------------------------------------- steady

@dataclass
class Steady:
    depth: dict = field(default_factory=lambda: {q: 0 for q in STEADY_QUEUES})
    pub_stop: asyncio.Event = field(default_factory=asyncio.Event)
    cons_stop: asyncio.Event = field(default_factory=asyncio.Event)


async def steady_setup(opts: Opts) -> None:
    conn = aiormq.Connection(opts.url)
    await asyncio.wait_for(conn.connect(), RPC_TIMEOUT)
    try:
        ch = await conn.channel(publisher_confirms=False)
        for q in STEADY_QUEUES:
            await ch.queue_declare(q, durable=q in DURABLE_QUEUES, timeout=RPC_TIMEOUT)
            await ch.queue_purge(q, timeout=RPC_TIMEOUT)
    finally:
        await _quiet_close(conn)


async def steady_teardown(opts: Opts) -> None:
    conn = aiormq.Connection(opts.url)
    await asyncio.wait_for(conn.connect(), RPC_TIMEOUT)
    try:
        ch = await conn.channel(publisher_confirms=False)
        for q in STEADY_QUEUES:
            await ch.queue_delete(q, timeout=RPC_TIMEOUT)
    finally:
        await _quiet_close(conn)


async def _steady_loop(name: str, opts: Opts, stats: Stats, stop: asyncio.Event, session: Any) -> None:
    """Run ``session(conn, life)`` on a fresh connection until ``stop``; a failure is counted once
    (on ``name``) and the connection is made again a second later."""
    while not stop.is_set():
        life = Life(stats, name)
        conn = None
        try:
            conn = aiormq.Connection(opts.url)
            await asyncio.wait_for(conn.connect(), RPC_TIMEOUT)
            life.watch(conn)
            stats.steady_open += 1
            try:
                await session(conn, life)
            finally:
                stats.steady_open -= 1
        except Exception as exc:
            life.fail(exc)
        finally:
            life.ours = True
            await _quiet_close(conn)
        if life.failed:
            await _wait(stop, 1.0)


async def steady_publisher(name: str, opts: Opts, stats: Stats, steady: Steady, queues: tuple[str, ...],
                           persistent: bool, confirms: bool, rate: float, topic_share: float = 0.0) -> None:
    props = PERSISTENT if persistent else TRANSIENT

    async def session(conn: aiormq.Connection, life: Life) -> None:
        loop = asyncio.get_running_loop()
        ch = await conn.channel(publisher_confirms=confirms, timeout=RPC_TIMEOUT)
        life.watch(ch)
        credit, last = 0.0, loop.time()
        while not life.failed and not await _wait(steady.pub_stop, 0.1):
            now = loop.time()
            credit = min(credit + (now - last) * rate, rate)  # at most 1 s of catch-up
            last = now
            batch = []
            while credit >= 1:
                credit -= 1
                if random.random() < topic_share:
                    exchange, key = "amq.topic", f"soak.churn.{random.randrange(TOPIC_KEYS)}"
                else:
                    exchange, key = "", random.choice(queues)
                    if steady.depth[key] > opts.max_backlog:
                        continue
                batch.append(ch.basic_publish(body(), exchange=exchange, routing_key=key, properties=props,
                                              timeout=RPC_TIMEOUT, wait=False))
            for result in await asyncio.gather(*batch, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
                stats.published += 1
                if isinstance(result, spec.Basic.Nack):
                    stats.nacked += 1
                    stats.error(name, "basic.nack")

    await _steady_loop(name, opts, stats, steady.pub_stop, session)


async def steady_consumer(name: str, opts: Opts, stats: Stats, steady: Steady, queue: str, prefetch: int) -> None:
    async def session(conn: aiormq.Connection, life: Life) -> None:
        ch = await conn.channel(publisher_confirms=False, timeout=RPC_TIMEOUT)
        life.watch(ch)
        await ch.basic_qos(prefetch_count=prefetch, timeout=RPC_TIMEOUT)

        async def on_message(message: DeliveredMessage) -> None:
            stats.consumed += 1
            try:
                await message.channel.basic_ack(message.delivery.delivery_tag)
            except Exception as exc:
                life.fail(exc)

        await ch.basic_consume(queue, on_message, timeout=RPC_TIMEOUT)
        while not life.failed and not await _wait(steady.cons_stop, 1.0):
            pass

    await _steady_loop(name, opts, stats, steady.cons_stop, session)


async def steady_monitor(opts: Opts, stats: Stats, steady: Steady) -> None:
    """Passive-declares the steady queues every 2 s: their depth drives the publishers' backlog cap."""
    async def session(conn: aiormq.Connection, life: Life) -> None:
        ch = await conn.channel(publisher_confirms=False, timeout=RPC_TIMEOUT)
        life.watch(ch)
        while not life.failed:
            for q in STEADY_QUEUES:
                ok = await ch.queue_declare(q, passive=True, timeout=RPC_TIMEOUT)
                steady.depth[q] = ok.message_count
            if await _wait(steady.cons_stop, 2.0):
                return

    await _steady_loop("monitor", opts, stats, steady.cons_stop, session)


# --------------------------------------------------------------------------------------- sampling

class Broker:
    """The broker under test: its pid, management API and (when ours) process and data dir."""

    def __init__(self, url: str, pid: int | None, mgmt: str | None, process: subprocess.Popen | None = None,
                 data_dir: str | None = None, log_path: str | None = None) -> None:
        self.url, self.pid, self.process, self.data_dir, self.log_path = url, pid, process, data_dir, log_path
        self.mgmt_base, self.mgmt_auth = None, None
        if mgmt:
            parts = urlsplit(mgmt)
            user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            self.mgmt_base = f"{parts.scheme}://{netloc}"
            self.mgmt_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def overview(self) -> dict | None:
        if not self.mgmt_base:
            return None
        request = urllib.request.Request(self.mgmt_base + "/api/overview",
                                         headers={"Authorization": self.mgmt_auth})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.load(response)
        except (OSError, ValueError):
            return None

    def rss_mb(self) -> float | None:
        return _rss_mb(self.pid)

    def fds(self) -> int | None:
        if self.pid is None:
            return None
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def data_mb(self) -> float | None:
        if not self.data_dir:
            return None
        total = 0
        for root, _dirs, files in os.walk(self.data_dir):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, f)).st_size
        return total / 1e6


def _rss_mb(pid: int | None) -> float | None:
    kb = rss_kb(pid)
    return None if kb is None else kb / 1024


COLUMNS = ["t_s", "phase", "pool_target", "pool_open", "pool_connecting", "conns", "channels", "queues", "consumers",
           "messages",
           "rss_mb", "fds", "broker_cpu_pct", "load_cpu_pct", "broker_runq_wait_pct", "load_runq_wait_pct",
           "loop_lag_ms_mean", "loop_lag_ms_max", "machine_busy_pct", "load_rss_mb", "data_mb",
           "pub_s", "cons_s", "broker_pub_s", "broker_deliver_s", "opens_s", "open_ms_p50", "open_ms_max",
           "mgmt_ms", "errors", "counts_from"]


class Sampler:
    def __init__(self, broker: Broker, stats: Stats, target: int, csv_path: str | None) -> None:
        self.broker, self.stats, self.target = broker, stats, target
        self.lag = LoopLag()
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.prev: dict[str, Any] | None = None
        self.csv_file = open(csv_path, "w", newline="") if csv_path else None
        self.csv = csv.DictWriter(self.csv_file, COLUMNS) if self.csv_file else None
        if self.csv:
            self.csv.writeheader()
            self.csv_file.flush()
        print(self.header(), flush=True)

    @staticmethod
    def header() -> str:
        return (f"{'t':>6} {'phase':<7} {'pool':>5} {'hshk':>4} {'conns':>5} {'chans':>5} {'queues':>6} {'msgs':>6} "
                f"{'rss_MB':>7} {'fds':>5} {'bCPU%':>5} {'bWait%':>6} {'lCPU%':>5} {'lWait%':>6} {'lag_ms':>8} "
                f"{'pub/s':>6} {'cons/s':>6} "
                f"{'b_pub/s':>7} {'b_dlv/s':>7} {'open/s':>6} {'open_ms':>9} {'http_ms':>7} {'errs':>4}")

    async def take(self, phase: str) -> dict[str, Any]:
        now = time.monotonic()
        t_http = time.monotonic()
        overview = await asyncio.to_thread(self.broker.overview)
        mgmt_ms = round((time.monotonic() - t_http) * 1000) if overview is not None else None
        data_mb = await asyncio.to_thread(self.broker.data_mb)
        st = self.stats
        raw = {"now": now, "bcpu": cpu_seconds(self.broker.pid), "lcpu": cpu_seconds(os.getpid()),
               "bwait": _runq_wait(self.broker.pid), "lwait": _runq_wait(os.getpid()),
               "sys": system_cpu(), "published": st.published, "consumed": st.consumed, "opened": st.opened,
               "b_pub": None, "b_dlv": None}
        row: dict[str, Any] = {"t_s": round(now - self.t0), "phase": phase, "pool_target": self.target,
                               "pool_open": st.pool_open, "pool_connecting": st.connecting,
                               "rss_mb": _round(self.broker.rss_mb(), 1),
                               "fds": self.broker.fds(), "load_rss_mb": _round(_rss_mb(os.getpid()), 1),
                               "data_mb": _round(data_mb, 1), "errors": sum(st.errors.values()),
                               "mgmt_ms": mgmt_ms}
        if overview is not None:
            totals, stats_ = overview.get("object_totals", {}), overview.get("message_stats", {})
            row.update(conns=totals.get("connections"), channels=totals.get("channels"),
                       queues=totals.get("queues"), consumers=totals.get("consumers"),
                       messages=overview.get("queue_totals", {}).get("messages"), counts_from="mgmt")
            raw["b_pub"], raw["b_dlv"] = stats_.get("publish"), stats_.get("deliver_get")
        else:
            row.update(conns=st.pool_open + st.steady_open, queues=len(STEADY_QUEUES) + st.live_queues,
                       counts_from="client")
        prev = self.prev
        if prev is not None:
            dt = now - prev["now"]
            row["broker_cpu_pct"] = _pct(raw["bcpu"], prev["bcpu"], dt)
            row["load_cpu_pct"] = _pct(raw["lcpu"], prev["lcpu"], dt)
            row["broker_runq_wait_pct"] = _pct(raw["bwait"], prev["bwait"], dt)
            row["load_runq_wait_pct"] = _pct(raw["lwait"], prev["lwait"], dt)
            if raw["sys"] and prev["sys"]:
                busy = raw["sys"]["busy"] - prev["sys"]["busy"]
                idle = raw["sys"]["idle"] - prev["sys"]["idle"]
                row["machine_busy_pct"] = round(100 * busy / (busy + idle), 1) if busy + idle > 0 else None
            row["pub_s"] = round((raw["published"] - prev["published"]) / dt, 1)
            row["cons_s"] = round((raw["consumed"] - prev["consumed"]) / dt, 1)
            row["opens_s"] = round((raw["opened"] - prev["opened"]) / dt, 1)
            if raw["b_pub"] is not None and prev["b_pub"] is not None:
                row["broker_pub_s"] = round((raw["b_pub"] - prev["b_pub"]) / dt, 1)
                row["broker_deliver_s"] = round((raw["b_dlv"] - prev["b_dlv"]) / dt, 1)
        row["loop_lag_ms_mean"], row["loop_lag_ms_max"] = self.lag.take()
        if st.open_ms:
            lat = sorted(st.open_ms)
            row["open_ms_p50"], row["open_ms_max"] = round(lat[len(lat) // 2], 1), round(lat[-1], 1)
            st.open_ms.clear()
        self.prev = raw
        self.samples.append(row)
        print(self.line(row), flush=True)
        if self.csv:
            self.csv.writerow({k: row.get(k) for k in COLUMNS})
            self.csv_file.flush()
        return row

    @staticmethod
    def line(r: dict[str, Any]) -> str:
        def f(key: str, width: int, fmt: str = "") -> str:
            v = r.get(key)
            return f"{'-' if v is None else format(v, fmt):>{width}}"
        lag = "-" if r.get("loop_lag_ms_mean") is None else f"{r['loop_lag_ms_mean']:.0f}/{r['loop_lag_ms_max']:.0f}"
        open_ms = "-" if r.get("open_ms_p50") is None else f"{r['open_ms_p50']:.0f}/{r['open_ms_max']:.0f}"
        return (f"{r['t_s']:>5}s {r['phase']:<7} {f('pool_open', 5)} {f('pool_connecting', 4)} {f('conns', 5)} "
                f"{f('channels', 5)} "
                f"{f('queues', 6)} {f('messages', 6)} {f('rss_mb', 7, '.1f')} {f('fds', 5)} "
                f"{f('broker_cpu_pct', 5, '.0f')} {f('broker_runq_wait_pct', 6, '.0f')} {f('load_cpu_pct', 5, '.0f')} "
                f"{f('load_runq_wait_pct', 6, '.0f')} {lag:>8} {f('pub_s', 6, '.0f')} "
                f"{f('cons_s', 6, '.0f')} {f('broker_pub_s', 7, '.0f')} {f('broker_deliver_s', 7, '.0f')} "
                f"{f('opens_s', 6, '.1f')} {open_ms:>9} {f('mgmt_ms', 7)} {f('errors', 4)}")

    def close(self) -> None:
        if self.csv_file:
            self.csv_file.close()


def _runq_wait(pid: int | None) -> float | None:
    """Seconds the process's main thread has waited for a CPU (runnable, not running): contention."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class LoopLag:
    """Measures the load's own event-loop delay: how late a 100 ms sleep wakes up."""

    def __init__(self) -> None:
        self.max_ms = 0.0
        self.total_ms = 0.0
        self.n = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.1)
            lag = (loop.time() - t - 0.1) * 1000
            self.max_ms = max(self.max_ms, lag)
            self.total_ms += lag
            self.n += 1

    def take(self) -> tuple[float | None, float | None]:
        result = (round(self.total_ms / self.n, 1), round(self.max_ms)) if self.n else (None, None)
        self.max_ms, self.total_ms, self.n = 0.0, 0.0, 0
        return result


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _pct(cur: float | None, prev: float | None, dt: float) -> float | None:
    return None if cur is None or prev is None or dt <= 0 else round(100 * (cur - prev) / dt, 1)


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per minute."""
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return None if sxx == 0 else 60 * sum((x - mx) * (y - my) for x, y in points) / sxx


# ------------------------------------------------------------------------------------ the broker

@contextlib.contextmanager
def own_broker(extra: list[str], keep_log: str | None):
    """Start amqpbroker on free 127.0.0.1 ports with a temporary data dir; its log goes to a file."""
    port, mport = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="amqpbroker-soak-") as tmp:
        data_dir = os.path.join(tmp, "data")
        log_path = keep_log or os.path.join(tmp, "broker.log")
        args = [sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", data_dir, "--prometheus-port", "0", "--management-port", str(mport), *extra]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_for_port(port, process, 30)
            _wait_for_port(mport, process, 30)
            yield Broker(f"amqp://guest:guest@127.0.0.1:{port}/", process.pid,
                         f"http://guest:guest@127.0.0.1:{mport}/", process, data_dir, log_path)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _log_problems(path: str | None) -> tuple[Counter, int]:
    """WARNING/ERROR/Traceback lines of the broker log, grouped with numbers/addresses blanked."""
    import re
    counts: Counter = Counter()
    if not path or not os.path.exists(path):
        return counts, 0
    with open(path, errors="replace") as f:
        for line in f:
            if "[WARNING]" in line or "[ERROR]" in line or "[CRITICAL]" in line or line.startswith("Traceback"):
                msg = line.split("] ", 1)[-1].strip()
                msg = re.sub(r"\d+(\.\d+)*", "N", msg)[:160]
                counts[msg] += 1
    return counts, sum(counts.values())


# -------------------------------------------------------------------------------------------- run

async def soak(args: argparse.Namespace, broker: Broker) -> int:
    loop = asyncio.get_running_loop()
    stats = Stats()
    opts = Opts(broker.url, args.connections, args.life_min, args.life_max, args.rate, args.max_backlog,
                tuple(args.close_mix))
    duration = args.minutes * 60
    interrupted = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        loop.add_signal_handler(signal.SIGTERM, interrupted.set)

    print(f"soak: {broker.url} pid={broker.pid} mgmt={broker.mgmt_base or 'none'} "
          f"connections={args.connections} life={args.life_min:g}-{args.life_max:g}s rate={args.rate:g}/s "
          f"minutes={args.minutes:g} interval={args.interval:g}s", flush=True)
    sampler = Sampler(broker, stats, args.connections, args.csv)
    lag_task = asyncio.create_task(sampler.lag.run())
    await sampler.take("idle")

    await steady_setup(opts)
    steady = Steady()
    r = args.rate / 4
    tasks = [
        asyncio.create_task(steady_monitor(opts, stats, steady)),
        asyncio.create_task(steady_publisher("pub-persistent-confirm", opts, stats, steady, DURABLE_QUEUES,
                                             True, True, r)),
        asyncio.create_task(steady_publisher("pub-persistent", opts, stats, steady, DURABLE_QUEUES,
                                             True, False, r)),
        asyncio.create_task(steady_publisher("pub-transient-confirm", opts, stats, steady, TRANSIENT_QUEUES,
                                             False, True, r)),
        asyncio.create_task(steady_publisher("pub-transient", opts, stats, steady, TRANSIENT_QUEUES,
                                             False, False, r, topic_share=0.1)),
    ]
    consumers = [asyncio.create_task(steady_consumer(f"cons-{q}", opts, stats, steady, q, (10, 50, 100)[i % 3]))
                 for i, q in enumerate(STEADY_QUEUES)]

    stop = asyncio.Event()
    workers: list[asyncio.Task] = []

    async def ramp() -> None:
        for wid in range(args.connections):
            if stop.is_set():
                return
            workers.append(asyncio.create_task(churn_worker(wid, opts, stats, stop)))
            await asyncio.sleep(1 / args.ramp)

    ramp_task = asyncio.create_task(ramp())
    start = time.monotonic()
    end = start + duration
    k = 0
    while time.monotonic() < end - 0.5 and not interrupted.is_set():
        k += 1
        target = min(start + k * args.interval, end)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(interrupted.wait(), max(0.0, target - time.monotonic()))
        await sampler.take("load")
    if interrupted.is_set():
        print("interrupted: stopping the load", flush=True)

    # teardown: churn closes (each its own way), publishers stop, consumers drain, then a drained sample
    stop.set()
    ramp_task.cancel()
    await asyncio.gather(ramp_task, return_exceptions=True)
    _, pending = await asyncio.wait(workers, timeout=120) if workers else (set(), set())
    for t in pending:
        t.cancel()
    if pending:
        stats.error("teardown", f"{len(pending)} churn connections did not close within 120 s")
    steady.pub_stop.set()
    await asyncio.gather(*tasks[1:], return_exceptions=True)
    drain_deadline = time.monotonic() + 60
    while time.monotonic() < drain_deadline and sum(steady.depth.values()) > 0:
        await asyncio.sleep(1)
    leftover = sum(steady.depth.values())
    steady.cons_stop.set()
    await asyncio.gather(tasks[0], *consumers, return_exceptions=True)
    # give the broker a moment to finish closing; wait for it to report no connections
    settle_deadline = time.monotonic() + 30
    while time.monotonic() < settle_deadline:
        await asyncio.sleep(2)
        ov = await asyncio.to_thread(broker.overview)
        if ov is None or ov.get("object_totals", {}).get("connections") == 0:
            break
    drained = await sampler.take("drained")
    sampler.close()
    lag_task.cancel()
    if broker.process is None:
        with contextlib.suppress(Exception):
            await steady_teardown(opts)

    return summarize(args, broker, sampler.samples, stats, drained, leftover, duration)


def summarize(args: argparse.Namespace, broker: Broker, samples: list[dict[str, Any]], stats: Stats,
              drained: dict[str, Any], leftover: int, duration: float) -> int:
    load = [s for s in samples if s["phase"] == "load"]
    idle = samples[0]
    print("\n=== soak summary ===")
    if not load:
        print("no samples under load")
        return 1

    def series(key: str) -> list:
        return [s[key] for s in load if s.get(key) is not None]

    rss, fds = series("rss_mb"), series("fds")
    if rss:
        print(f"RSS MB   : idle {idle['rss_mb']}, first {rss[0]}, last {rss[-1]}, max {max(rss)}, "
              f"drained {drained['rss_mb']}")
    if fds:
        print(f"fds      : idle {idle['fds']}, first {fds[0]}, last {fds[-1]}, max {max(fds)}, "
              f"drained {drained['fds']}")
    half = [(s["t_s"], s["rss_mb"]) for s in load if s["t_s"] >= duration / 2 and s.get("rss_mb") is not None]
    slope = slope_per_min(half)
    slope_all = slope_per_min([(s["t_s"], s["rss_mb"]) for s in load if s.get("rss_mb") is not None])
    print(f"RSS slope: last half {_fmt(slope, '+.2f')} MB/min over {len(half)} samples "
          f"(whole run {_fmt(slope_all, '+.2f')} MB/min)" + ("; <3 samples: indicative only" if len(half) < 3 else ""))

    # fds: compare samples taken with the pool at its target size (after the ramp and one lifetime),
    # corrected for the connections open at that instant: fds - conns + conns of the baseline sample
    settled = args.connections / args.ramp + args.life_max
    full = [s for s in load if s.get("fds") is not None and s.get("conns") is not None and s["t_s"] >= settled]
    fds_flat = None
    if len(full) >= 2:
        base, last = full[0], full[-1]
        adjusted = last["fds"] - last["conns"] + base["conns"]
        change = (adjusted - base["fds"]) / base["fds"]
        fds_flat = abs(change) <= 0.05
        print(f"fds at pool size: t={base['t_s']}s {base['fds']} fds with {base['conns']} conns -> "
              f"t={last['t_s']}s {last['fds']} with {last['conns']} conns = {adjusted} at {base['conns']} conns: "
              f"{change:+.1%} (fds not held by connections {base['fds'] - base['conns']} -> "
              f"{last['fds'] - last['conns']})")
    else:
        print(f"fds at pool size: fewer than 2 samples after the pool settled (t >= {settled:.0f}s)")

    cpu_b, cpu_l, busy = series("broker_cpu_pct"), series("load_cpu_pct"), series("machine_busy_pct")
    if cpu_b or cpu_l:
        wait_b, wait_l = series("broker_runq_wait_pct"), series("load_runq_wait_pct")
        print(f"CPU %    : broker mean {_mean(cpu_b)} max {_max(cpu_b)} (waiting for a CPU {_mean(wait_b)}); "
              f"load mean {_mean(cpu_l)} max {_max(cpu_l)} (waiting {_mean(wait_l)}); machine busy mean "
              f"{_mean(busy)} max {_max(busy)} (100 = one core; machine % is over all cores)")
        lag_max = series("loop_lag_ms_max")
        print(f"load loop lag: mean {_mean(series('loop_lag_ms_mean'))} ms, max {_max(lag_max)} ms; "
              f"handshake ms p50 mean {_mean(series('open_ms_p50'))}, max {_max(series('open_ms_max'))}; "
              f"management API response ms mean {_mean(series('mgmt_ms'))}")
        if cpu_l and max(cpu_l) > 90:
            print("           note: the load generator was saturated (~one core): rates and latencies are capped by it")
        if busy and max(busy) > 90:
            print("           note: the machine was saturated (all cores busy"
                  + (", other processes included" if cpu_b and cpu_l and _avg(cpu_b) + _avg(cpu_l) < 0.8 * 100
                     * (os.cpu_count() or 1) * _avg(busy) / 100 else "") + "); CPU waits show the contention")
    pool = series("pool_open")
    print(f"pool     : target {args.connections}, open mean {_mean(pool)} min {min(pool)} max {max(pool)}; "
          f"in handshake max {max(series('pool_connecting'))}")
    pub, cons = series("pub_s"), series("cons_s")
    print(f"traffic  : pub/s mean {_mean(pub)}, cons/s mean {_mean(cons)}; totals published {stats.published}, "
          f"consumed {stats.consumed}, nacked {stats.nacked}, connection.blocked {stats.blocked}; "
          f"churn connections opened {stats.opened} "
          f"({_mean(series('opens_s'))}/s), closes {dict(stats.closes)}")
    print(f"drained  : conns {drained.get('conns')}, queues {drained.get('queues')} "
          f"(expected {len(STEADY_QUEUES)} steady), messages {drained.get('messages')}, "
          f"steady backlog left {leftover}, fds {drained.get('fds')} vs idle {idle.get('fds')}")
    n_errors = sum(stats.errors.values())
    print(f"client errors (unexpected closes/failures): {n_errors}")
    for key, count in stats.errors.most_common(15):
        example = stats.error_examples.get(key)
        print(f"  {count:6d}  {key}" + (f"  e.g. {example}" if example else ""))
    if broker.log_path:
        problems, total = _log_problems(broker.log_path)
        print(f"broker log warnings/errors: {total} ({broker.log_path})")
        for msg, count in problems.most_common(8):
            print(f"  {count:6d}  {msg}")

    mem_flat = slope is not None and slope < args.max_rss_slope
    print(f"memory flat: {_yesno(mem_flat if slope is not None else None)} "
          f"(last-half RSS slope {_fmt(slope, '+.2f')} < {args.max_rss_slope} MB/min)")
    print(f"fds flat   : {_yesno(fds_flat)} (last settled sample within 5% of the first, same pool size)")
    drained_ok = drained.get("conns") in (0, None) and drained.get("queues") in (len(STEADY_QUEUES), None)
    print(f"cleanup    : {'ok' if drained_ok else 'NOT ok'} (no connections and only the steady queues left)")
    ok = bool(mem_flat and fds_flat and n_errors == 0 and drained_ok)
    print(f"RESULT     : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def _fmt(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _mean(xs: list) -> str:
    return "n/a" if not xs else f"{sum(xs) / len(xs):.1f}"


def _avg(xs: list) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _max(xs: list) -> str:
    return "n/a" if not xs else f"{max(xs):.1f}"


def _yesno(v: bool | None) -> str:
    return "n/a" if v is None else "yes" if v else "NO"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m interop.soak", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60, help="load duration (default 60)")
    p.add_argument("--connections", type=int, default=1000, help="size of the churning pool (default 1000)")
    p.add_argument("--url", help="broker to soak; default: start amqpbroker on free loopback ports")
    p.add_argument("--management-url", help="management API, e.g. http://guest:guest@127.0.0.1:15672/ "
                                            "(with --url; without it counts are client-side)")
    p.add_argument("--broker-pid", type=int, help="with --url: the broker's pid (default: the owner of the "
                                                  "listening port, if visible)")
    p.add_argument("--csv", help="write the samples to this CSV file")
    p.add_argument("--interval", type=float, default=60, help="seconds between samples (default 60)")
    p.add_argument("--rate", type=float, default=400, help="steady publish rate, msg/s in total (default 400)")
    p.add_argument("--max-backlog", type=int, default=5000, help="steady publishers skip a queue holding more "
                                                                 "messages than this (default 5000)")
    p.add_argument("--life-min", type=float, default=1, help="min churn connection lifetime, s (default 1)")
    p.add_argument("--life-max", type=float, default=30, help="max churn connection lifetime, s (default 30)")
    p.add_argument("--ramp", type=float, default=100, help="churn connections started per second at the "
                                                           "beginning (default 100)")
    p.add_argument("--max-rss-slope", type=float, default=1.0, help="MB/min below which memory is flat (default 1)")
    p.add_argument("--broker-log", help="keep the started broker's log at this path (default: temporary)")
    p.add_argument("--broker-arg", action="append", default=[],
                   help="extra argument for the started broker (repeatable), e.g. --broker-arg=--log-level=warning")
    p.add_argument("--close-mix", type=float, nargs=3, default=[40, 30, 30], metavar=("CLEAN", "OPEN", "ABRUPT"),
                   help="relative weights of the churn close modes: clean, connection.close with channels "
                        "left open, socket dropped (default 40 30 30)")
    p.add_argument("--seed", type=int, help="random seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seed is not None:
        random.seed(args.seed)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # expected noise from abrupt drops
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 1000
    if soft < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    def run(broker: Broker) -> int:
        coro = soak(args, broker)
        if uvloop is not None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)

    if args.url:
        parts = urlsplit(args.url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            print("soak: --url must be a loopback address", file=sys.stderr)
            return 2
        pid = args.broker_pid or listener_pid(parts.hostname, parts.port or 5672)
        return run(Broker(args.url, pid, args.management_url))
    with own_broker(args.broker_arg, args.broker_log) as broker:
        return run(broker)


if __name__ == "__main__":
    sys.exit(main())
