"""Testing a Celery app against the ``amqp_broker`` fixture with a real worker process.

Celery's in-thread test worker (``celery.contrib.testing``) hangs on exit with any broker, so the
worker runs as ``celery worker`` in a subprocess, pointed at the session's broker; run with
``pytest examples/celery_testing``.
"""

import os
import subprocess
import sys

import pytest

from tasks import add, app

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def celery_worker_process(amqp_broker):
    app.conf.broker_url = amqp_broker  # the client side of the tests
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo", "--concurrency=1",
         "--without-mingle", "--without-gossip", "--loglevel=warning"],
        cwd=HERE, env={**os.environ, "CELERY_BROKER_URL": amqp_broker})
    yield worker
    worker.terminate()
    worker.wait(30)


def test_add_runs_on_a_worker(celery_worker_process):
    assert add.delay(2, 3).get(timeout=30) == 5
