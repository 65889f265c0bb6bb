"""``python -m interop.bench.suite``: the whole amqpbroker vs RabbitMQ comparison in one command.

Each case runs against the broker of ``--url`` and (unless ``--no-reference``) the reference
RabbitMQ, interleaved (broker A run 1, broker B run 1, A run 2, ...), ``--repeat`` times
(default 3); each figure in the table is the median of its runs. Bodies are 1 KB unless a case
says otherwise; publishers have no in-flight cap unless a case says otherwise.

* 1P/1C/1Q manual ack (prefetch 100) at 16 B, 64 B, 256 B, 1 KB, 4 KB, 16 KB and 64 KB; 1 KB autoack;
  4P/4C/4Q (producer i to queue i % 4, consumer j from queue j % 4); fan-out (1 publisher into a
  fanout exchange bound to 4 queues, one manual-ack consumer per queue, delivered msg/s summed):
  :func:`runner.run_workload`, delivered msg/s;
* persistent messages with publisher confirms, window 100, 1 and 4 publishers:
  :func:`durable.run_confirms`, confirmed msg/s;
* latency p50 / p99 / max at 1,000 and 10,000 msg/s (manual ack, prefetch 100): the runner's
  latency workload;
* idle connections (1,000): connections opened per second (10 handshakes at a time, each with a
  channel) and the broker's resident memory growth per connection (``VmRSS`` of its pid);
* a 1M-message backlog: :func:`durable.run_backlog`'s publish rate, drain rate and peak RSS;
* publish while draining: a 1M backlog, then one consumer (manual ack, prefetch 100) while the
  publisher keeps going: the consumer's and the publisher's msg/s, and for comparison the
  consumer's msg/s on a queue kept short (publisher capped at 2,000 unconsumed messages).

Outputs: the table on stdout (progress on stderr), and in ``--out-dir`` (default ``docs/bench``)
``results.json`` (settings, brokers, every run with its full detail, the medians), ``results.md``
(the table in markdown, linking the plots), ``throughput_vs_size.png`` and ``latency.png``.
``--quick`` shrinks every case (0.5 s runs, a 100k backlog, 200 connections, 1 repeat) for a
smoke test; its figures are not comparable with a full run's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import durable, loadgen
from .procstat import listener_pid, process_name, rss_kb
from .runner import BenchError, RunOptions, run_workload

REFERENCE_URL = "amqp://guest:guest@127.0.0.1:5682/"
SIZES = (16, 64, 256, 1024, 4096, 16384, 65536)
LATENCY_RATES = (1_000, 10_000)
SHORT_QUEUE_INFLIGHT = 2_000
CONNECT_CONCURRENCY = 10
IDLE_BUFFER_BYTES = 16_384


# ------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class Settings:
    duration: float = 10.0      # measured seconds of a runner or confirms run
    warmup: float = 2.0         # unmeasured seconds before that
    backlog: int = 1_000_000    # messages in the backlog cases
    connections: int = 1_000    # idle connections
    repeat: int = 3


QUICK = Settings(duration=0.5, warmup=0.25, backlog=100_000, connections=200, repeat=1)


@dataclass
class Target:
    label: str
    url: str
    pid: int | None
    server: str


# ------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Figure:
    key: str                # key in a run's figures
    unit: str               # shown in the table after the case name
    better: str             # "higher" or "lower"
    kind: str = "rate"      # how to format it: rate, ms or size


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    figures: tuple[Figure, ...]
    measure: Callable[[Target, Settings], tuple[dict, dict]]  # -> (figures, detail)
    size: int | None = None  # body size, for the throughput-vs-size plot


def _size_label(size: int) -> str:
    return f"{size // 1024} KB" if size >= 1024 else f"{size} B"


def _count_label(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count >= 1_000 and count % 1_000 == 0:
        return f"{count // 1_000}k"
    return f"{count:,}"


def _run_options(settings: Settings, **overrides) -> RunOptions:
    return RunOptions(duration=settings.duration, warmup=settings.warmup, **overrides)


def _runner(target: Target, workload: str, opts: RunOptions) -> dict:
    run = run_workload(target.url, workload, opts, broker_pid=target.pid, label=target.label)
    if run["consumed_rate"] <= 0:
        raise BenchError("nothing consumed")
    return run


def measure_throughput(target: Target, settings: Settings, workload: str = "throughput-ack",
                       **options) -> tuple[dict, dict]:
    """One runner run (publisher without an in-flight cap unless ``options`` say otherwise)."""
    run = _runner(target, workload, _run_options(settings, **options))
    return {"msg/s": run["consumed_rate"]}, run


def measure_latency(target: Target, settings: Settings, rate: float) -> tuple[dict, dict]:
    """The runner's latency workload at ``rate`` msg/s: manual ack, prefetch 100."""
    run = _runner(target, "latency", _run_options(settings, rate=rate))
    latency = run["latency"]
    return {"p50": latency["p50_ms"], "p99": latency["p99_ms"], "max": latency["max_ms"]}, run


