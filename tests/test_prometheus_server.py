"""A real Prometheus server (Debian's ``prometheus``) scrapes a running broker, and its query API
returns the queue depth a test produced. ``.ci/run`` installs Prometheus; without it this test
is skipped, saying so."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from amqpbroker.testing import free_port
from tests.broker_process import PERSISTENT, channel_of

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package "
                                                          "'prometheus'; .ci/run installs it)")


def query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


@contextlib.contextmanager
def prometheus_scraping(tmp_path, target_port: int, metrics_path: str, job: str) -> Iterator[int]:
    """A Prometheus server scraping ``127.0.0.1:target_port`` every second; yields its port."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: {job}
    metrics_path: {metrics_path}
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
""")
    server = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(10)


def test_prometheus_scrapes_the_queue_depth(tmp_path, start_broker) -> None:
    broker = start_broker(prometheus_port=free_port())
    with prometheus_scraping(tmp_path, broker.prometheus_port, "/metrics/per-object", "amqpbroker") as prometheus_port:
        with channel_of(broker) as ch:
            ch.queue_declare("scraped", durable=True)
            ch.confirm_delivery()
            for _ in range(7):
                ch.basic_publish("", "scraped", b"m", PERSISTENT)
        expression = 'rabbitmq_queue_messages_ready{queue="scraped",vhost="/"}'
        deadline = time.monotonic() + 45  # the first sample takes a few seconds to appear
        result: list[dict] = []
        while time.monotonic() < deadline:
            try:
                result = query(prometheus_port, expression)
            except OSError:
                result = []  # not listening yet
            if result:
                break
            time.sleep(0.5)
        assert result, "Prometheus never had the sample"
        assert float(result[0]["value"][1]) == 7
