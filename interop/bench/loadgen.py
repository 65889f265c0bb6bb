"""The load generator: raw asyncio (uvloop) sockets speaking just enough AMQP 0-9-1.

pamqp is used only where speed does not matter: the connection handshake, the few setup
methods (qos, consume, declare, close) and building the publish frames *once*. The hot paths
never touch pamqp:

* the publisher writes a pre-encoded batch of ``Basic.Publish`` + content header + body frames
  (``bytes``, built at setup) with one ``transport.write`` per batch; the latency publisher
  patches an 8-byte ``time.perf_counter_ns()`` stamp into the first body bytes with
  ``struct.pack_into``;
* the consumer reads into one preallocated ``bytearray`` (``asyncio.BufferedProtocol``), walks it
  with ``struct.unpack_from`` and an offset, recognises ``Basic.Deliver`` by its class/method ids
  (60, 60) and reads only its delivery tag, counts a message when its body is complete, and acks
  with a pre-encoded ``Basic.Ack`` frame whose tag is patched in place.

Clients share counters with the coordinating process through ``multiprocessing`` shared memory
(:class:`Shared`): producers publish a running "published" count, consumers a running
"consumed" count. By default (``max_inflight`` 0) a producer writes as fast as TCP back-pressure
lets it, as RabbitMQ's PerfTest does; with ``max_inflight`` N > 0 it only writes a batch when
the unconsumed deliveries (``published x copies - consumed``, all clients summed) stay at most N
with it, so the queues cannot grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from array import array
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

try:  # uvloop is a dependency of amqpbroker, but keep the generator usable without it
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

__all__ = [
    "AMQPURL", "ClientConfig", "Shared", "parse_url", "encode_message", "worker_main",
    "declare_queue", "delete_queue", "declare_topology", "delete_topology", "parser_selftest",
    "PHASE_SETUP", "PHASE_WARMUP", "PHASE_MEASURE", "PHASE_STOP",
]

PHASE_SETUP, PHASE_WARMUP, PHASE_MEASURE, PHASE_STOP = 0, 1, 2, 3

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
_HDR = struct.Struct(">BHI")  # frame type, channel, payload size
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")

# class_id << 16 | method_id, compared as one big-endian u32 read at payload offset 0
_DELIVER = (60 << 16) | 60

CHANNEL = 1
DEFAULT_FRAME_MAX = 131072


# --------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class AMQPURL:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @property
    def display(self) -> str:
        return f"amqp://{self.host}:{self.port}/{'' if self.vhost == '/' else self.vhost}"


def parse_url(url: str) -> AMQPURL:
    """``amqp://user:pass@host:port/vhost``; an empty path or ``/`` means vhost ``/``."""
    parts = urlsplit(url)
    if parts.scheme != "amqp":
        raise ValueError(f"only amqp:// URLs are supported (got {url!r})")
    path = parts.path
    vhost = "/" if path in ("", "/") else unquote(path[1:])
    return AMQPURL(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5672,
        user=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        vhost=vhost,
    )


@dataclass(frozen=True)
class ClientConfig:
    """What every client process of one workload run needs (picklable, for spawn).

    Producer i publishes to ``queues[i % len(queues)]`` through the default exchange, or, when
    ``exchange`` is set, to that exchange with an empty routing key. Consumer j consumes
    ``queues[j % len(queues)]``."""

    url: str
    queues: tuple[str, ...]
    body_size: int = 1024
    manual_ack: bool = False
    prefetch: int = 100
    ack_every: int = 0            # 0: one multiple-ack per read batch; N: every N deliveries
    max_inflight: int = 0         # 0: no cap; N: unconsumed deliveries allowed before pausing
    copies: int = 1               # deliveries per publish (the number of queues a fanout feeds)
    exchange: str = ""
    batch: int = 100              # messages per publisher write
    rate: float = 0.0             # total msg/s for a paced (latency) run, shared by producers
    n_producers: int = 1
    record_latency: bool = False
    connect_timeout: float = 15.0


class Shared:
    """Shared-memory counters between the coordinator and the client processes."""

    def __init__(self, ctx, n_producers: int, n_consumers: int) -> None:
        self.phase = ctx.RawValue("i", PHASE_SETUP)
        self.published = ctx.RawArray("q", n_producers)
        self.consumed = ctx.RawArray("q", n_consumers)