def measure_confirms(target: Target, settings: Settings, publishers: int) -> tuple[dict, dict]:
    """durable.py's confirms workload: persistent 1 KB, window 100, one autoack consumer."""
    args = argparse.Namespace(size=1024, window=100, publishers=publishers, warmup=settings.warmup,
                              duration=settings.duration, rate=0.0, no_consumer=False)
    result = loadgen._run(durable.run_confirms(target.url, args))
    if result["errors"]:
        raise BenchError("; ".join(result["errors"]))
    return {"msg/s": result["confirmed/s"]}, result


def measure_backlog(target: Target, settings: Settings) -> tuple[dict, dict]:
    """durable.py's backlog workload: publish a transient 1 KB backlog, then drain it."""
    args = argparse.Namespace(backlog=settings.backlog, size=1024, persistent=False)
    result = loadgen._run(durable.run_backlog(target.url, args, target.pid))
    if result["errors"]:
        raise BenchError("; ".join(result["errors"]))
    figures = {"publish": result["publish msg/s"], "drain": result["drain msg/s"],
               "rss": result["peak RSS MB"] if target.pid else None}
    return figures, result


def measure_publish_while_draining(target: Target, settings: Settings) -> tuple[dict, dict]:
    """A backlog of ``settings.backlog`` messages, then one consumer (manual ack, prefetch 100)
    while the publisher keeps going without a cap; then, for comparison, the same clients on a
    queue kept short by capping the publisher at SHORT_QUEUE_INFLIGHT unconsumed messages."""
    # (at least 1 s warm-up and 1.5 s measured: in --quick's 0.25 + 0.5 s a publisher held back by
    # flow control at the start of the drain sometimes published nothing inside the window)
    deep = _runner(target, "throughput-ack", RunOptions(duration=max(settings.duration, 1.5),
                                                         warmup=max(settings.warmup, 1.0), prefill=settings.backlog))
    short = _runner(target, "throughput-ack", _run_options(settings, max_inflight=SHORT_QUEUE_INFLIGHT))
    figures = {"consumer": deep["consumed_rate"], "publisher": deep["published_rate"],
               "short": short["consumed_rate"]}
    return figures, {"deep": deep, "short": short}


async def _open_connections(url: str, count: int, concurrency: int, opened: list) -> None:
    """Append ``count`` connections to ``opened``, each with channel 1 open, ``concurrency``
    handshakes at a time; raise the first failure (what opened so far stays in ``opened``)."""
    parsed = loadgen.parse_url(url)
    factory = functools.partial(loadgen.BenchProtocol, buffer_size=IDLE_BUFFER_BYTES)
    for start in range(0, count, concurrency):
        batch = min(concurrency, count - start)
        results = await asyncio.gather(*(loadgen.connect(parsed, protocol_factory=factory) for _ in range(batch)),
                                       return_exceptions=True)
        opened += [result for result in results if not isinstance(result, BaseException)]
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise BenchError(f"connection {len(opened) + 1} of {count} failed: "
                             f"{type(failures[0]).__name__}: {failures[0]}")


async def _close_connections(protos: list[loadgen.BenchProtocol], concurrency: int) -> None:
    for start in range(0, len(protos), concurrency * 10):
        await asyncio.gather(*(proto.close() for proto in protos[start:start + concurrency * 10]))


