"""Streams, side by side: write a stream with confirms, then read it from ``first`` with several
consumers at once.

``python -m interop.bench.streams --url URL [--reference]`` runs, against each broker:

1. one publisher writes ``--messages`` (default 1 000 000) messages of ``--size`` bytes (default
   1 KB) into a new stream with publisher confirms, as fast as the broker reads it: nothing caps
   the unconfirmed publishes but the socket (as RabbitMQ's PerfTest without ``--confirm``'s cap);
   the write rate is the messages over the time until the last confirm came back;
2. ``--consumers`` consumers (default 3; manual acks, prefetch ``--prefetch``, default 1000) read the
   whole stream from ``first`` concurrently; the read rate is what each read per second, and all
   of them together;
3. the broker's peak resident memory is sampled from ``/proc`` every 100 ms throughout.

The stream is deleted afterwards. The load generator is ``loadgen.py``'s (pre-encoded frames, uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
import uuid

from pamqp import commands

from interop.bench.durable import REFERENCE_URL, ConfirmingProtocol, RssSampler, _declare_durable, persistent_message
from interop.bench.durable import _delete as _delete_queue
from interop.bench.loadgen import _run, connect, parse_url
from interop.bench.procstat import listener_pid

STREAM = {"x-queue-type": "stream"}


async def _declare_stream(url: str, name: str) -> None:
    await _declare_durable(url, name, STREAM)


async def _delete(url: str, name: str) -> None:
    await _delete_queue(url, name, timeout=300)  # (a big stream takes a while to drop)


async def write_stream(url: str, name: str, count: int, size: int, window: int) -> tuple[float, int]:
    """Publish ``count`` messages with confirms (at most ``window`` unconfirmed; 0: no cap): the
    seconds until the last confirm, and how many were nacked."""
    proto = await connect(parse_url(url), protocol_factory=ConfirmingProtocol)
    await proto.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    message = persistent_message(name, bytes(size), proto.frame_max, persistent=False)
    batch = 100
    sent = 0
    started = time.perf_counter()
    try:
        while sent < count:
            if proto.error is not None:
                raise RuntimeError(proto.error)
            if window and len(proto.unconfirmed) + batch > window:
                proto.room.clear()
                try:
                    await asyncio.wait_for(proto.room.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            n = min(batch, count - sent)
            now = time.perf_counter_ns()
            proto.unconfirmed.extend((sent + i + 1, now) for i in range(n))
            proto.transport.write(message * n)
            sent += n
            if not proto.can_write.is_set():
                await proto.can_write.wait()
            else:
                await asyncio.sleep(0)
        while proto.confirmed < count:
            if proto.error is not None:
                raise RuntimeError(proto.error)
            proto.room.clear()
            try:
                await asyncio.wait_for(proto.room.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
        return time.perf_counter() - started, proto.nacked
    finally:
        await proto.close()


async def read_stream(url: str, name: str, count: int, size: int, consumers: int, prefetch: int) -> list[float]:
    """``consumers`` consumers read ``count`` messages each from ``first``, concurrently: the
    seconds each took."""
    protos = []
    for _ in range(consumers):
        proto = await connect(parse_url(url))
        proto.expect_size = size
        proto.manual_ack = True
        await proto.rpc(commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)
        protos.append(proto)
    started = time.perf_counter()
    for proto in protos:
        await proto.rpc(commands.Basic.Consume(queue=name, arguments={"x-stream-offset": "first"}),
                        commands.Basic.ConsumeOk)
    seconds: list[float | None] = [None] * consumers
    try:
        while any(value is None for value in seconds):
            for index, proto in enumerate(protos):
                if proto.error is not None:
                    raise RuntimeError(proto.error)
                if seconds[index] is None and proto.count >= count:
                    seconds[index] = time.perf_counter() - started
            await asyncio.sleep(0.02)
    finally:
        for proto in protos:
            await proto.close()
    return seconds  # type: ignore[return-value]


async def run(url: str, args: argparse.Namespace, pid: int | None) -> dict:
    name = f"bench-stream-{uuid.uuid4().hex[:8]}"
    await _declare_stream(url, name)
    sampler = RssSampler(pid)
    sampling = asyncio.create_task(sampler.run())
    try:
        write_seconds, nacked = await write_stream(url, name, args.messages, args.size, args.window)
        rss_after_write = sampler.peak_kb
        read_seconds = await read_stream(url, name, args.messages, args.size, args.consumers, args.prefetch)
    finally:
        sampling.cancel()
        sampler.sample()
        await _delete(url, name)
    slowest = max(read_seconds)
    return {"write msg/s": args.messages / write_seconds,
            "read msg/s per consumer": args.messages / slowest,
            "read msg/s, all consumers": args.messages * args.consumers / slowest,
            "peak RSS MB, writing": rss_after_write / 1024 if pid else float("nan"),
            "peak RSS MB, overall": sampler.peak_kb / 1024 if pid else float("nan"),
            "nacked": nacked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.bench.streams", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="amqpbroker's URL")
    parser.add_argument("--reference", action="store_true", help=f"also run against {REFERENCE_URL}")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--window", type=int, default=0, help="unconfirmed publishes at most (0: no cap)")
    args = parser.parse_args(argv)
    targets = [("amqpbroker", args.url)] + ([("RabbitMQ", REFERENCE_URL)] if args.reference else [])
    results: dict[str, dict] = collections.OrderedDict()
    for label, url in targets:
        parsed = parse_url(url)
        result = _run(run(url, args, listener_pid(parsed.host, parsed.port)))
        print(f"{label}: " + ", ".join(f"{key} {value:,.1f}" for key, value in result.items()), file=sys.stderr)
        results[label] = result
    print(f"\nstream ({args.messages:,} x {args.size} B, confirms, then {args.consumers} consumers from first)")
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in next(iter(results.values())):
        print(f"| {key} | " + " | ".join(f"{result[key]:,.1f}" for result in results.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