# --------------------------------------------------------------------------------------- frames

def encode_message(routing_key: str, body: bytes, frame_max: int, exchange: str = "") -> tuple[bytes, int]:
    """Pre-encode one message (method + header + body frames) on channel 1.

    Returns the bytes and the offset of the first body byte (where the latency stamp goes)."""
    out = bytearray(pframe.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), CHANNEL))
    out += pframe.marshal(pheader.ContentHeader(0, len(body), commands.Basic.Properties()), CHANNEL)
    body_offset = len(out) + 7
    chunk = frame_max - 8
    for i in range(0, len(body), chunk):
        out += pframe.marshal(pbody.ContentBody(body[i:i + chunk]), CHANNEL)
    return bytes(out), body_offset


def _ack_template() -> bytearray:
    frame = bytearray(pframe.marshal(commands.Basic.Ack(delivery_tag=0, multiple=True), CHANNEL))
    assert len(frame) == 21 and frame[-1] == FRAME_END  # tag lives at bytes 11..18
    return frame


_ACK_TAG_OFFSET = 11


class AMQPError(Exception):
    pass


# ------------------------------------------------------------------------------------- protocol

class BenchProtocol(asyncio.BufferedProtocol):
    """One AMQP connection (channel 1 only) with a fast consumer path.

    Frames other than Basic.Deliver / content frames / heartbeats go through the slow path:
    pamqp decodes them and they are queued for :meth:`wait_for` (or handled, for closes)."""

    def __init__(self, frame_max: int = DEFAULT_FRAME_MAX, buffer_size: int | None = None) -> None:
        size = buffer_size or max(1 << 20, 4 * (frame_max + 8))
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.end = 0
        self.transport: asyncio.Transport | None = None
        self.frames: asyncio.Queue = asyncio.Queue()
        self.error: str | None = None
        self.closing = False
        self.close_ok = asyncio.get_running_loop().create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.frame_max = frame_max
        self.server_properties: dict = {}
        # consumer state (used by the fast path)
        self.count = 0
        self.reads = 0
        self.acks = 0
        self.tag = 0
        self.acked = 0
        self.body_left = 0
        self.body_size = 0
        self.manual_ack = False
        self.expect_size = -1      # body size every delivery must have (checked per header frame)
        self.ack_every = 0
        self.ack_frame = _ack_template()
        self.lat: list[int] | None = None
        self.phase = None          # shared RawValue, when recording latency
        self.consumed_slot = None  # (RawArray, index)

    # -- asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 18)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        if not self.closing and self.error is None:
            self.error = f"connection lost: {exc or 'closed by peer'}"
        self.frames.put_nowait(None)
        self.can_write.set()
        if not self.close_ok.done():
            self.close_ok.set_result(None)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.mv[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        # The hot loop: everything used per frame is a local.
        buf = self.buf
        end = self.end + nbytes
        off = 0
        self.reads += 1
        count = self.count
        tag = self.tag
        body_left = self.body_left
        body_size = self.body_size
        ack_every = self.ack_every
        lat = self.lat
        now = 0
        if lat is not None:
            if self.phase.value == PHASE_MEASURE:
                now = time.perf_counter_ns()
            else:
                lat = None
        hdr = _HDR.unpack_from
        u64 = _U64.unpack_from
        while end - off >= 8:
            ftype, _channel, size = hdr(buf, off)
            fend = off + 7 + size
            if fend >= end:
                break
            if buf[fend] != FRAME_END:
                self._fail(f"bad frame end byte 0x{buf[fend]:02x} (frame type {ftype})")
                return
            if ftype == FRAME_BODY:
                if lat is not None and body_left == body_size:
                    lat.append(now - _I64.unpack_from(buf, off + 7)[0])
                body_left -= size
                if body_left <= 0:
                    count += 1
            elif ftype == FRAME_METHOD:
                if _U32.unpack_from(buf, off + 7)[0] == _DELIVER:
                    # consumer-tag shortstr at +11, delivery tag right after it
                    tag = u64(buf, off + 12 + buf[off + 11])[0]
                    if ack_every and tag - self.acked >= ack_every:
                        self._ack(tag)
                else:
                    self._slow_frame(bytes(buf[off:fend + 1]))
                    if self.error is not None:
                        return
            elif ftype == FRAME_HEADER:
                body_size = body_left = u64(buf, off + 11)[0]
                if body_size != self.expect_size:
                    self._fail(f"delivery {tag} has a {body_size} B body, expected {self.expect_size} B")
                    return
                if body_size == 0:
                    count += 1
            elif ftype != FRAME_HEARTBEAT:
                self._fail(f"unexpected frame type {ftype} (protocol header? {bytes(buf[off:off + 8])!r})")
                return
            off = fend + 1
        remaining = end - off
        if off:
            if remaining:
                buf[0:remaining] = buf[off:end]
        elif remaining == len(buf):
            self._fail("frame larger than the receive buffer")
            return
        self.end = remaining
        self.body_left = body_left
        self.body_size = body_size
        if count != self.count:
            self.count = count
            slot = self.consumed_slot
            if slot is not None:
                slot[0][slot[1]] = count
        if tag != self.tag:
            self.tag = tag
            if self.manual_ack and not ack_every and tag > self.acked:
                self._ack(tag)

    # -- helpers
    def _ack(self, tag: int) -> None:
        frame = self.ack_frame
        _U64.pack_into(frame, _ACK_TAG_OFFSET, tag)
        self.transport.write(bytes(frame))
        self.acked = tag
        self.acks += 1

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self.frames.put_nowait(None)
        if self.transport is not None:
            self.transport.abort()

    def _slow_frame(self, data: bytes) -> None:
        try:
            _, channel, frame = pframe.unmarshal(data)
        except Exception as exc:  # noqa: BLE001 - report whatever pamqp disliked
            self._fail(f"cannot decode frame: {exc!r}")
            return
        if isinstance(frame, commands.Connection.Close):
            self.error = self.error or f"broker closed the connection: {frame.reply_code} {frame.reply_text}"
            self.write(pframe.marshal(commands.Connection.CloseOk(), 0))
            self.closing = True
            self.transport.close()
            self.frames.put_nowait(None)
        elif isinstance(frame, commands.Connection.CloseOk):
            if not self.close_ok.done():
                self.close_ok.set_result(None)
        elif isinstance(frame, commands.Channel.Close):
            self.error = self.error or f"broker closed the channel: {frame.reply_code} {frame.reply_text}"
            self.write(pframe.marshal(commands.Channel.CloseOk(), channel))
            self.frames.put_nowait(None)
        elif isinstance(frame, commands.Basic.Cancel):
            self.error = self.error or "broker cancelled the consumer"
            self.frames.put_nowait(None)
        else:
            self.frames.put_nowait(frame)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, frame, channel: int = CHANNEL) -> None:
        self.write(pframe.marshal(frame, channel))

    async def wait_for(self, kind, timeout: float = 15.0):
        """The next slow-path frame, which must be a ``kind``."""
        try:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
        except asyncio.TimeoutError:
            raise AMQPError(f"timed out waiting for {kind.name}") from None
        if frame is None:
            raise AMQPError(self.error or f"connection closed waiting for {kind.name}")
        if not isinstance(frame, kind):
            raise AMQPError(f"expected {kind.name}, got {frame.name}")
        return frame

    async def rpc(self, frame, reply, channel: int = CHANNEL, timeout: float = 15.0):
        self.send(frame, channel)
        return await self.wait_for(reply, timeout)

    async def close(self, timeout: float = 3.0) -> None:
        """Connection.Close, wait for Close-Ok (deliveries may precede it), then drop the socket."""
        if self.transport is None or self.transport.is_closing():
            return
        self.closing = True
        self.send(commands.Connection.Close(reply_code=200, reply_text="bench done", class_id=0, method_id=0), 0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.close_ok), timeout)
        self.transport.close()