async def _idle_connections(target: Target, count: int) -> tuple[dict, dict]:
    await asyncio.sleep(0.2)  # let the broker settle after the previous run
    rss_before = rss_kb(target.pid)
    protos: list[loadgen.BenchProtocol] = []
    try:
        started = time.perf_counter()
        await _open_connections(target.url, count, CONNECT_CONCURRENCY, protos)
        seconds = time.perf_counter() - started
        await asyncio.sleep(0.5)  # held idle before reading the broker's memory
        rss_after = rss_kb(target.pid)
        errors = [proto.error for proto in protos if proto.error]
    finally:
        await _close_connections(protos, CONNECT_CONCURRENCY)
    if errors:
        raise BenchError(f"{len(errors)} idle connections failed: {errors[0]}")
    per_connection = None
    if rss_before is not None and rss_after is not None:
        per_connection = (rss_after - rss_before) / count
    detail = {"connections": count, "connect_s": seconds, "concurrency": CONNECT_CONCURRENCY,
              "rss_before_kb": rss_before, "rss_after_kb": rss_after}
    return {"rate": count / seconds, "rss": per_connection}, detail


def measure_idle_connections(target: Target, settings: Settings) -> tuple[dict, dict]:
    """Open ``settings.connections`` AMQP connections (one channel each) and hold them 0.5 s:
    connections opened per second, and the broker's resident memory growth per connection."""
    _raise_fd_limit(settings.connections + 256)
    return loadgen._run(_idle_connections(target, settings.connections))


