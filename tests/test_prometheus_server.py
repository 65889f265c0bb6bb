"""A real Prometheus server (Debian's ``prometheus``) scrapes a running broker, and its query API
returns the queue depth a test produced. ``.ci/run`` installs Prometheus; without it this test
is skipped, saying so."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from amqpbroker.testing import _free_port
from tests.broker_process import PERSISTENT, channel_of

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package "
                                                          "'prometheus'; .ci/run installs it)")


def query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def test_prometheus_scrapes_the_queue_depth(tmp_path, start_broker) -> None:
    broker = start_broker(prometheus_port=_free_port())
    prometheus_port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: amqpbroker
    metrics_path: /metrics/per-object
    static_configs:
      - targets: ["127.0.0.1:{broker.prometheus_port}"]
""")
    server = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
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
    finally:
        server.terminate()
        server.wait(10)