async def connect(url: AMQPURL, timeout: float = 15.0, protocol_factory=BenchProtocol) -> BenchProtocol:
    """Open a connection and channel 1; ``protocol_factory`` makes the (BenchProtocol) protocol."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(protocol_factory, url.host, url.port), timeout)
    proto.write(pframe.marshal(pheader.ProtocolHeader(), 0))
    start = await proto.wait_for(commands.Connection.Start, timeout)
    proto.server_properties = start.server_properties or {}
    proto.send(commands.Connection.StartOk(
        client_properties={
            "product": "amqpbroker-bench",
            "platform": "Python",
            "capabilities": {"basic.nack": True, "publisher_confirms": True},
        },
        mechanism="PLAIN", response=f"\0{url.user}\0{url.password}", locale="en_US"), 0)
    tune = await proto.wait_for(commands.Connection.Tune, timeout)
    frame_max = min(tune.frame_max or DEFAULT_FRAME_MAX, DEFAULT_FRAME_MAX)
    proto.frame_max = frame_max
    proto.send(commands.Connection.TuneOk(channel_max=tune.channel_max or 2047, frame_max=frame_max,
                                          heartbeat=0), 0)
    await proto.rpc(commands.Connection.Open(virtual_host=url.vhost), commands.Connection.OpenOk, 0, timeout)
    await proto.rpc(commands.Channel.Open(), commands.Channel.OpenOk, CHANNEL, timeout)
    return proto


# -------------------------------------------------------------------------------------- clients

async def _consumer(cfg: ClientConfig, idx: int, shared: Shared, report) -> dict:
    proto = await connect(parse_url(cfg.url), cfg.connect_timeout)
    try:
        if cfg.manual_ack:
            await proto.rpc(commands.Basic.Qos(prefetch_count=cfg.prefetch), commands.Basic.QosOk)
        # set the fast-path state *before* consuming: deliveries can share a read with Consume-Ok
        proto.manual_ack = cfg.manual_ack
        proto.expect_size = cfg.body_size
        proto.ack_every = cfg.ack_every if cfg.manual_ack else 0
        proto.consumed_slot = (shared.consumed, idx)
        if cfg.record_latency:
            proto.phase = shared.phase
            proto.lat = []
        queue = cfg.queues[idx % len(cfg.queues)]
        await proto.rpc(commands.Basic.Consume(queue=queue, consumer_tag=f"bench-c{idx}",
                                               no_ack=not cfg.manual_ack), commands.Basic.ConsumeOk)
        report.put(("ready", "consumer", idx, os.getpid()))
        phase = shared.phase
        while phase.value < PHASE_STOP and proto.error is None:
            await asyncio.sleep(0.01)
        error = proto.error
        lat = array("q", proto.lat or ())
        proto.lat = None
        return {"role": "consumer", "idx": idx, "count": proto.count, "error": error,
                "reads": proto.reads, "acks": proto.acks, "last_tag": proto.tag,
                "latency_ns": lat.tobytes()}
    finally:
        await proto.close()


async def _producer(cfg: ClientConfig, idx: int, shared: Shared, report) -> dict:
    proto = await connect(parse_url(cfg.url), cfg.connect_timeout)
    try:
        body = bytes(cfg.body_size)
        routing_key = "" if cfg.exchange else cfg.queues[idx % len(cfg.queues)]
        msg, ts_offset = encode_message(routing_key, body, proto.frame_max, cfg.exchange)
        if cfg.record_latency and cfg.body_size < 8:
            raise ValueError("latency runs need a body of at least 8 bytes")
        report.put(("ready", "producer", idx, os.getpid()))
        phase = shared.phase
        while phase.value == PHASE_SETUP:
            await asyncio.sleep(0.001)
        if cfg.rate > 0:
            published = await _publish_paced(proto, cfg, idx, shared, msg, ts_offset)
        elif cfg.max_inflight > 0:
            published = await _publish_capped(proto, cfg, idx, shared, msg)
        else:
            published = await _publish_uncapped(proto, cfg, idx, shared, msg)
        while phase.value < PHASE_STOP and proto.error is None:
            await asyncio.sleep(0.01)
        return {"role": "producer", "idx": idx, "count": published, "error": proto.error}
    finally:
        await proto.close()


async def _publish_uncapped(proto: BenchProtocol, cfg: ClientConfig, idx: int, shared: Shared,
                            msg: bytes) -> int:
    """As fast as the broker reads: one batch per write, then yield to the loop (so it reads what
    the broker sends), or wait while the transport's write buffer is over its high-water mark."""
    batch = max(1, cfg.batch)
    batch_bytes = msg * batch
    phase, pub = shared.phase, shared.published
    can_write = proto.can_write
    write = proto.transport.write
    published = 0
    sleep = asyncio.sleep
    while phase.value < PHASE_STOP and proto.error is None:
        write(batch_bytes)
        published += batch
        pub[idx] = published
        if can_write.is_set():
            await sleep(0)
        else:
            await _drained(proto, phase)
    return published


