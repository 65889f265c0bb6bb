"""``python -m interop.bench``: benchmark one or more AMQP brokers, optionally against RabbitMQ.

Examples::

    python -m interop.bench --url amqp://guest:guest@127.0.0.1:5672/ --reference
    python -m interop.bench --url amqp://guest:guest@127.0.0.1:5682/ --duration 5 --workload latency
    python -m interop.bench --selftest
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
from dataclasses import dataclass

from . import loadgen
from .procstat import listener_pid, process_name
from .runner import DEFAULT_WORKLOADS, WORKLOADS, BenchError, RunOptions, run_workload

DEFAULT_REFERENCE = "amqp://guest:guest@127.0.0.1:5682/"


@dataclass
class Target:
    url: str
    label: str
    pid: int | None
    reference: bool = False


def _pid_arg(value: str | None, url: str) -> int | None:
    if value is None or value == "auto":
        return _auto_pid(url)
    if value in ("none", ""):
        return None
    return int(value)


def _auto_pid(url: str) -> int | None:
    parsed = loadgen.parse_url(url)
    return listener_pid(parsed.host, parsed.port)


def _workloads(values: list[str] | None) -> list[str]:
    names: list[str] = []
    for value in values or [",".join(DEFAULT_WORKLOADS)]:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in WORKLOADS:
                raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
            if name not in names:
                names.append(name)
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m interop.bench",
        description="Throughput and latency benchmark for AMQP 0-9-1 brokers (amqpbroker vs RabbitMQ).")
    p.add_argument("--url", action="append", default=[], help="broker to benchmark (repeatable)")
    p.add_argument("--label", action="append", default=[],
                   help="column name for the matching --url (default: amqpbroker, or host:port)")
    p.add_argument("--reference", action="store_true",
                   help="also benchmark the reference RabbitMQ and print ratios "
                        "(start one with interop/reference.sh start)")
    p.add_argument("--reference-url", default=DEFAULT_REFERENCE, help="default: %(default)s")
    p.add_argument("--broker-pid", action="append", default=[],
                   help="pid of the broker behind the matching --url, for CPU accounting; "
                        "'auto' (default) finds the local process listening on the URL's port, 'none' skips")
    p.add_argument("--reference-pid", default="auto", help="pid of the reference broker (default: auto)")
    p.add_argument("--workload", action="append",
                   help=f"comma-separated subset of {','.join(WORKLOADS)} "
                        f"(default: {','.join(DEFAULT_WORKLOADS)})")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run (default 2)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per workload and broker, interleaved; the table shows the median (default 1)")
    p.add_argument("--size", type=int, default=1024, help="message body bytes (default 1024)")
    p.add_argument("--producers", type=int, default=1)
    p.add_argument("--consumers", type=int, default=1)
    p.add_argument("--queues", type=int, default=1,
                   help="queues per run (default 1): producer i publishes to queue i %% N, consumer j "
                        "consumes queue j %% N; throughput-fanout binds all N to its fanout exchange. "
                        "Needs at least N consumers")
    p.add_argument("--prefetch", type=int, default=100, help="basic.qos prefetch for manual ack (default 100)")
    p.add_argument("--ack-every", type=int, default=0,
                   help="manual ack: 0 (default) acks once per socket read with multiple=True up to the "
                        "last delivery tag read; N acks (multiple) every N deliveries")
    p.add_argument("--max-inflight", type=int, default=0,
                   help="0 (default): no cap, producers write as fast as TCP back-pressure lets them "
                        "(as RabbitMQ PerfTest); N: producers pause while N deliveries are unconsumed")
    p.add_argument("--batch", type=int, default=100, help="messages per publisher write (default 100)")
    p.add_argument("--rate", type=float, default=10_000.0,
                   help="latency workload: total publish rate in msg/s (default 10000)")
    p.add_argument("--latency-ack", choices=("manual", "auto"), default="manual",
                   help="latency workload consumer: manual ack with prefetch (default) or autoack")
    p.add_argument("--layout", choices=("split", "single"), default="split",
                   help="split (default): one process per producer/consumer; single: all clients "
                        "in one process")
    p.add_argument("--json", metavar="PATH", help="also write every run's full result as JSON")
    p.add_argument("--selftest", action="store_true",
                   help="measure the generator itself (no broker: a null server that streams "
                        "deliveries and discards publishes) and exit; uses --duration up to 5 s")
    args = p.parse_args(argv)
    if not args.selftest and not args.url and not args.reference:
        p.error("give at least one --url (or --reference)")
    if args.ack_every and args.ack_every > args.prefetch:
        p.error("--ack-every larger than --prefetch would stall the consumer")
    if args.max_inflight < 0:
        p.error("--max-inflight must be 0 (no cap) or positive")
    if 0 < args.max_inflight < args.batch:
        p.error("--max-inflight must be 0 (no cap) or at least --batch")
    if args.queues < 1 or args.consumers < args.queues:
        p.error("--queues N needs N >= 1 and at least N --consumers (a queue nobody consumes grows without bound)")
    return args


def _targets(args: argparse.Namespace) -> list[Target]:
    targets = []
    for i, url in enumerate(args.url):
        loadgen.parse_url(url)  # fail early on a bad URL
        if i < len(args.label):
            label = args.label[i]
        elif len(args.url) == 1:
            label = "amqpbroker"
        else:
            parsed = loadgen.parse_url(url)
            label = f"{parsed.host}:{parsed.port}"
        pid = _pid_arg(args.broker_pid[i] if i < len(args.broker_pid) else None, url)
        targets.append(Target(url, label, pid))
    if args.reference:
        targets.append(Target(args.reference_url, "RabbitMQ", _pid_arg(args.reference_pid, args.reference_url),
                              reference=True))
    seen: dict[str, int] = {}
    for t in targets:  # labels name the table columns and key the results: keep them unique
        seen[t.label] = seen.get(t.label, 0) + 1
        if seen[t.label] > 1:
            t.label = f"{t.label}#{seen[t.label]}"
    return targets


# ---------------------------------------------------------------------------------------- output

def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.3f}"
    return f"{value:.1f}"


def _rows(workload: str) -> list[tuple[str, str, callable]]:
    cpu = ("broker CPU µs/msg", "us", lambda r: r.get("broker_cpu_us_per_msg"))
    if workload == "latency":
        return [
            ("rate msg/s", "rate", lambda r: r["consumed_rate"]),
            ("p50 ms", "ms", lambda r: r["latency"]["p50_ms"]),
            ("p99 ms", "ms", lambda r: r["latency"]["p99_ms"]),
            ("max ms", "ms", lambda r: r["latency"]["max_ms"]),
            cpu,
        ]
    return [("msg/s", "rate", lambda r: r["consumed_rate"]), cpu]


def _median_run(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0] if runs else None
    key = (lambda r: r["latency"]["p99_ms"]) if ok[0]["workload"] == "latency" else (lambda r: r["consumed_rate"])
    ordered = sorted(ok, key=key)
    return ordered[(len(ordered) - 1) // 2]


def render_table(workloads: list[str], targets: list[Target], results: dict) -> str:
    ref = next((t for t in targets if t.reference), None)
    others = [t for t in targets if not t.reference]
    headers = ["workload"] + [t.label for t in targets]
    if ref is not None:
        headers += ["ratio" if len(others) == 1 else f"ratio {t.label}" for t in others]
    lines: list[list[str]] = []
    for wl in workloads:
        picked = {t.label: _median_run(results.get((wl, t.label), [])) for t in targets}
        for name, kind, get in _rows(wl):
            row = [f"{wl} {name}"]
            values = {}
            for t in targets:
                run = picked[t.label]
                if run is None:
                    row.append("-")
                elif "error" in run:
                    row.append("error")
                else:
                    try:
                        values[t.label] = get(run)
                    except (KeyError, TypeError):
                        values[t.label] = None
                    row.append(_fmt(values[t.label], kind))
            if ref is not None:
                for t in others:
                    a, b = values.get(t.label), values.get(ref.label)
                    row.append(f"{a / b:.2f}" if a is not None and b and not math.isnan(a) else "-")
            lines.append(row)
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(headers)]
    out = [" | ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    out.append("-+-".join("-" * w for w in widths))
    for r in lines:
        out.append(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if ref is not None and others:
        out.append("ratio = broker / RabbitMQ: above 1 is better for msg/s, below 1 is better for ms and µs/msg")
    return "\n".join(out)


def _summary(run: dict) -> str:
    if "error" in run:
        return f"ERROR {run['error']}"
    parts = [f"{run['consumed_rate']:,.0f} msg/s consumed", f"{run['published_rate']:,.0f} published"]
    if run.get("latency"):
        lat = run["latency"]
        parts.append(f"p50 {lat['p50_ms']:.3f} ms p99 {lat['p99_ms']:.3f} ms max {lat['max_ms']:.3f} ms "
                     f"({lat['samples']} samples)")
    if run.get("broker_cpu_util") is not None:
        parts.append(f"broker CPU {run['broker_cpu_util'] * 100:.0f}% "
                     f"({_fmt(run['broker_cpu_us_per_msg'], 'us')} µs/msg)")
    clients = ", ".join(f"{name} {c['cpu_util'] * 100:.0f}%" for name, c in run["clients"].items()
                        if c.get("cpu_util") is not None)
    if clients:
        parts.append(f"generator CPU: {clients}")
    if run.get("system_cores"):
        sc = run["system_cores"]
        parts.append(f"machine: {sc['busy']:.2f} cores busy, {sc['idle']:.2f} idle, {sc['steal']:.2f} stolen")
    if run.get("warnings"):
        parts.append(f"WARNINGS: {'; '.join(run['warnings'])}")
    return "; ".join(parts)


def _answers(url: str) -> bool:
    """Does something accept connections at ``url``'s address?"""
    parsed = loadgen.parse_url(url)
    try:
        socket.create_connection((parsed.host, parsed.port), timeout=3).close()
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.selftest:
        from . import selftest
        for line in selftest.run(min(args.duration, 5.0), args.size, args.layout):
            print(line, flush=True)
        return 0

    workloads = _workloads(args.workload)
    if args.reference and not _answers(args.reference_url):
        print(f"no broker answers at {args.reference_url} (the reference RabbitMQ): start one with "
              f"`interop/reference.sh start`, or give its URL with --reference-url", file=sys.stderr)
        return 2
    targets = _targets(args)
    opts = RunOptions(duration=args.duration, warmup=args.warmup, body_size=args.size,
                      producers=args.producers, consumers=args.consumers, queues=args.queues,
                      prefetch=args.prefetch,
                      ack_every=args.ack_every, max_inflight=args.max_inflight, batch=args.batch,
                      rate=args.rate, latency_ack=args.latency_ack, layout=args.layout)
    for t in targets:
        who = f"pid {t.pid} ({process_name(t.pid)})" if t.pid else "CPU not measured (no pid)"
        print(f"# {t.label}: {loadgen.parse_url(t.url).display} — {who}", file=sys.stderr)
    inflight = f"max in flight {args.max_inflight}" if args.max_inflight else "no in-flight cap"
    print(f"# {args.producers} producer(s), {args.consumers} consumer(s), {args.queues} queue(s), "
          f"{args.size} B bodies, warm-up {args.warmup} s, measure {args.duration} s, {inflight}, "
          f"layout {args.layout}", file=sys.stderr)

    results: dict[tuple[str, str], list[dict]] = {}
    failed = False
    for wl in workloads:
        for rep in range(args.repeat):
            for t in targets:
                try:
                    run = run_workload(t.url, wl, opts, broker_pid=t.pid, label=t.label)
                except BenchError as exc:
                    run = {"workload": wl, "label": t.label, "error": str(exc)}
                except Exception as exc:  # noqa: BLE001 - report it in the table, keep benchmarking
                    run = {"workload": wl, "label": t.label, "error": f"{type(exc).__name__}: {exc}"}
                if "error" in run or run["consumed_rate"] <= 0:
                    failed = True
                results.setdefault((wl, t.label), []).append(run)
                tag = f" run {rep + 1}/{args.repeat}" if args.repeat > 1 else ""
                print(f"{wl:<18} {t.label}{tag}: {_summary(run)}", file=sys.stderr, flush=True)

    print()
    print(render_table(workloads, targets, results))
    if args.json:
        flat = [run for runs in results.values() for run in runs]
        with open(args.json, "w") as f:
            json.dump({"targets": [t.__dict__ for t in targets], "runs": flat}, f, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