def _raise_fd_limit(needed: int) -> None:
    """Raise this process's open-file soft limit to ``needed`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard),
                                                    hard))


MSG_S = (Figure("msg/s", "msg/s", "higher"),)


def _sweep_case(size: int) -> Case:
    return Case(f"ack-{size}", f"1P/1C/1Q {_size_label(size)}, manual ack, prefetch 100", MSG_S,
                functools.partial(measure_throughput, body_size=size), size=size)


def _latency_case(rate: int) -> Case:
    figures = tuple(Figure(key, f"{key} ms", "lower", "ms") for key in ("p50", "p99", "max"))
    return Case(f"latency-{rate // 1000}k", f"latency at {rate:,} msg/s, manual ack, prefetch 100", figures,
                functools.partial(measure_latency, rate=rate))


def build_cases(settings: Settings) -> list[Case]:
    """Every case, in table order (the order and names stay the same for the same settings)."""
    backlog = _count_label(settings.backlog)
    cases = [
        _sweep_case(1024),
        Case("autoack-1024", "1P/1C/1Q 1 KB, autoack", MSG_S,
             functools.partial(measure_throughput, workload="throughput-autoack")),
        _sweep_case(16),
        Case("4q", "4P/4C/4Q 1 KB, manual ack, prefetch 100", MSG_S,
             functools.partial(measure_throughput, producers=4, consumers=4, queues=4)),
        Case("fanout", "fan-out 1P -> 4Q/4C 1 KB, manual ack, prefetch 100",
             (Figure("msg/s", "delivered msg/s (4 consumers)", "higher"),),
             functools.partial(measure_throughput, workload="throughput-fanout", consumers=4, queues=4)),
        Case("confirms-1", "persistent 1 KB + confirms, window 100, 1 publisher",
             (Figure("msg/s", "confirmed msg/s", "higher"),), functools.partial(measure_confirms, publishers=1)),
        Case("confirms-4", "persistent 1 KB + confirms, window 100, 4 publishers",
             (Figure("msg/s", "confirmed msg/s", "higher"),), functools.partial(measure_confirms, publishers=4)),
        *(_latency_case(rate) for rate in LATENCY_RATES),
        Case("idle-connections", f"{settings.connections:,} idle connections",
             (Figure("rate", "connections/s", "higher"), Figure("rss", "broker RSS KB per connection", "lower", "size")),
             measure_idle_connections),
        Case("backlog", f"{backlog}-message 1 KB backlog, no consumer, then drained",
             (Figure("publish", "publish msg/s", "higher"), Figure("drain", "drain msg/s", "higher"),
              Figure("rss", "broker peak RSS MB", "lower", "size")),
             measure_backlog),
        Case("publish-while-draining", f"publish while draining a {backlog} backlog, 1 KB",
             (Figure("consumer", "consumer msg/s", "higher"),
              Figure("publisher", "publisher msg/s (during the drain)", "higher"),
              Figure("short", f"consumer msg/s on a short queue (<= {SHORT_QUEUE_INFLIGHT:,} in flight)", "higher")),
             measure_publish_while_draining),
    ]
    cases += [_sweep_case(size) for size in SIZES if size not in (16, 1024)]
    return cases


# --------------------------------------------------------------------------------------- runs

@dataclass
class Run:
    case: str
    label: str
    repeat: int
    seconds: float
    figures: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    error: str | None = None


def run_case(case: Case, target: Target, settings: Settings, repeat: int) -> Run:
    started = time.perf_counter()
    try:
        figures, detail = case.measure(target, settings)
        error = None
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, the suite goes on
        figures, detail, error = {}, {}, f"{type(exc).__name__}: {exc}"
    return Run(case.id, target.label, repeat, time.perf_counter() - started, figures, detail, error)


def execution_order(cases: list[Case]) -> list[Case]:
    """The idle-connections case first: RSS growth only shows memory the broker did not already
    hold, and the other cases (the backlog most) leave freed memory behind for it to reuse."""
    return sorted(cases, key=lambda case: case.id != "idle-connections")


def run_all(cases: list[Case], targets: list[Target], settings: Settings) -> list[Run]:
    """Every case, ``settings.repeat`` times, the targets interleaved within each repetition."""
    runs = []
    for case in execution_order(cases):
        for repeat in range(1, settings.repeat + 1):
            for target in targets:
                run = run_case(case, target, settings, repeat)
                runs.append(run)
                print(_progress_line(case, target, run, settings.repeat), file=sys.stderr, flush=True)
    return runs


def _progress_line(case: Case, target: Target, run: Run, repeats: int) -> str:
    head = f"{case.name} | {target.label} run {run.repeat}/{repeats} ({run.seconds:.1f} s): "
    if run.error:
        return head + f"ERROR {run.error}"
    return head + ", ".join(f"{figure.unit} {_fmt(run.figures.get(figure.key), figure.kind)}"
                            for figure in case.figures)


def _usable(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def medians(cases: list[Case], targets: list[Target], runs: list[Run]) -> dict:
    """{case id: {figure key: {label: median over the successful runs, or None}}}."""
    out: dict = {}
    for case in cases:
        for figure in case.figures:
            for target in targets:
                values = [run.figures.get(figure.key) for run in runs
                          if run.case == case.id and run.label == target.label and not run.error]
                values = [value for value in values if _usable(value)]
                out.setdefault(case.id, {}).setdefault(figure.key, {})[target.label] = (
                    statistics.median(values) if values else None)
    return out


# -------------------------------------------------------------------------------------- output

def _fmt(value, kind: str) -> str:
    if not _usable(value):
        return "-"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ms":
        return f"{value:.3f}"
    return f"{value:,.1f}"


def table_rows(cases: list[Case], targets: list[Target], median: dict) -> list[list[str]]:
    """Header and rows: workload, one column per target, then ratio and which way is better."""
    with_ratio = len(targets) == 2
    header = ["workload"] + [t.label for t in targets] + (["ratio", "better"] if with_ratio else ["better"])
    rows = [header]
    for case in cases:
        for figure in case.figures:
            values = median[case.id][figure.key]
            row = [f"{case.name}: {figure.unit}"] + [_fmt(values[t.label], figure.kind) for t in targets]
            if with_ratio:
                row.append(_ratio(values[targets[0].label], values[targets[1].label]))
            row.append(figure.better)
            rows.append(row)
    return rows


def _ratio(a, b) -> str:
    if not (_usable(a) and _usable(b)) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return " | ".join(cell.ljust(w) if i in (0, len(row) - 1) else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(rows[0]), "-+-".join("-" * w for w in widths)] + [line(row) for row in rows[1:]])


def render_markdown(rows: list[list[str]]) -> str:
    aligns = ["---"] + ["---:"] * (len(rows[0]) - 2) + ["---"]
    return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], aligns] + rows[1:])


def ratio_note(targets: list[Target]) -> str:
    first, second = targets[0].label, targets[1].label
    return (f"ratio = {first} / {second} (medians); \"better\" says which way is better: for a "
            f"higher-is-better figure (rates) a ratio above 1 favours {first}, for a lower-is-better one "
            f"(latency, memory) a ratio below 1 does.")


def markdown_report(rows: list[list[str]], targets: list[Target], settings: Settings, plots: list[str],
                    command: str) -> str:
    brokers = "; ".join(f"{t.server} at {loadgen.parse_url(t.url).display}" for t in targets)
    lines = [
        "# " + " vs ".join(t.label for t in targets),
        "",
        f"`{command}` on {datetime.date.today().isoformat()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}. Brokers: {brokers}.",
        f"Medians of {settings.repeat} run(s) per figure, brokers interleaved; runner cases measure "
        f"{settings.duration:g} s after a {settings.warmup:g} s warm-up, publishers have no in-flight cap "
        "unless a row says otherwise.",
        "",
        render_markdown(rows),
        "",
    ]
    if len(targets) == 2:
        lines += [ratio_note(targets), ""]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def write_json(path: Path, cases: list[Case], targets: list[Target], settings: Settings, runs: list[Run],
               median: dict, command: str) -> None:
    data = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": asdict(settings),
        "targets": [asdict(t) for t in targets],
        "cases": [{"id": c.id, "name": c.name, "size": c.size,
                   "figures": [asdict(f) for f in c.figures]} for c in cases],
        "runs": [asdict(run) for run in runs],
        "medians": median,
    }
    path.write_text(json.dumps(_json_safe(data), indent=2, default=str))


def _json_safe(value):
    """``value`` with NaN and infinite floats replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain_log_axis(axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten on a log axis, labelled as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_throughput_vs_size(path: Path, cases: list[Case], targets: list[Target], runs: list[Run],
                            median: dict) -> bool:
    """Delivered msg/s against body size, median with min-max bars; False when nothing to plot."""
    sized = sorted((c for c in cases if c.size is not None), key=lambda c: c.size)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = False
    for target in targets:
        points = [(c.size, median[c.id]["msg/s"][target.label], _spread(runs, c.id, target.label, "msg/s"))
                  for c in sized if median[c.id]["msg/s"][target.label] is not None]
        if not points:
            continue
        sizes, values, spreads = zip(*points)
        errors = [[v - lo for v, (lo, _) in zip(values, spreads)], [hi - v for v, (_, hi) in zip(values, spreads)]]
        ax.errorbar(sizes, values, yerr=errors, marker="o", capsize=3, label=target.server)
        plotted = True
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xticks([c.size for c in sized], [_size_label(c.size) for c in sized])
    ax.set_xlabel("message body size")
    ax.set_ylabel("delivered msg/s (median, bars: min-max)")
    ax.set_title("1P/1C/1Q, manual ack, prefetch 100, publisher without in-flight cap")
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return plotted


def _spread(runs: list[Run], case_id: str, label: str, key: str) -> tuple[float, float]:
    values = [run.figures[key] for run in runs if run.case == case_id and run.label == label
              and not run.error and _usable(run.figures.get(key))]
    return min(values), max(values)


def plot_latency(path: Path, cases: list[Case], targets: list[Target], median: dict) -> bool:
    """p50 / p99 / max bars per broker, one panel per fixed rate; False when nothing to plot."""
    latency_cases = [c for c in cases if c.id.startswith("latency-")]
    if not latency_cases:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(latency_cases), figsize=(5 * len(latency_cases), 4.5), squeeze=False)
    keys = ("p50", "p99", "max")
    width = 0.8 / len(targets)
    plotted = False
    for ax, case in zip(axes[0], latency_cases):
        for i, target in enumerate(targets):
            values = [median[case.id][key][target.label] for key in keys]
            if any(v is not None for v in values):
                plotted = True
            xs = [k + (i - (len(targets) - 1) / 2) * width for k in range(len(keys))]
            bars = ax.bar(xs, [v or 0 for v in values], width, label=target.label)
            ax.bar_label(bars, labels=[_fmt(v, "ms") for v in values], fontsize=7)
        ax.set_xticks(range(len(keys)), [f"{key} ms" for key in keys])
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_title(case.name.replace(", manual ack, prefetch 100", ""))
        ax.set_ylabel("publish -> deliver latency, ms (median of runs)")
        ax.legend()
    if plotted:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return plotted


