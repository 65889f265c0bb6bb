"""A minimal Celery app for the interop tests (``celery -A interop.celery_app worker``).

Environment:

``AMQP_URL``
    the broker, default ``amqp://guest:guest@localhost:5672/``
``CELERY_INTEROP_BACKEND``
    the result backend, default ``rpc://`` (chords need another one: the tests use SQLite)
``CELERY_INTEROP_QUEUE_ARGUMENTS``
    JSON queue arguments for the task queue (declared by worker and client alike), e.g.
    deduplication on the task id
``CELERY_INTEROP_NAME``
    a name prefix so that runs sharing a broker do not collide; default
    ``celery-interop``.  The task queue is named after it (and, as Celery does
    by default, so is the direct exchange it is bound to), and so are the
    remote-control ("<name>.pidbox", "reply.<name>.pidbox") and event
    ("<name>.ev") exchanges, which otherwise are the broker-wide
    ``celery.pidbox`` / ``reply.celery.pidbox`` / ``celeryev``.

Results come back over the ``rpc://`` backend: each client has its own reply
queue and the worker publishes results to it through the default exchange.

The tests build their own client app with :func:`make_app`; the worker uses
the module-level ``app``.  Task names are fixed, so both sides agree.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery
from celery.exceptions import Reject
from kombu import Exchange, Queue

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def make_app(broker_url: str | None = None, name: str | None = None, backend: str | None = None) -> Celery:
    broker_url = broker_url or os.environ.get("AMQP_URL") or DEFAULT_URL
    name = name or os.environ.get("CELERY_INTEROP_NAME") or "celery-interop"

    backend = backend or os.environ.get("CELERY_INTEROP_BACKEND") or "rpc://"
    app = Celery("interop.celery_app", broker=broker_url, backend=backend, set_as_current=False)
    queue_arguments = json.loads(os.environ.get("CELERY_INTEROP_QUEUE_ARGUMENTS") or "null")
    if queue_arguments:
        app.conf.task_queues = [Queue(name, Exchange(name), routing_key=name, queue_arguments=queue_arguments)]
    app.conf.update(
        task_default_queue=name,
        control_exchange=name,
        event_exchange=f"{name}.ev",
        # Fail fast instead of retrying forever when the broker is not there.
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        broker_connection_timeout=5,
        # The rpc:// reply queues are declared with x-expires = result_expires
        # (default one day).  A worker sometimes declares one for itself that
        # nobody consumes (e.g. on a revoke command), so keep that short.
        result_expires=120,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    @app.task(name="interop.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="interop.fail", shared=False)
    def fail(message):
        raise ValueError(message)

    @app.task(name="interop.sleep_then_echo", shared=False)
    def sleep_then_echo(seconds, value):
        time.sleep(seconds)
        return value

    @app.task(name="interop.sum_all", shared=False)
    def sum_all(values):
        return sum(values)

    @app.task(name="interop.retry_once", bind=True, shared=False, max_retries=3)
    def retry_once(self, value):
        if self.request.retries == 0:
            raise self.retry(countdown=0.5)
        return f"{value} after {self.request.retries} retry"

    @app.task(name="interop.die", acks_late=True, reject_on_worker_lost=True, shared=False)
    def die():
        """A poison task: its worker process dies every time it runs it (as an OOM kill would)."""
        os._exit(1)

    @app.task(name="interop.reject_until", acks_late=True, shared=False)
    def reject_until(log_path, attempts):
        """Fails (rejected, requeued) until its ``attempts``-th run; each run appends its time."""
        with open(log_path, "a") as log:
            log.write(f"{time.time()}\n")
        with open(log_path) as log:
            runs = len(log.read().split())
        if runs < attempts:
            raise Reject("not yet", requeue=True)
        return runs

    @app.task(name="interop.record", shared=False)
    def record(log_path, value):
        with open(log_path, "a") as log:
            log.write(f"{value}\n")
        return value

    @app.task(name="interop.slow_record", bind=True, acks_late=True, shared=False)
    def slow_record(self, log_path, seconds):
        """Appends its run (was it a redelivery?), then takes ``seconds``."""
        with open(log_path, "a") as log:
            log.write(f"{(self.request.delivery_info or {}).get('redelivered')}\n")
        time.sleep(seconds)
        return seconds

    @app.task(name="interop.late_ack_sleep", acks_late=True, shared=False)
    def late_ack_sleep(seconds, value):
        time.sleep(seconds)
        return value

    return app


app = make_app()
