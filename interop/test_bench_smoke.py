"""Smoke tests for the benchmark against the interop broker (not slow tests; about 50 s in all):
the default workloads for ~1 s each, the 4-queue and fan-out workloads, and the whole suite in
``--quick`` mode against one broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from interop.bench.runner import RunOptions, run_workload

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_reports_positive_rate_for_every_workload(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "interop.bench", "--url", amqp_url, "--duration", "1", "--warmup", "0.5",
           "--rate", "2000", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=45)
    detail = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, detail

    runs = {run["workload"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"throughput-autoack", "throughput-ack", "latency"}, detail
    for workload, run in runs.items():
        assert "error" not in run, f"{workload}: {run.get('error')}\n{detail}"
        assert run["options"]["max_inflight"] == 0, "the default publisher has no in-flight cap"
        assert run["consumed_rate"] > 0, f"{workload}\n{detail}"
        assert run["published_rate"] > 0, f"{workload}\n{detail}"
    assert runs["latency"]["latency"]["samples"] > 0, detail
    assert runs["latency"]["latency"]["p50_ms"] > 0, detail
    for workload in runs:
        assert workload in proc.stdout, detail  # the summary table names every workload


def _consumer_counts(run: dict) -> list[int]:
    return [client["count"] for name, client in sorted(run["clients"].items()) if name.startswith("consumer")]


def test_four_queues_and_fan_out_feed_every_consumer(amqp_url: str) -> None:
    four = run_workload(amqp_url, "throughput-ack",
                        RunOptions(duration=1.0, warmup=0.3, producers=4, consumers=4, queues=4))
    assert four["queues"] == 4 and four["consumed_rate"] > 0, four
    assert len(_consumer_counts(four)) == 4 and all(_consumer_counts(four)), four["clients"]

    fanout = run_workload(amqp_url, "throughput-fanout", RunOptions(duration=1.0, warmup=0.3, consumers=4, queues=4))
    assert fanout["consumed_rate"] > 0 and fanout["published_rate"] > 0, fanout
    assert len(_consumer_counts(fanout)) == 4 and all(_consumer_counts(fanout)), fanout["clients"]


def test_quick_suite_writes_table_json_markdown_and_plots(amqp_url: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "interop.bench.suite", "--url", amqp_url, "--quick", "--no-reference",
           "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=110)
    detail = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, detail

    results = json.loads((tmp_path / "results.json").read_text())
    label = results["targets"][0]["label"]
    for case in results["cases"]:
        for figure in case["figures"]:
            value = results["medians"][case["id"]][figure["key"]][label]
            assert value is not None, f"{case['name']}: {figure['unit']} not measured\n{detail}"
            if (case["id"], figure["key"]) != ("idle-connections", "rss"):
                # (RSS growth per connection is 0 when the broker reuses memory it already holds,
                # e.g. after the earlier tests' runs; only that it was measured is checked)
                assert value > 0, f"{case['name']}: {figure['unit']} = {value}\n{detail}"
            assert case["name"] in proc.stdout, detail
    markdown = (tmp_path / "results.md").read_text()
    for name in ("throughput_vs_size.png", "latency.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC), name
        assert f"]({name})" in markdown


def test_the_in_process_micro_benchmark_runs() -> None:
    from interop.bench.micro import run

    assert 0 < run(20) < 0.01  # seconds per message: publish, deliver and ack, in process
    assert 0 < run(20, distinct=True) < 0.01  # (a content header of its own per publish)


def test_bench_says_how_to_get_a_reference_broker_when_none_answers(amqp_url: str) -> None:
    from amqpbroker.testing import free_port

    cmd = [sys.executable, "-m", "interop.bench", "--url", amqp_url, "--reference",
           "--reference-url", f"amqp://guest:guest@127.0.0.1:{free_port()}/", "--duration", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=45)
    assert proc.returncode == 2 and "interop/reference.sh start" in proc.stderr, proc.stderr


def test_the_stream_bench_writes_and_reads_back_a_small_stream(amqp_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "interop.bench.streams", "--url", amqp_url,
                             "--messages", "3000", "--consumers", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert float(rows["write msg/s"].replace(",", "")) > 0
    assert float(rows["read msg/s, all consumers"].replace(",", "")) > 0
    assert rows["nacked"] == "0.0"
