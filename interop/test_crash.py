"""Crash safety (``interop/crash.py``): mixed load, SIGKILL, restart on the same data dir, nothing
confirmed lost or duplicated, definitions whole, clean starts. Runs its own broker subprocesses
(never ``AMQP_URL``: it must kill them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interop.crash import run_seed


def test_crash_one_short_seed(tmp_path: Path) -> None:
    result = run_seed(1, kills=2, load_seconds=(0.5, 1.0), workdir=str(tmp_path))
    assert result.ok, result.describe()
    assert result.confirmed > 0 and result.expected > 0, result.describe()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_twenty_seeds(tmp_path: Path) -> None:
    results = [run_seed(seed, kills=2, workdir=str(tmp_path)) for seed in range(20)]
    failed = [result for result in results if not result.ok]
    assert not failed, "\n".join(result.describe() for result in failed)