def write_plots(out_dir: Path, cases: list[Case], targets: list[Target], runs: list[Run], median: dict) -> list[str]:
    written = []
    if plot_throughput_vs_size(out_dir / "throughput_vs_size.png", cases, targets, runs, median):
        written.append("throughput_vs_size.png")
    if plot_latency(out_dir / "latency.png", cases, targets, median):
        written.append("latency.png")
    return written


# -------------------------------------------------------------------------------------- command

def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    overrides = {name: getattr(args, name) for name in ("duration", "warmup", "backlog", "connections", "repeat")
                 if getattr(args, name) is not None}
    return replace(base, **overrides)


async def _server_properties(url: str) -> dict:
    proto = await loadgen.connect(loadgen.parse_url(url), timeout=10)
    try:
        return proto.server_properties
    finally:
        await proto.close()


def make_target(url: str, role: str) -> Target:
    """The broker behind ``url``, labelled by the product it announces (``role`` if it names
    none), with its version and its pid (the local listener, for the memory figures)."""
    parsed = loadgen.parse_url(url)
    try:
        props = loadgen._run(_server_properties(url))
    except Exception as exc:  # noqa: BLE001 - refused, bad credentials, timeout...
        raise SystemExit(f"cannot connect to the {role} broker at {parsed.display}: "
                         f"{type(exc).__name__}: {exc}") from exc
    label = str(props.get("product") or role)
    server = f"{label} {props.get('version', '')}".strip()
    return Target(label, url, listener_pid(parsed.host, parsed.port), server)


