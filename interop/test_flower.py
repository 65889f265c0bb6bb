"""Flower (Celery's monitor), unchanged, reads queue lengths through the broker's management API:
``celery --broker=AMQP_URL flower --broker_api=http://guest:guest@HOST:PORT/api/``. Its request
for the default vhost's queues is ``GET /api/queues//``; it must be answered as RabbitMQ answers it
(no redirect, which would drop the credentials given in the URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import pika
import pytest

from amqpbroker.testing import free_port

pytestmark = pytest.mark.timeout(60)


def _lengths(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/queues/length", timeout=5) as response:
            return json.load(response)
    except OSError:
        return None  # not listening yet


def test_flower_shows_the_queue_lengths(amqp_url, management_url, cleanup, unique) -> None:
    queue = cleanup.queue(unique)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for _ in range(3):
            channel.basic_publish("", queue, b"task")
    api = urlsplit(management_url)
    port = free_port()
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "interop.celery_app", f"--broker={amqp_url}", "flower",
         f"--broker_api=http://{api.username}:{api.password}@{api.hostname}:{api.port}/api/",
         "--address=127.0.0.1", f"--port={port}"],
        env={**os.environ, "CELERY_INTEROP_NAME": unique, "FLOWER_UNAUTHENTICATED_API": "true"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 30  # (RabbitMQ's queue figures lag by up to 5 s)
        lengths = None
        while time.monotonic() < deadline:
            lengths = _lengths(port)
            if lengths and [entry.get("messages") for entry in lengths.get("active_queues", [])] == [3]:
                break
            time.sleep(0.5)
        assert lengths is not None, "Flower did not answer"
        assert [(entry["name"], entry.get("messages")) for entry in lengths["active_queues"]] == [(queue, 3)], lengths
    finally:
        flower.terminate()
        try:
            output, _ = flower.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            flower.kill()
            output, _ = flower.communicate()
    assert "Unable to get queues" not in output, output
