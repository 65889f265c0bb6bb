"""Durable workloads, side by side: persistent messages with publisher confirms, and a deep backlog.

``python -m interop.bench.durable --url URL [--reference]`` runs, against each broker:

* ``confirms``: ``--publishers`` connections (default 4) publish persistent 1 KB messages to one
  durable queue with confirms, each keeping at most ``--window`` (default 100) unconfirmed; one
  autoack consumer drains the queue (``--no-consumer``: nobody does, the queue grows). Reported: confirmed msg/s, and confirm latency (publish
  write → the ``basic.ack`` covering it) p50 / p99 / max, over ``--duration`` seconds after a
  warm-up. ``--rate R`` publishes R msg/s in all instead of as fast as the window allows, which
  measures the latency of durability itself rather than of a saturated broker.
* ``backlog``: ``--backlog`` messages (default 1 000 000, 1 KB, transient or ``--persistent``) are
  published to a durable queue with no consumer, as fast as the broker reads them; then one
  consumer (manual ack, prefetch 100) drains it. Reported: publish rate, drain rate, the broker's
  peak resident memory (sampled from ``/proc`` every 100 ms) and the longest time the broker
  stopped reading the publisher (no progress for that long while it had more to send).

The load generator is the one in ``loadgen.py`` (pre-encoded frames, uvloop); confirms are read
by a small subclass of its protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
import uuid

from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from interop.bench.loadgen import CHANNEL, BenchProtocol, _run, connect, parse_url
from interop.bench.procstat import listener_pid, rss_kb

REFERENCE_URL = "amqp://guest:guest@127.0.0.1:5682/"


def persistent_message(queue: str, body: bytes, frame_max: int, persistent: bool = True) -> bytes:
    properties = commands.Basic.Properties(delivery_mode=2 if persistent else 1)
    out = bytearray(pframe.marshal(commands.Basic.Publish(exchange="", routing_key=queue), CHANNEL))
    out += pframe.marshal(pheader.ContentHeader(0, len(body), properties), CHANNEL)
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        out += pframe.marshal(pbody.ContentBody(body[start:start + chunk]), CHANNEL)
    return bytes(out)


class ConfirmingProtocol(BenchProtocol):
    """A publisher that tracks its unconfirmed publishes and the latency of each confirm."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unconfirmed: collections.deque[tuple[int, int]] = collections.deque()  # (seq, sent ns)
        self.confirmed = 0
        self.nacked = 0
        self.latencies: list[int] | None = None
        self.room = asyncio.Event()

    def _slow_frame(self, data: bytes) -> None:
        _, _, frame = pframe.unmarshal(data)
        if not isinstance(frame, (commands.Basic.Ack, commands.Basic.Nack)):
            super()._slow_frame(data)
            return
        now = time.perf_counter_ns()
        unconfirmed = self.unconfirmed
        if frame.multiple:
            settled = []
            while unconfirmed and unconfirmed[0][0] <= frame.delivery_tag:
                settled.append(unconfirmed.popleft())
        else:
            settled = [item for item in unconfirmed if item[0] == frame.delivery_tag]
            if settled:
                unconfirmed.remove(settled[0])
        self.confirmed += len(settled)
        if isinstance(frame, commands.Basic.Nack):
            self.nacked += len(settled)
        if self.latencies is not None:
            self.latencies.extend(now - sent for _, sent in settled)
        self.room.set()


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


async def _declare_durable(url: str, queue: str, arguments: dict | None = None) -> None:
    proto = await connect(parse_url(url))
    try:
        await proto.rpc(commands.Queue.Declare(queue=queue, durable=True, arguments=arguments),
                        commands.Queue.DeclareOk)
    finally:
        await proto.close()


async def _delete(url: str, queue: str, timeout: float = 120) -> None:
    proto = await connect(parse_url(url))
    try:
        await proto.rpc(commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk, timeout=timeout)
    finally:
        await proto.close()


async def _message_count(proto: BenchProtocol, queue: str) -> int:
    ok = await proto.rpc(commands.Queue.Declare(queue=queue, passive=True), commands.Queue.DeclareOk)
    return ok.message_count


# ------------------------------------------------------------------------------------ confirms

