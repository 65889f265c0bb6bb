"""The pytest plugin (amqpbroker.testing) as a project that installed amqpbroker uses it: run in a
pytest subprocess of its own, from a directory outside this repository's configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ENDPOINTS_TEST = '''
import json
import urllib.request

import pika
import pytest


@pytest.fixture(scope="session")
def amqp_broker_args():
    return ["--compatibility", "4.3"]


def test_every_endpoint_answers(amqp_broker, amqp_broker_endpoints):
    assert amqp_broker == amqp_broker_endpoints.amqp_url
    connection = pika.BlockingConnection(pika.URLParameters(amqp_broker))
    channel = connection.channel()
    channel.queue_declare("kept", durable=True)
    channel.basic_publish("", "kept", b"hello")
    assert channel.basic_get("kept", auto_ack=True)[2] == b"hello"
    connection.close()
    request = urllib.request.Request(amqp_broker_endpoints.management_url + "/api/overview",
                                     headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response)["product_name"] == "amqpbroker"
    with urllib.request.urlopen(amqp_broker_endpoints.metrics_url, timeout=5) as response:
        assert b"rabbitmq_identity_info" in response.read()


def test_the_overridden_args_reach_the_broker(amqp_broker):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_broker))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.channel().queue_declare("transient", durable=False)  # refused under 4.3's rules
    assert closed.value.reply_code == 541
'''


def _pytest(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           str(directory)], cwd=directory, capture_output=True, text=True, timeout=180)


def test_the_fixtures_give_every_endpoint_and_take_extra_flags(tmp_path: Path) -> None:
    (tmp_path / "test_endpoints.py").write_text(textwrap.dedent(ENDPOINTS_TEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_readme_s_celery_example_runs_a_real_worker(tmp_path: Path) -> None:
    example = tmp_path / "celery_testing"
    shutil.copytree(REPO / "examples" / "celery_testing", example)
    (example / "pytest.ini").write_text("[pytest]\n")
    result = _pytest(example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