def make_targets(args: argparse.Namespace) -> list[Target]:
    targets = [make_target(args.url, "amqpbroker")]
    if not args.no_reference:
        reference = make_target(args.reference_url, "RabbitMQ")
        if reference.label == targets[0].label:
            reference.label += " (reference)"
        targets.append(reference)
    return targets


def select_cases(cases: list[Case], only: str | None) -> list[Case]:
    if not only:
        return cases
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {c.id for c in cases}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(c.id for c in cases)}")
    return [c for c in cases if c.id in wanted]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m interop.bench.suite", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="amqpbroker's AMQP URL")
    p.add_argument("--reference-url", default=REFERENCE_URL, help="the reference RabbitMQ (default: %(default)s)")
    p.add_argument("--no-reference", action="store_true", help="run against --url only (no ratios)")
    p.add_argument("--repeat", type=int, help="runs per case and broker, interleaved (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke-test sizes: {QUICK.duration:g} s runs after {QUICK.warmup:g} s warm-up, "
                        f"{QUICK.backlog:,} backlog, {QUICK.connections} connections, {QUICK.repeat} repeat")
    p.add_argument("--out-dir", default="docs/bench", help="where results.json/.md and the PNGs go (default: %(default)s)")
    p.add_argument("--only", help="comma-separated case ids to run (default: all): "
                                  + ", ".join(case.id for case in build_cases(Settings())))
    p.add_argument("--duration", type=float, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (default 2)")
    p.add_argument("--backlog", type=int, help="messages in the backlog cases (default 1,000,000)")
    p.add_argument("--connections", type=int, help="idle connections (default 1,000)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be at least 1")
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        p.error("the plots need matplotlib: pip install -e '.[bench]' (or pass --no-plots)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m interop.bench.suite " + " ".join(sys.argv[1:] if argv is None else argv)
    settings = settings_from(args)
    cases = select_cases(build_cases(settings), args.only)
    targets = make_targets(args)
    for t in targets:
        who = f"pid {t.pid} ({process_name(t.pid)})" if t.pid else "no local pid: memory figures not measured"
        print(f"# {t.label}: {t.server} at {loadgen.parse_url(t.url).display} — {who}", file=sys.stderr)
    print(f"# {len(cases)} cases x {settings.repeat} repeat(s) x {len(targets)} broker(s); {settings}",
          file=sys.stderr, flush=True)

    runs = run_all(cases, targets, settings)
    median = medians(cases, targets, runs)
    rows = table_rows(cases, targets, median)
    print()
    print(render_text(rows))
    if len(targets) == 2:
        print(ratio_note(targets))
    sys.stdout.flush()

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else write_plots(out_dir, cases, targets, runs, median)
    write_json(out_dir / "results.json", cases, targets, settings, runs, median, command)
    (out_dir / "results.md").write_text(markdown_report(rows, targets, settings, plots, command))
    print(f"\nwrote {out_dir}/results.json, results.md" + "".join(f", {name}" for name in plots), file=sys.stderr)
    return 1 if any(run.error for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