def _in_flight(shared: Shared, copies: int) -> int:
    """Deliveries published (all producers) but not yet consumed (all consumers)."""
    return sum(shared.published) * copies - sum(shared.consumed)


async def _publish_capped(proto: BenchProtocol, cfg: ClientConfig, idx: int, shared: Shared, msg: bytes) -> int:
    """As fast as the broker takes it, keeping at most ``max_inflight`` unconsumed deliveries."""
    batch = max(1, min(cfg.batch, cfg.max_inflight // cfg.copies))
    batch_bytes = msg * batch
    phase, pub = shared.phase, shared.published
    room_needed = batch * cfg.copies
    max_inflight = cfg.max_inflight
    can_write = proto.can_write
    write = proto.transport.write
    published = 0
    sleep = asyncio.sleep
    while phase.value < PHASE_STOP and proto.error is None:
        if max_inflight - _in_flight(shared, cfg.copies) < room_needed:
            await sleep(0.001)  # consumers are behind: let them catch up
            continue
        write(batch_bytes)
        published += batch
        pub[idx] = published
        if can_write.is_set():
            await sleep(0)      # let the loop read whatever the broker sent
        else:
            await _drained(proto, phase)
    return published


async def _drained(proto: BenchProtocol, phase) -> None:
    """Wait until the transport's write buffer drains (the broker reads again), or the run stops."""
    while not proto.can_write.is_set() and phase.value < PHASE_STOP and proto.error is None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proto.can_write.wait(), 0.05)


async def _publish_paced(proto: BenchProtocol, cfg: ClientConfig, idx: int, shared: Shared,
                         msg: bytes, ts_offset: int) -> int:
    """A fixed rate (``cfg.rate / n_producers``), each message stamped with perf_counter_ns();
    with ``max_inflight`` > 0, no more than that many unconsumed deliveries."""
    rate = cfg.rate / cfg.n_producers
    size = len(msg)
    capped = cfg.max_inflight > 0
    batch = max(1, min(cfg.batch, cfg.max_inflight) if capped else cfg.batch)
    buf = bytearray(msg * batch)
    offsets = [i * size + ts_offset for i in range(batch)]
    pack = _I64.pack_into
    phase, pub = shared.phase, shared.published
    write = proto.transport.write
    clock = time.perf_counter_ns
    start = clock()
    published = 0
    while phase.value < PHASE_STOP and proto.error is None:
        due = (clock() - start) * rate // 1e9 - published
        if due >= 1:
            n = int(min(due, batch))
            if capped:
                n = min(n, (cfg.max_inflight - _in_flight(shared, cfg.copies)) // cfg.copies)
            if n > 0:
                stamp = clock()
                for o in offsets[:n]:
                    pack(buf, o, stamp)
                write(bytes(buf[:n * size]))  # a copy: buf is patched again next round
                published += n
                pub[idx] = published
            if not proto.can_write.is_set():
                await _drained(proto, phase)
        # Sleep until the next message is due, but at least 1 ms: uvloop (libuv) timers have
        # 1 ms resolution and a shorter sleep would busy-spin, stealing CPU from the broker.
        # So at 10k msg/s messages leave in bursts of ~10 per millisecond tick.
        wait = (start + (published + 1) * 1e9 / rate - clock()) / 1e9
        await asyncio.sleep(max(wait, 0.001))
    return published


async def _run_clients(roles: list[tuple[str, int]], cfg: ClientConfig, shared: Shared, report) -> None:
    async def one(role: str, idx: int):
        try:
            fn = _consumer if role == "consumer" else _producer
            result = await fn(cfg, idx, shared, report)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the coordinator
            result = {"role": role, "idx": idx, "count": 0, "error": f"{type(exc).__name__}: {exc}"}
        report.put(("done", role, idx, result))

    await asyncio.gather(*(one(role, idx) for role, idx in roles))


def _run(coro):
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def worker_main(roles: list[tuple[str, int]], cfg: ClientConfig, shared: Shared, report) -> None:
    """Process entry point: run the given clients (one or several) on one uvloop event loop."""
    _run(_run_clients(roles, cfg, shared, report))


# ---------------------------------------------------------------------------------- queue admin

async def _declare(url: str, queue: str) -> None:
    proto = await connect(parse_url(url))
    try:
        await proto.rpc(commands.Queue.Declare(queue=queue, durable=False, auto_delete=True),
                        commands.Queue.DeclareOk)
    finally:
        await proto.close()


async def _delete(url: str, queue: str) -> None:
    proto = await connect(parse_url(url))
    try:
        await proto.rpc(commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)
    finally:
        await proto.close()


def declare_queue(url: str, queue: str) -> None:
    """A transient queue: non-durable and auto-delete (and deleted explicitly after the run)."""
    _run(_declare(url, queue))


def delete_queue(url: str, queue: str) -> None:
    _run(_delete(url, queue))


async def _declare_topology(url: str, queues: tuple[str, ...], exchange: str) -> None:
    proto = await connect(parse_url(url))
    try:
        for queue in queues:
            await proto.rpc(commands.Queue.Declare(queue=queue, durable=False, auto_delete=True),
                            commands.Queue.DeclareOk)
        if exchange:
            await proto.rpc(commands.Exchange.Declare(exchange=exchange, exchange_type="fanout", durable=False),
                            commands.Exchange.DeclareOk)
            for queue in queues:
                await proto.rpc(commands.Queue.Bind(queue=queue, exchange=exchange), commands.Queue.BindOk)
    finally:
        await proto.close()


async def _delete_topology(url: str, queues: tuple[str, ...], exchange: str, timeout: float) -> None:
    proto = await connect(parse_url(url))
    try:
        if exchange:
            await proto.rpc(commands.Exchange.Delete(exchange=exchange), commands.Exchange.DeleteOk, timeout=timeout)
        for queue in queues:
            await proto.rpc(commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk, timeout=timeout)
    finally:
        await proto.close()


def declare_topology(url: str, queues: tuple[str, ...], exchange: str = "") -> None:
    """Transient queues (non-durable, auto-delete) and, when ``exchange`` is given, a transient
    fanout exchange of that name bound to every queue."""
    _run(_declare_topology(url, queues, exchange))


def delete_topology(url: str, queues: tuple[str, ...], exchange: str = "", timeout: float = 120.0) -> None:
    """Delete what :func:`declare_topology` made (a queue holding a deep backlog can take a while)."""
    _run(_delete_topology(url, queues, exchange, timeout))


# ------------------------------------------------------------------------------------ self-test

def parser_selftest(seconds: float = 1.0, body_size: int = 1024, manual_ack: bool = True) -> dict:
    """Consumer capacity without a broker: feed synthetic deliveries to the consumer fast path
    in 64 KB reads (acking once per read when ``manual_ack``); returns msg per CPU second."""
    from unittest import mock

    async def main() -> dict:
        proto = BenchProtocol()
        proto.transport = mock.Mock()
        proto.transport.write = lambda data: None
        proto.manual_ack = manual_ack
        proto.expect_size = body_size
        one = bytearray()
        for tag in range(1, 65):
            one += pframe.marshal(commands.Basic.Deliver(consumer_tag="bench-c0", delivery_tag=tag,
                                                         exchange="", routing_key="q"), CHANNEL)
            one += pframe.marshal(pheader.ContentHeader(0, body_size, commands.Basic.Properties()), CHANNEL)
            one += pframe.marshal(pbody.ContentBody(bytes(body_size)), CHANNEL)
        stream = bytes(one)
        read = 65536
        start = time.process_time()
        while time.process_time() - start < seconds:
            proto.acked = 0
            for pos in range(0, len(stream), read):
                chunk = stream[pos:pos + read]
                proto.get_buffer(-1)[:len(chunk)] = chunk
                proto.buffer_updated(len(chunk))
        return {"consumer_msgs_per_cpu_s": proto.count / (time.process_time() - start)}

    return _run(main())
