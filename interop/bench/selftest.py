"""How fast is the load generator itself? (``python -m interop.bench --selftest``)

1. The consumer fast path alone: synthetic deliveries fed to ``BenchProtocol.buffer_updated``.
2. The real clients over loopback sockets against a *null broker*: a tiny fake server (its own
   process) that answers the handshake and setup methods, discards whatever clients send, and
   streams pre-encoded deliveries (sequential delivery tags) to every consumer as fast as the
   socket takes them. The throughput workloads then measure the generator's own ceiling.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import struct

from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from . import loadgen
from .runner import RunOptions, run_workload
from amqpbroker.testing import free_port

_HDR = struct.Struct(">BHI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PUBLISH = (60 << 16) | 40
_ACK = (60 << 16) | 80



async def _null_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body_size: int) -> None:
    def send(frame, channel: int) -> None:
        writer.write(pframe.marshal(frame, channel))

    await reader.readexactly(8)  # protocol header
    send(commands.Connection.Start(server_properties={"product": "null-broker"}, mechanisms="PLAIN",
                                   locales="en_US"), 0)
    flood: asyncio.Task | None = None
    buf = bytearray()
    try:
        while True:
            data = await reader.read(1 << 18)
            if not data:
                return
            buf += data
            off = 0
            while len(buf) - off >= 8:
                ftype, channel, size = _HDR.unpack_from(buf, off)
                end = off + 8 + size
                if end > len(buf):
                    break
                if ftype == 1 and _U32.unpack_from(buf, off + 7)[0] not in (_PUBLISH, _ACK):
                    _, _, frame = pframe.unmarshal(bytes(buf[off:end]))
                    if isinstance(frame, commands.Connection.StartOk):
                        send(commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=0), 0)
                    elif isinstance(frame, commands.Connection.Open):
                        send(commands.Connection.OpenOk(), 0)
                    elif isinstance(frame, commands.Channel.Open):
                        send(commands.Channel.OpenOk(), channel)
                    elif isinstance(frame, commands.Queue.Declare):
                        send(commands.Queue.DeclareOk(queue=frame.queue, message_count=0, consumer_count=0),
                             channel)
                    elif isinstance(frame, commands.Queue.Delete):
                        send(commands.Queue.DeleteOk(message_count=0), channel)
                    elif isinstance(frame, commands.Basic.Qos):
                        send(commands.Basic.QosOk(), channel)
                    elif isinstance(frame, commands.Basic.Consume):
                        send(commands.Basic.ConsumeOk(consumer_tag=frame.consumer_tag), channel)
                        flood = asyncio.create_task(_flood(writer, channel, frame.consumer_tag, body_size))
                    elif isinstance(frame, commands.Connection.Close):
                        if flood is not None:
                            flood.cancel()
                        send(commands.Connection.CloseOk(), 0)
                        await writer.drain()
                        return
                off = end
            del buf[:off]
    finally:
        if flood is not None:
            flood.cancel()
        writer.close()


async def _flood(writer: asyncio.StreamWriter, channel: int, consumer_tag: str, body_size: int) -> None:
    n = 128
    one = pframe.marshal(commands.Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=1, exchange="",
                                                routing_key="q"), channel)
    one += pframe.marshal(pheader.ContentHeader(0, body_size, commands.Basic.Properties()), channel)
    one += pframe.marshal(pbody.ContentBody(bytes(body_size)), channel)
    tag_offset = 12 + len(consumer_tag)
    chunk = bytearray(one * n)
    offsets = [i * len(one) + tag_offset for i in range(n)]
    tag = 0
    while True:
        for o in offsets:
            tag += 1
            _U64.pack_into(chunk, o, tag)
        writer.write(bytes(chunk))
        await writer.drain()


async def _null_broker(port: int, body_size: int, ready) -> None:
    server = await asyncio.start_server(lambda r, w: _null_connection(r, w, body_size), "127.0.0.1", port)
    ready.set()
    async with server:
        await server.serve_forever()


def _null_broker_main(port: int, body_size: int, ready) -> None:
    loadgen._run(_null_broker(port, body_size, ready))


def run(duration: float = 3.0, body_size: int = 1024, layout: str = "split") -> list[str]:
    lines = []
    for manual in (False, True):
        res = loadgen.parser_selftest(1.0, body_size, manual)
        mode = "manual ack, one ack per 64 KB read" if manual else "autoack"
        lines.append(f"consumer fast path alone ({body_size} B, {mode}): "
                     f"{res['consumer_msgs_per_cpu_s']:,.0f} msg per CPU second")
    ctx = mp.get_context("spawn")
    port = free_port()
    ready = ctx.Event()
    server = ctx.Process(target=_null_broker_main, args=(port, body_size, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(15):
            raise RuntimeError("null broker did not start")
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        opts = RunOptions(duration=duration, warmup=1.0, body_size=body_size, layout=layout)
        for workload in ("throughput-autoack", "throughput-ack"):
            r = run_workload(url, workload, opts, broker_pid=server.pid, label="null broker")
            clients = ", ".join(f"{name} {c['cpu_util'] * 100:.0f}% CPU" for name, c in r["clients"].items()
                                if c.get("cpu_util") is not None)
            lines.append(f"null broker {workload}: consumer {r['consumed_rate']:,.0f} msg/s, producer "
                         f"{r['published_rate']:,.0f} msg/s ({clients}; null broker "
                         f"{(r['broker_cpu_util'] or 0) * 100:.0f}% CPU)")
    finally:
        server.terminate()
        server.join(5)
    return lines