async def _confirming_publisher(url: str, queue: str, window: int, size: int, stop: asyncio.Event,
                                measuring: asyncio.Event, rate: float = 0.0) -> ConfirmingProtocol:
    """Publish with at most ``window`` unconfirmed, as fast as confirms come back, or at ``rate``
    msg/s (sent every millisecond, as many as are due)."""
    proto = await connect(parse_url(url), protocol_factory=ConfirmingProtocol)
    await proto.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
    message = persistent_message(queue, bytes(size), proto.frame_max)
    seq = 0
    batch = 1 if rate else max(1, window // 4)
    started = time.perf_counter()
    while not stop.is_set() and proto.error is None:
        if measuring.is_set() and proto.latencies is None:
            proto.latencies = []
        room = window - len(proto.unconfirmed)
        if rate:
            due = int((time.perf_counter() - started) * rate) - seq
            if due <= 0:
                await asyncio.sleep(0.001)
                continue
            room = min(room, due)
        if room < batch:
            proto.room.clear()
            try:
                await asyncio.wait_for(proto.room.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            continue
        now = time.perf_counter_ns()
        for _ in range(room):
            seq += 1
            proto.unconfirmed.append((seq, now))
        proto.transport.write(message * room)
        await asyncio.sleep(0)
    return proto


async def run_confirms(url: str, args: argparse.Namespace) -> dict:
    queue = f"bench-confirms-{uuid.uuid4().hex[:8]}"
    await _declare_durable(url, queue)
    consumer = await connect(parse_url(url))
    consumer.expect_size = args.size
    if not args.no_consumer:
        await consumer.rpc(commands.Basic.Consume(queue=queue, no_ack=True), commands.Basic.ConsumeOk)
    stop, measuring = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(_confirming_publisher(url, queue, args.window, args.size, stop, measuring,
                                                       args.rate / args.publishers))
             for _ in range(args.publishers)]
    await asyncio.sleep(args.warmup)
    measuring.set()
    await asyncio.sleep(0.05)
    protos = [task for task in tasks if task.done()]
    if protos:  # a publisher failed during the warm-up
        stop.set()
        raise RuntimeError(str(protos[0].exception() or "publisher ended early"))
    started = time.perf_counter()
    await asyncio.sleep(args.duration)
    stop.set()
    elapsed = time.perf_counter() - started
    publishers = await asyncio.gather(*tasks)
    latencies = sorted(value for proto in publishers for value in (proto.latencies or ()))
    errors = [proto.error for proto in publishers + [consumer] if proto.error]
    for proto in publishers:
        await proto.close()
    await consumer.close()
    await _delete(url, queue)
    return {"confirmed/s": len(latencies) / elapsed, "p50 ms": _percentile(latencies, 0.50),
            "p99 ms": _percentile(latencies, 0.99), "max ms": _percentile(latencies, 1.0),
            "nacked": sum(proto.nacked for proto in publishers), "errors": errors}


# ------------------------------------------------------------------------------------- backlog

class RssSampler:
    """Peak resident memory of a process, sampled from /proc every 100 ms."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_kb = 0

    def sample(self) -> None:
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid) or 0)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.1)


async def fill_queue(url: str, queue: str, count: int, size: int, persistent: bool = False) -> tuple[float, float]:
    """Publish ``count`` messages of ``size`` bytes to ``queue`` (default exchange, no consumer
    needed) as fast as the broker reads them, then wait until the queue holds at least ``count``.

    Returns the seconds that took and the longest time the broker stopped reading the publisher."""
    publisher = await connect(parse_url(url))
    message = persistent_message(queue, bytes(size), publisher.frame_max, persistent)
    batch = 100
    sent = 0
    longest_stall = 0.0
    started = time.perf_counter()
    while sent < count:
        n = min(batch, count - sent)
        publisher.transport.write(message * n)
        sent += n
        if not publisher.can_write.is_set():  # the broker is not reading us: how long?
            stalled = time.perf_counter()
            await publisher.can_write.wait()
            longest_stall = max(longest_stall, time.perf_counter() - stalled)
        else:
            await asyncio.sleep(0)
    while await _message_count(publisher, queue) < count:  # everything published arrived
        if publisher.error:
            raise RuntimeError(publisher.error)
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    await publisher.close()
    return seconds, longest_stall


async def run_backlog(url: str, args: argparse.Namespace, pid: int | None) -> dict:
    queue = f"bench-backlog-{uuid.uuid4().hex[:8]}"
    await _declare_durable(url, queue)
    sampler = RssSampler(pid)
    sampling = asyncio.create_task(sampler.run())
    publish_seconds, longest_stall = await fill_queue(url, queue, args.backlog, args.size, args.persistent)

    consumer = await connect(parse_url(url))
    consumer.expect_size = args.size
    consumer.manual_ack = True
    await consumer.rpc(commands.Basic.Qos(prefetch_count=100), commands.Basic.QosOk)
    started = time.perf_counter()
    await consumer.rpc(commands.Basic.Consume(queue=queue), commands.Basic.ConsumeOk)
    while consumer.count < args.backlog and consumer.error is None:
        await asyncio.sleep(0.05)
    drain_seconds = time.perf_counter() - started
    error = consumer.error
    await consumer.close()
    sampling.cancel()
    sampler.sample()
    await _delete(url, queue)
    return {"publish msg/s": args.backlog / publish_seconds, "drain msg/s": args.backlog / drain_seconds,
            "peak RSS MB": sampler.peak_kb / 1024 if pid else float("nan"),
            "longest publisher stall s": longest_stall, "errors": [error] if error else []}


# -------------------------------------------------------------------------------------- command

def _pid_for(url: str) -> int | None:
    parsed = parse_url(url)
    return listener_pid(parsed.host, parsed.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.bench.durable", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="amqpbroker's URL")
    parser.add_argument("--reference", action="store_true", help=f"also run against {REFERENCE_URL}")
    parser.add_argument("--workload", default="confirms,backlog")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=100, help="unconfirmed publishes per publisher")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="confirms: total publish rate in msg/s (default 0: as fast as confirms allow)")
    parser.add_argument("--no-consumer", action="store_true",
                        help="confirms: nobody consumes, so every message is written (the queue grows)")
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--persistent", action="store_true", help="backlog of persistent messages")
    args = parser.parse_args(argv)
    targets = [("amqpbroker", args.url)] + ([("RabbitMQ", REFERENCE_URL)] if args.reference else [])
    results: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    failed = False
    for workload in args.workload.split(","):
        for label, url in targets:
            pid = _pid_for(url)
            if workload == "confirms":
                result = _run(run_confirms(url, args))
            else:
                result = _run(run_backlog(url, args, pid))
            failed |= bool(result.pop("errors"))
            print(f"{workload} {label}: " + ", ".join(f"{key} {value:,.3f}" for key, value in result.items()),
                  file=sys.stderr)
            results[workload][label] = result
    for workload, by_label in results.items():
        print(f"\n{workload}" + ("" if workload == "confirms" else f" ({args.backlog:,} x {args.size} B, "
                                 f"{'persistent' if args.persistent else 'transient'})"))
        for key in next(iter(by_label.values())):
            row = " | ".join(f"{by_label[label][key]:>12,.2f}" for label, _ in targets if label in by_label)
            print(f"  {key:28} | {row}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
