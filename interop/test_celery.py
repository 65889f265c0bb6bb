"""A real Celery worker (``celery -A interop.celery_app worker``) against the broker.

The worker runs as a subprocess in two set-ups:

``solo``
    ``--pool=solo -c 1 --without-heartbeat --without-gossip --without-mingle``:
    only the task queue, its exchange and the remote-control (pidbox) queue.
``prefork``
    ``--pool=prefork -c 2`` with Celery's defaults: mingle at start-up (a
    broadcast plus replies), gossip (an exclusive, TTL'd event queue bound to a
    topic exchange) and event heartbeats.

The tests send tasks from this process through a client app of the same
module (:func:`interop.celery_app.make_app`) and get results back over the
``rpc://`` result backend.  Every name is unique to the module run and is
deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest
from celery import chord, group
from celery.exceptions import TaskRevokedError

from interop.celery_app import make_app
from interop.support import Management

pytestmark = pytest.mark.timeout(40)

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0  # worker start-up, mingle included
RESULT_TIMEOUT = 20.0

WORKER_MODES = {
    "solo": [
        "--pool=solo", "-c", "1", "--without-heartbeat", "--without-gossip", "--without-mingle",
    ],
    "prefork": ["--pool=prefork", "-c", "2"],
}


class Worker:
    """``celery worker`` in its own process group, with its log collected."""

    def __init__(self, amqp_url: str, name: str, mode: str, backend: str | None = None) -> None:
        self.name = name
        self.mode = mode
        self.hostname = f"{name}@interop"
        env = {
            **os.environ,
            "AMQP_URL": amqp_url,
            "CELERY_INTEROP_NAME": name,
            "PYTHONUNBUFFERED": "1",
        }
        if backend:
            env["CELERY_INTEROP_BACKEND"] = backend
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "interop.celery_app", "worker",
             "-Q", name, "-n", self.hostname, "--loglevel=INFO", *WORKER_MODES[mode]],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, prefork children included
        )
        self.log: list[str] = []
        self.expected_status: tuple[int | None, ...] = (0,)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.log.append(line.rstrip("\n"))
                self._changed.notify_all()

    def tail(self) -> str:
        with self._changed:
            return "\n".join(self.log[-40:])

    def wait_ready(self) -> None:
        marker = f"{self.hostname} ready."
        deadline = time.monotonic() + READY_TIMEOUT
        with self._changed:
            while not any(marker in line for line in self.log):
                if self.proc.poll() is not None:
                    pytest.fail(f"celery worker exited ({self.proc.returncode}):\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"celery worker not ready in {READY_TIMEOUT} s:\n{self.tail()}")
                self._changed.wait(min(left, 0.2))

    def stop(self, client=None) -> int | None:
        """Stop the worker; return its exit status.

        First by remote control (``celery control shutdown``) if a client app
        is given, then by SIGTERM (warm shutdown), then SIGKILL to the whole
        process group.  The remote command is tried first because it also
        wakes the worker: after a SIGTERM, an idle worker only notices the
        request once its event loop wakes up, which with nothing to do can
        take up to 10 s.
        """
        if client is not None and self.proc.poll() is None:
            try:
                client.control.shutdown(destination=[self.hostname])
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - fall back to signals
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(12)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers (pool children)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        self._reader.join(5)
        self.proc.stdout.close()
        return self.proc.returncode


def _delete(amqp_url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for method, name in [("queue_delete", q) for q in queues] + [
            ("exchange_delete", x) for x in exchanges
        ]:
            channel = connection.channel()
            try:
                getattr(channel, method)(name)
            except pika.exceptions.ChannelClosed:
                continue
            channel.close()
    finally:
        connection.close()


@contextlib.contextmanager
def celery_pair(amqp_url: str, mode: str, backend: str | None = None):
    """(client app, worker) for one worker mode, with names of their own; all cleaned up after."""
    name = f"t-{uuid.uuid4().hex[:12]}-celery-{mode}"
    client = make_app(amqp_url, name, backend)
    worker = Worker(amqp_url, name, mode, backend)
    try:
        worker.wait_ready()
        yield client, worker
    finally:
        status = worker.stop(client)
        reply_queue = getattr(client.backend, "oid", None)  # rpc:// only
        # client.close() leaves the rpc:// result consumer's connection open.
        result_consumer = getattr(client.backend, "result_consumer", None)
        if result_consumer is not None and result_consumer._connection is not None:
            result_consumer.stop()
        client.close()
        _delete(
            amqp_url,
            queues=[name, *([reply_queue] if reply_queue else [])],
            exchanges=[name, f"{name}.pidbox", f"reply.{name}.pidbox", f"{name}.ev"],
        )
    # A remote "shutdown" is a warm shutdown: the worker exits by itself, status 0.
    assert status in worker.expected_status, f"celery worker ended with {status}:\n{worker.tail()}"


@pytest.fixture(scope="module", params=sorted(WORKER_MODES))
def celery_setup(request: pytest.FixtureRequest, amqp_url: str):
    with celery_pair(amqp_url, request.param) as pair:
        yield pair


@pytest.fixture
def client(celery_setup):
    return celery_setup[0]


@pytest.fixture
def worker(celery_setup):
    return celery_setup[1]


def test_add(client) -> None:
    add = client.tasks["interop.add"]

    result = add.delay(2, 2)

    assert result.get(timeout=RESULT_TIMEOUT) == 4
    assert result.successful()
    assert result.state == "SUCCESS"


def test_many_tasks_in_flight(client) -> None:
    add = client.tasks["interop.add"]

    results = [add.delay(i, i) for i in range(25)]

    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [2 * i for i in range(25)]


def test_group(client) -> None:
    add = client.tasks["interop.add"]

    result = group(add.s(i, 100) for i in range(10)).apply_async()

    assert result.get(timeout=RESULT_TIMEOUT) == [100 + i for i in range(10)]


def test_slow_tasks(client, worker) -> None:
    """prefork -c 2 runs two at once: it holds two unacked deliveries (global prefetch 8)."""
    sleep_then_echo = client.tasks["interop.sleep_then_echo"]

    started = time.monotonic()
    results = [sleep_then_echo.delay(1.0, i) for i in range(2)]

    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [0, 1]
    elapsed = time.monotonic() - started
    if worker.mode == "prefork":
        assert elapsed < 1.9
    else:  # the solo pool: one after the other
        assert elapsed >= 1.9


def test_exception_propagates(client) -> None:
    fail = client.tasks["interop.fail"]

    with pytest.raises(ValueError, match="boom"):
        fail.delay("boom").get(timeout=RESULT_TIMEOUT)

    result = fail.delay("quiet boom")
    error = result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert isinstance(error, ValueError) and str(error) == "quiet boom"
    assert result.state == "FAILURE"
    assert "ValueError" in result.traceback


def test_countdown(client) -> None:
    """An ETA task is held by the worker, which raises its basic.qos prefetch meanwhile."""
    add = client.tasks["interop.add"]

    started = time.monotonic()
    later = add.apply_async((3, 4), countdown=1.5)
    now = add.delay(1, 1)

    assert now.get(timeout=RESULT_TIMEOUT) == 2  # not stuck behind the held one
    assert later.get(timeout=RESULT_TIMEOUT) == 7
    assert time.monotonic() - started >= 1.4


def test_revoke_before_eta(client, worker) -> None:
    add = client.tasks["interop.add"]

    result = add.apply_async((5, 5), countdown=2)
    client.control.revoke(result.id, destination=[worker.hostname])

    with pytest.raises(TaskRevokedError):
        result.get(timeout=RESULT_TIMEOUT)


def test_control_ping(client, worker) -> None:
    """Remote control: a broadcast on the pidbox fanout, replies on the reply exchange."""
    replies = client.control.ping(destination=[worker.hostname], timeout=5)

    assert replies == [{worker.hostname: {"ok": "pong"}}]


def test_inspect_active_queues(client, worker) -> None:
    replies = client.control.inspect(destination=[worker.hostname], timeout=5).active_queues()

    assert replies is not None and list(replies) == [worker.hostname]
    (queue,) = replies[worker.hostname]
    assert queue["name"] == worker.name
    assert queue["exchange"]["name"] == worker.name
    assert queue["exchange"]["type"] == "direct"
    assert queue["routing_key"] == worker.name
    assert queue["durable"] is True


def test_retry(client) -> None:
    """task.retry(countdown=...) republishes the task with an ETA; it runs again and succeeds."""
    retry_once = client.tasks["interop.retry_once"]

    assert retry_once.delay("done").get(timeout=RESULT_TIMEOUT) == "done after 1 retry"


def test_events_reach_an_event_receiver(client, worker) -> None:
    """Events (celeryev): the worker publishes to the topic event exchange once told to."""
    if worker.mode != "prefork":
        pytest.skip("checked with the prefork worker: the solo one here runs --without-heartbeat "
                    "and sends no task events after enable_events, on RabbitMQ as well")
    add = client.tasks["interop.add"]
    seen: list[dict] = []
    with client.connection_for_read() as connection:
        receiver = client.events.Receiver(connection)

        def succeeded(event: dict) -> None:
            seen.append(event)
            receiver.should_stop = True

        receiver.handlers = {"task-succeeded": succeeded}
        consumer_ready = threading.Event()
        receiver.on_consume_ready = lambda *args, **kwargs: consumer_ready.set()
        thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=RESULT_TIMEOUT,
                                                                  wakeup=False), daemon=True)
        thread.start()
        assert consumer_ready.wait(10)
        client.control.enable_events(destination=[worker.hostname])
        try:
            result = add.delay(20, 22)
            assert result.get(timeout=RESULT_TIMEOUT) == 42
            thread.join(RESULT_TIMEOUT)
        finally:
            client.control.disable_events(destination=[worker.hostname])
    assert [event["uuid"] for event in seen] == [result.id]


def test_celery_inspect_ping_command(amqp_url, worker) -> None:
    """The ``celery inspect ping`` command line, as operators run it."""
    env = {**os.environ, "AMQP_URL": amqp_url, "CELERY_INTEROP_NAME": worker.name}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "interop.celery_app", "inspect", "ping",
                           "-d", worker.hostname, "--timeout", "5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pong" in done.stdout


def test_an_acks_late_task_survives_its_worker_being_killed(amqp_url) -> None:
    """acks_late: the task message stays unacked while it runs; when the worker dies (SIGKILL)
    the broker requeues it, and the next worker runs it to the end."""
    with celery_pair(amqp_url, "solo") as (client, worker):
        late = client.tasks["interop.late_ack_sleep"]
        result = late.delay(2.0, "finished")
        deadline = time.monotonic() + 10
        while not any(f"{result.id}] received" in line for line in worker.log) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(5)
        worker.expected_status = (-signal.SIGKILL,)
        second = Worker(amqp_url, worker.name, "solo")
        try:
            second.wait_ready()
            assert result.get(timeout=RESULT_TIMEOUT) == "finished"
            assert any(f"{result.id}] received" in line for line in second.log)  # it ran again, here
        finally:
            second.stop(client)


def test_chord(amqp_url, tmp_path) -> None:
    """A chord (the header group, then the callback with their results). The rpc:// backend has
    no chords, so this pair stores results in SQLite; the chord's unlock task polls through the
    broker with countdowns."""
    backend = f"db+sqlite:///{tmp_path}/results.sqlite"
    with celery_pair(amqp_url, "solo", backend) as (client, worker):
        add = client.tasks["interop.add"]
        result = chord([add.s(i, i) for i in range(4)], client.tasks["interop.sum_all"].s())()
        assert result.get(timeout=RESULT_TIMEOUT) == sum(2 * i for i in range(4))


def test_a_task_that_kills_its_worker_ends_in_the_dead_letter_queue(amqp_url, management_url) -> None:
    """acks_late + task_reject_on_worker_lost and a task whose worker process dies each time: the
    task is requeued every time (celery's warning: "can cause message loops"); a delivery-limit
    policy on the task queue stops the loop after 1 + 2 deliveries and dead-letters the task."""
    if _is_rabbitmq(amqp_url):
        pytest.skip("RabbitMQ 3.10 counts deliveries on quorum queues only; Celery's queue here is classic")
    api = Management(management_url)
    with celery_pair(amqp_url, "prefork") as (client, worker):
        dead = f"{worker.name}.dead"
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            connection.channel().queue_declare(dead)
            poison = {"delivery-limit": 2, "dead-letter-exchange": "", "dead-letter-routing-key": dead}
            assert api.call("PUT", f"/api/policies/%2F/{worker.name}-poison", {
                "pattern": f"^{worker.name}$", "apply-to": "queues", "definition": poison}) in (201, 204)
            result = client.tasks["interop.die"].delay()
            deadline = time.monotonic() + 30
            got = None
            while got is None and time.monotonic() < deadline:
                got = connection.channel().basic_get(dead, auto_ack=True)
                got = got if got[0] is not None else None
                time.sleep(0.2)
            assert got is not None, worker.tail()
            _, properties, _ = got
            assert properties.headers["id"] == result.id
            death = properties.headers["x-death"][0]
            assert death["reason"] == "delivery_limit" and death["queue"] == worker.name
            assert sum(f"{result.id}] received" in line for line in worker.log) == 3
            assert worker.proc.poll() is None  # the worker itself goes on
        finally:
            api.call("DELETE", f"/api/policies/%2F/{worker.name}-poison")
            connection.channel().queue_delete(dead)
            connection.close()


def _is_rabbitmq(amqp_url: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection._impl.server_properties.get("product") == "RabbitMQ"
    finally:
        connection.close()


def test_retries_back_off_on_the_broker(amqp_url, management_url, tmp_path) -> None:
    """A task that rejects itself (requeue) until its third run, on a queue whose policy sets a
    redelivery backoff of 0.5 s doubling: the runs are spaced by the backoff, not a tight loop."""
    if _is_rabbitmq(amqp_url):
        pytest.skip("RabbitMQ 3.10 has no redelivery backoff")
    api = Management(management_url)
    with celery_pair(amqp_url, "solo") as (client, worker):
        assert api.call("PUT", f"/api/policies/%2F/{worker.name}-backoff", {
            "pattern": f"^{worker.name}$", "apply-to": "queues",
            "definition": {"delayed-retry-min": 500, "delayed-retry-multiplier": 2}}) in (201, 204)
        try:
            log = tmp_path / "runs"
            result = client.tasks["interop.reject_until"].delay(str(log), 3)
            assert result.get(timeout=RESULT_TIMEOUT) == 3
            runs = [float(line) for line in log.read_text().split()]
            assert runs[1] - runs[0] >= 0.45 and runs[2] - runs[1] >= 0.9, runs
        finally:
            api.call("DELETE", f"/api/policies/%2F/{worker.name}-backoff")


def test_a_task_published_twice_runs_once(amqp_url, tmp_path, monkeypatch) -> None:
    """The task queue deduplicates on Celery's task id header: a publisher that retries a publish
    (same task id) does not run the task twice."""
    if _is_rabbitmq(amqp_url):
        pytest.skip("RabbitMQ 3.10 has no deduplication (a plugin)")
    monkeypatch.setenv("CELERY_INTEROP_QUEUE_ARGUMENTS",
                       json.dumps({"x-message-deduplication": True, "x-deduplication-header": "id"}))
    with celery_pair(amqp_url, "solo") as (client, worker):
        log = tmp_path / "runs"
        record = client.tasks["interop.record"]
        first = record.apply_async((str(log), "once"), task_id=f"{worker.name}-job-1")
        record.apply_async((str(log), "twice"), task_id=f"{worker.name}-job-1")  # the retried publish
        other = record.apply_async((str(log), "another"), task_id=f"{worker.name}-job-2")
        assert first.get(timeout=RESULT_TIMEOUT) == "once"
        assert other.get(timeout=RESULT_TIMEOUT) == "another"
        time.sleep(0.5)
        assert log.read_text().split() == ["once", "another"]


def test_a_task_longer_than_its_queue_s_consumer_timeout(amqp_url, management_url, tmp_path) -> None:
    """An acks_late task that runs longer than the consumer timeout a policy sets on its queue
    (docs/operations.md, "Running Celery"): the broker cancels the worker's consumer and requeues
    the task; the worker finishes the run (its late ack is ignored), reconnects and runs the task
    again as a redelivery. (What the worker does after a second cancel is Celery's: see the docs.)"""
    if _is_rabbitmq(amqp_url):
        pytest.skip("RabbitMQ 3.10 has no per-queue consumer timeout (only the broker-wide one)")
    api = Management(management_url)
    with celery_pair(amqp_url, "solo") as (client, worker):
        assert api.call("PUT", f"/api/policies/%2F/{worker.name}-timeout", {
            "pattern": f"^{worker.name}$", "apply-to": "queues",
            "definition": {"consumer-timeout": 1000}}) in (201, 204)
        try:
            log = tmp_path / "runs"
            # 4 s: well past a timeout that fires 1-2 s after the delivery (checked once a second)
            result = client.tasks["interop.slow_record"].delay(str(log), 4.0)
            assert result.get(timeout=RESULT_TIMEOUT) == 4.0  # the first run's result
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(log.read_text().split()) < 2:
                time.sleep(0.2)
            runs = log.read_text().split()
            view = api.request("GET", f"/api/queues/%2F/{worker.name}")[1]
            assert view["consumer_timeouts"] >= 1
            if any("ConsumerCancelled" in line for line in worker.log):
                assert runs[:2] == ["False", "True"], worker.tail()  # reconnected, ran it again
            else:
                # On a loaded machine the solo worker sometimes loses the cancel in its event loop
                # (it read the frame: nothing left in its socket; the build of 2026-12-01 did the
                # same, 1 run in 5; docs/operations.md): it then consumes no more. The broker's
                # part holds all the same: the task waits in the queue, redelivered, for the
                # next consumer.
                assert runs == ["False"], worker.tail()
                assert (view["consumers"], view["messages_ready"]) == (0, 1), view
                with contextlib.closing(pika.BlockingConnection(pika.URLParameters(amqp_url))) as connection:
                    method, _, _ = connection.channel().basic_get(worker.name, auto_ack=True)
                    assert method is not None and method.redelivered
        finally:
            api.call("DELETE", f"/api/policies/%2F/{worker.name}-timeout")
