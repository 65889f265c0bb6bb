"""Run one workload against one broker: spawn the client processes, time the phases, collect."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_mod
import time
import uuid
from array import array
from dataclasses import asdict, dataclass

from . import loadgen
from .durable import fill_queue
from .loadgen import PHASE_MEASURE, PHASE_STOP, PHASE_WARMUP, ClientConfig, Shared
from .procstat import cpu_seconds, system_cpu

WORKLOADS = ("throughput-autoack", "throughput-ack", "latency", "throughput-fanout")
DEFAULT_WORKLOADS = ("throughput-autoack", "throughput-ack", "latency")


@dataclass
class RunOptions:
    duration: float = 10.0
    warmup: float = 2.0
    body_size: int = 1024
    producers: int = 1
    consumers: int = 1
    queues: int = 1                  # producer i -> queue i % queues, consumer j <- queue j % queues
    prefetch: int = 100
    ack_every: int = 0
    max_inflight: int = 0            # 0: no cap; N: producers pause at N unconsumed deliveries
    batch: int = 100
    prefill: int = 0                 # messages put in each queue before the clients start
    rate: float = 10_000.0
    latency_ack: str = "manual"      # manual (qos prefetch) or auto
    layout: str = "split"            # split: a process per client; single: all in one process
    setup_timeout: float = 20.0


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Topology:
    """The queues (and, for fan-out, the exchange) of one run, with names unique to the run."""

    queues: tuple[str, ...]
    exchange: str = ""

    @classmethod
    def for_run(cls, workload: str, n_queues: int) -> "Topology":
        base = f"amqpbroker-bench-{workload}-{uuid.uuid4().hex[:8]}"
        queues = (base,) if n_queues == 1 else tuple(f"{base}-{i}" for i in range(n_queues))
        return cls(queues, f"{base}-fanout" if workload == "throughput-fanout" else "")


def check_options(opts: RunOptions) -> None:
    """Raise ValueError for options that would leave a queue without a consumer."""
    if opts.queues < 1:
        raise ValueError("queues must be at least 1")
    if opts.consumers < opts.queues:
        raise ValueError(f"{opts.queues} queues need at least {opts.queues} consumers "
                         "(consumer j consumes queue j % queues); a queue nobody consumes grows without bound")


def client_config(url: str, topology: Topology, workload: str, opts: RunOptions) -> ClientConfig:
    if workload == "throughput-autoack":
        manual, rate, latency = False, 0.0, False
    elif workload in ("throughput-ack", "throughput-fanout"):
        manual, rate, latency = True, 0.0, False
    elif workload == "latency":
        manual, rate, latency = opts.latency_ack == "manual", opts.rate, True
    else:
        raise ValueError(f"unknown workload {workload!r} (known: {', '.join(WORKLOADS)})")
    return ClientConfig(
        url=url, queues=topology.queues, exchange=topology.exchange,
        copies=len(topology.queues) if topology.exchange else 1, body_size=opts.body_size,
        manual_ack=manual, prefetch=opts.prefetch, ack_every=opts.ack_every, max_inflight=opts.max_inflight,
        batch=opts.batch, rate=rate, n_producers=opts.producers, record_latency=latency,
        connect_timeout=opts.setup_timeout)


def _percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


def latency_stats(samples_ns: array) -> dict:
    values = sorted(samples_ns)
    n = len(values)
    ms = 1e6
    return {
        "samples": n,
        "p50_ms": _percentile(values, 0.50) / ms,
        "p99_ms": _percentile(values, 0.99) / ms,
        "p999_ms": _percentile(values, 0.999) / ms,
        "max_ms": (values[-1] / ms) if n else float("nan"),
        "mean_ms": (sum(values) / n / ms) if n else float("nan"),
    }


def _prefill(url: str, topology: Topology, opts: RunOptions) -> float | None:
    """Put ``opts.prefill`` messages in every queue (no consumer yet); returns the seconds it took
    (None without a prefill)."""
    if not opts.prefill:
        return None
    started = time.perf_counter()
    try:
        for queue in topology.queues:
            loadgen._run(fill_queue(url, queue, opts.prefill, opts.body_size))
    except Exception as exc:  # noqa: BLE001 - report it like any other setup failure
        with contextlib.suppress(Exception):
            loadgen.delete_topology(url, topology.queues, topology.exchange)
        raise BenchError(f"cannot fill the queue: {type(exc).__name__}: {exc}") from exc
    return time.perf_counter() - started


def run_workload(url: str, workload: str, opts: RunOptions, broker_pid: int | None = None,
                 label: str | None = None) -> dict:
    """One measured run. Raises BenchError when the clients fail before or during measurement."""
    check_options(opts)
    ctx = mp.get_context("spawn")
    topology = Topology.for_run(workload, opts.queues)
    cfg = client_config(url, topology, workload, opts)
    shared = Shared(ctx, opts.producers, opts.consumers)
    report = ctx.Queue()
    roles = [("consumer", i) for i in range(opts.consumers)] + [("producer", i) for i in range(opts.producers)]
    groups = [[role] for role in roles] if opts.layout == "split" else [roles]

    try:
        loadgen.declare_topology(url, topology.queues, topology.exchange)
    except Exception as exc:  # noqa: BLE001 - refused, bad credentials, unknown vhost, timeout...
        raise BenchError(f"cannot set up the queues on {loadgen.parse_url(url).display}: "
                         f"{type(exc).__name__}: {exc}") from exc
    prefill_seconds = _prefill(url, topology, opts)
    procs = [ctx.Process(target=loadgen.worker_main, args=(group, cfg, shared, report), daemon=True)
             for group in groups]
    pids: dict[tuple[str, int], int] = {}
    done: dict[tuple[str, int], dict] = {}
    errors: list[str] = []

    def handle(msg) -> None:
        kind, role, idx, payload = msg
        if kind == "ready":
            pids[(role, idx)] = payload
        else:
            done[(role, idx)] = payload
            if payload.get("error"):
                errors.append(f"{role} {idx}: {payload['error']}")

    def pump(seconds: float) -> None:
        """Sleep ``seconds`` while collecting reports; stop early on a client error."""
        deadline = time.monotonic() + seconds
        while not errors:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                handle(report.get(timeout=min(remaining, 0.2)))
            except queue_mod.Empty:
                dead = [p for p in procs if not p.is_alive()]
                if dead and shared.phase.value < PHASE_STOP:
                    errors.append(f"client process exited with code {dead[0].exitcode}")

    def snapshot() -> dict:
        return {
            "t": time.perf_counter(),
            "consumed": sum(shared.consumed),
            "published": sum(shared.published),
            "broker_cpu": cpu_seconds(broker_pid),
            "clients_cpu": {key: cpu_seconds(pid) for key, pid in pids.items()},
            "system_cpu": system_cpu(),
        }

    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + opts.setup_timeout
        while len(pids) < len(roles) and not errors:
            if time.monotonic() > deadline:
                errors.append(f"clients not ready within {opts.setup_timeout} s")
                break
            pump(min(0.2, max(0.0, deadline - time.monotonic())))
        if errors:
            raise BenchError("; ".join(errors))

        shared.phase.value = PHASE_WARMUP
        pump(opts.warmup)
        before = snapshot()
        shared.phase.value = PHASE_MEASURE
        pump(opts.duration)
        after = snapshot()
        measured_errors = list(errors)
    finally:
        shared.phase.value = PHASE_STOP
        deadline = time.monotonic() + 10
        while len(done) < len(roles) and time.monotonic() < deadline:
            try:
                handle(report.get(timeout=0.2))
            except queue_mod.Empty:
                if not any(p.pid is not None and p.is_alive() for p in procs):
                    break
        for proc in procs:
            if proc.pid is None:  # never started
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        try:
            loadgen.delete_topology(url, topology.queues, topology.exchange)
        except Exception as exc:  # noqa: BLE001 - best effort: the queues are auto-delete anyway
            errors.append(f"delete: {exc}")

    if measured_errors:
        raise BenchError("; ".join(measured_errors))

    elapsed = after["t"] - before["t"]
    consumed = after["consumed"] - before["consumed"]
    published = after["published"] - before["published"]
    result = {
        "workload": workload,
        "label": label or url,
        "url": loadgen.parse_url(url).display,
        "duration_s": elapsed,
        "consumed": consumed,
        "published": published,
        "consumed_rate": consumed / elapsed,
        "published_rate": published / elapsed,
        "queues": len(topology.queues),
        "prefill_s": prefill_seconds,
        # deliveries not yet consumed when measurement ended, all queues, as the clients counted them
        "backlog_at_end": opts.prefill * len(topology.queues) + after["published"] * cfg.copies - after["consumed"],
        "broker_pid": broker_pid,
        "broker_cpu_s": None,
        "broker_cpu_util": None,
        "broker_cpu_us_per_msg": None,
        "clients": {},
        "latency": None,
        "options": asdict(opts),
        "warnings": errors,  # errors after the measurement window (e.g. on close)
    }
    if before["broker_cpu"] is not None and after["broker_cpu"] is not None:
        cpu = after["broker_cpu"] - before["broker_cpu"]
        result["broker_cpu_s"] = cpu
        result["broker_cpu_util"] = cpu / elapsed
        result["broker_cpu_us_per_msg"] = cpu / consumed * 1e6 if consumed else None
    if before["system_cpu"] and after["system_cpu"]:
        # whole machine, in cores: busy + idle + steal = number of CPUs
        result["system_cores"] = {k: (after["system_cpu"][k] - before["system_cpu"][k]) / elapsed
                                  for k in before["system_cpu"]}
    for key in sorted(pids):
        c0, c1 = before["clients_cpu"].get(key), after["clients_cpu"].get(key)
        if c0 is not None and c1 is not None:
            result["clients"][f"{key[0]}{key[1]}"] = {"cpu_util": (c1 - c0) / elapsed}
    for (role, idx), payload in done.items():
        if role == "consumer":  # whole-run totals (warm-up included): how the consumer read and acked
            entry = result["clients"].setdefault(f"consumer{idx}", {})
            entry.update({k: payload.get(k) for k in ("count", "reads", "acks", "last_tag")})
            # delivery tags are 1, 2, 3... per channel: the last one read must match the count
            # (one more when the run stopped between a Basic.Deliver and its body)
            if payload.get("last_tag") is not None and not 0 <= payload["last_tag"] - payload["count"] <= 1:
                errors.append(f"consumer {idx}: last delivery tag {payload['last_tag']} but "
                              f"{payload['count']} messages counted")
    if opts.layout == "single":
        # all clients share one process: every entry shows the same (whole-process) figure
        result["clients"] = {"all": next(iter(result["clients"].values()), {})}
    if cfg.record_latency:
        samples = array("q")
        for payload in done.values():
            if payload.get("role") == "consumer" and payload.get("latency_ns"):
                samples.frombytes(payload["latency_ns"])
        result["latency"] = latency_stats(samples)
        result["target_rate"] = opts.rate
    return result
