"""Smoke test for the benchmark: ~1 s per workload against the interop broker (not a slow test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
        assert run["consumed_rate"] > 0, f"{workload}\n{detail}"
        assert run["published_rate"] > 0, f"{workload}\n{detail}"
    assert runs["latency"]["latency"]["samples"] > 0, detail
    assert runs["latency"]["latency"]["p50_ms"] > 0, detail
    for workload in runs:
        assert workload in proc.stdout, detail  # the summary table names every workload
