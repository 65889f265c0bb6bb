"""The six RabbitMQ Python tutorials (interop/tutorials/), run as real programs.

Each test starts the tutorial's receivers (or RPC server) as subprocesses,
waits for them to say they are waiting, runs the senders, and checks that every
program printed exactly what the tutorial says it prints.  All names carry the
test's ``unique`` prefix (``TUTORIAL_PREFIX``), so tests can share a broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

pytestmark = pytest.mark.timeout(40)

TUTORIALS = Path(__file__).parent / "tutorials"

#: how long a receiver may live before stopping by itself (TUTORIAL_TIMEOUT)
RECEIVER_LIFETIME = 15.0
#: how long the tests wait for any one thing to happen
WAIT = 10.0

WAITING_MESSAGES = " [*] Waiting for messages. To exit press CTRL+C"
WAITING_LOGS = " [*] Waiting for logs. To exit press CTRL+C"
AWAITING_RPC = " [x] Awaiting RPC requests"

# Every queue and exchange the tutorials name (before the prefix).
TUTORIAL_QUEUES = ("hello", "task_queue", "rpc_queue")
TUTORIAL_EXCHANGES = ("logs", "direct_logs", "topic_logs")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Program:
    """One tutorial program running in the background; its output is collected."""

    def __init__(self, script: str, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.name = " ".join((script, *args))
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(TUTORIALS / script), *args],
            cwd=TUTORIALS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C at the terminal reaches pytest only
            # Ctrl-C (SIGINT) must raise KeyboardInterrupt in the program, even
            # if pytest runs in the background, where SIGINT is ignored and a
            # child would inherit that.
            preexec_fn=_default_sigint,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def describe(self) -> str:
        return f"{self.name!r}: stdout={self.lines!r} stderr={self.errors[-15:]!r}"

    def wait_until(self, predicate, timeout: float = WAIT, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out waiting for {what or predicate}: {self.describe()}")
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    pytest.fail(f"exited ({self.proc.returncode}) before {what}: {self.describe()}")
                self._changed.wait(min(left, 0.1))

    def wait_for_line(self, line: str, timeout: float = WAIT) -> None:
        self.wait_until(lambda lines: line in lines, timeout, what=repr(line))

    def count(self, line: str) -> int:
        with self._changed:
            return self.lines.count(line)

    def finish(self, timeout: float = WAIT) -> list[str]:
        """Wait for the program to exit by itself (successfully); return its stdout."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not exit within {timeout} s: {self.describe()}")
        for reader in self._readers:
            reader.join(5)
        assert self.proc.returncode == 0, self.describe()
        return list(self.lines)

    def interrupt(self, timeout: float = WAIT) -> list[str]:
        """Ctrl-C, as the tutorials tell you to; return its stdout."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
            pass
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Tutorials:
    """Starts tutorial programs against the broker under test and cleans up after them."""

    def __init__(self, amqp_url: str, prefix: str) -> None:
        self.amqp_url = amqp_url
        self.prefix = prefix
        self.env = {
            **os.environ,
            "AMQP_URL": amqp_url,
            "TUTORIAL_PREFIX": prefix,
            "TUTORIAL_TIMEOUT": str(RECEIVER_LIFETIME),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("TUTORIAL_MAX_MESSAGES", None)
        self.programs: list[Program] = []

    def start(self, script: str, *args: str, ready: str | None = None, **env: object) -> Program:
        """Start ``script`` in the background; with ``ready``, wait for that line."""
        program = Program(script, args, {**self.env, **{k: str(v) for k, v in env.items()}})
        self.programs.append(program)
        if ready is not None:
            program.wait_for_line(ready)
        return program

    def run(self, script: str, *args: str) -> list[str]:
        """Run ``script`` to completion (a sender); return its stdout lines."""
        program = self.start(script, *args)
        return program.finish()

    def close(self) -> None:
        for program in self.programs:
            program.kill()
        self._delete_broker_objects()

    def _delete_broker_objects(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            deletions = [("queue_delete", self.prefix + q) for q in TUTORIAL_QUEUES]
            deletions += [("exchange_delete", self.prefix + x) for x in TUTORIAL_EXCHANGES]
            for method, name in deletions:
                # A fresh channel each: a broker may close the channel if the
                # object was never declared by this test.
                channel = connection.channel()
                try:
                    getattr(channel, method)(name)
                except pika.exceptions.ChannelClosed:
                    continue
                channel.close()
        finally:
            connection.close()


@pytest.fixture
def tutorials(amqp_url: str, unique: str):
    t = Tutorials(amqp_url, unique + "-")
    try:
        yield t
    finally:
        t.close()


# --------------------------------------------------------------------------
# 1. "Hello World!"


def test_hello_world(tutorials: Tutorials) -> None:
    receiver = tutorials.start("receive.py", ready=WAITING_MESSAGES, TUTORIAL_MAX_MESSAGES=1)

    assert tutorials.run("send.py") == [" [x] Sent 'Hello World!'"]

    assert receiver.finish() == [WAITING_MESSAGES, " [x] Received b'Hello World!'"]


def test_hello_world_queue_keeps_messages_until_a_receiver_comes(tutorials: Tutorials) -> None:
    # send.py declares the queue too, so the messages wait there.
    for _ in range(3):
        assert tutorials.run("send.py") == [" [x] Sent 'Hello World!'"]

    receiver = tutorials.start("receive.py", TUTORIAL_MAX_MESSAGES=3)

    assert receiver.finish() == [WAITING_MESSAGES] + [" [x] Received b'Hello World!'"] * 3


# --------------------------------------------------------------------------
# 2. Work queues


def test_work_queues_fair_dispatch(tutorials: Tutorials) -> None:
    """prefetch_count=1: a busy worker gets nothing more until it acks."""
    workers = [
        tutorials.start("worker.py", ready=WAITING_MESSAGES, TUTORIAL_SECONDS_PER_DOT=0.1)
        for _ in range(2)
    ]

    long_task = "A long task" + "." * 40  # 4 s of work
    short_tasks = ["First message.", "Second message..", "Third message..."]  # 0.6 s in all
    for task in [long_task, *short_tasks]:
        assert tutorials.run("new_task.py", *task.split(" ")) == [f" [x] Sent {task}"]

    # The worker with the long task must not get anything else: the other
    # worker does all the short ones, one after the other, meanwhile.
    deadline = time.monotonic() + WAIT
    while sum(w.count(" [x] Done") for w in workers) < 4:
        assert time.monotonic() < deadline, [w.describe() for w in workers]
        time.sleep(0.05)
    outputs = sorted((w.interrupt() for w in workers), key=len)

    assert outputs == [
        [WAITING_MESSAGES, f" [x] Received {long_task}", " [x] Done", "Interrupted"],
        [WAITING_MESSAGES]
        + [line for task in short_tasks for line in (f" [x] Received {task}", " [x] Done")]
        + ["Interrupted"],
    ]


def test_work_queues_task_of_a_dead_worker_goes_to_another(tutorials: Tutorials) -> None:
    """Manual ack: a task whose worker dies before acking is delivered again."""
    doomed = tutorials.start("worker.py", ready=WAITING_MESSAGES, TUTORIAL_SECONDS_PER_DOT=1)
    task = "Slow task" + "." * 30
    assert tutorials.run("new_task.py", *task.split(" ")) == [f" [x] Sent {task}"]
    doomed.wait_for_line(f" [x] Received {task}")
    doomed.proc.kill()  # mid-task, before the ack

    survivor = tutorials.start(
        "worker.py", TUTORIAL_SECONDS_PER_DOT=0.01, TUTORIAL_MAX_MESSAGES=1
    )

    assert survivor.finish() == [WAITING_MESSAGES, f" [x] Received {task}", " [x] Done"]


# --------------------------------------------------------------------------
# 3. Publish/Subscribe


def test_publish_subscribe(tutorials: Tutorials) -> None:
    # Nobody is listening yet: the fanout exchange drops this one.
    assert tutorials.run("emit_log.py", "lost", "message") == [" [x] Sent lost message"]

    receivers = [
        tutorials.start("receive_logs.py", ready=WAITING_LOGS, TUTORIAL_MAX_MESSAGES=3)
        for _ in range(2)
    ]

    assert tutorials.run("emit_log.py") == [" [x] Sent info: Hello World!"]
    assert tutorials.run("emit_log.py", "warning:", "disk", "full") == [
        " [x] Sent warning: disk full"
    ]
    assert tutorials.run("emit_log.py", "error: it broke") == [" [x] Sent error: it broke"]

    expected = [
        WAITING_LOGS,
        " [x] b'info: Hello World!'",
        " [x] b'warning: disk full'",
        " [x] b'error: it broke'",
    ]
    for receiver in receivers:
        assert receiver.finish() == expected


# --------------------------------------------------------------------------
# 4. Routing


def test_routing(tutorials: Tutorials) -> None:
    # As in the tutorial: one receiver saves warnings and errors, one shows everything.
    to_file = tutorials.start(
        "receive_logs_direct.py", "warning", "error", ready=WAITING_LOGS, TUTORIAL_MAX_MESSAGES=2
    )
    to_screen = tutorials.start(
        "receive_logs_direct.py",
        "info",
        "warning",
        "error",
        ready=WAITING_LOGS,
        TUTORIAL_MAX_MESSAGES=4,
    )

    sent = [
        ((), " [x] Sent info:Hello World!"),  # no severity given: info
        (("info", "all", "is", "well"), " [x] Sent info:all is well"),
        (("debug", "nobody", "listens"), " [x] Sent debug:nobody listens"),
        (("warning", "low", "on", "disk"), " [x] Sent warning:low on disk"),
        (("error", "Run.", "Run.", "Or", "it", "will", "explode."),
         " [x] Sent error:Run. Run. Or it will explode."),
    ]
    for args, printed in sent:
        assert tutorials.run("emit_log_direct.py", *args) == [printed]

    assert to_file.finish() == [
        WAITING_LOGS,
        " [x] warning:b'low on disk'",
        " [x] error:b'Run. Run. Or it will explode.'",
    ]
    assert to_screen.finish() == [
        WAITING_LOGS,
        " [x] info:b'Hello World!'",
        " [x] info:b'all is well'",
        " [x] warning:b'low on disk'",
        " [x] error:b'Run. Run. Or it will explode.'",
    ]


def test_routing_without_severities_prints_usage(tutorials: Tutorials) -> None:
    program = tutorials.start("receive_logs_direct.py")
    assert program.proc.wait(WAIT) == 1
    program.kill()
    assert program.lines == []
    usage = f"Usage: {TUTORIALS / 'receive_logs_direct.py'} [info] [warning] [error]"
    assert program.errors == [usage]


# --------------------------------------------------------------------------
# 5. Topics


def test_topics_log_facilities(tutorials: Tutorials) -> None:
    # The tutorial's four example receivers.
    everything = tutorials.start("receive_logs_topic.py", "#", ready=WAITING_LOGS,
                                 TUTORIAL_MAX_MESSAGES=6)
    kern = tutorials.start("receive_logs_topic.py", "kern.*", ready=WAITING_LOGS,
                           TUTORIAL_MAX_MESSAGES=2)
    critical = tutorials.start("receive_logs_topic.py", "*.critical", ready=WAITING_LOGS,
                               TUTORIAL_MAX_MESSAGES=2)
    both = tutorials.start("receive_logs_topic.py", "kern.*", "*.critical", ready=WAITING_LOGS,
                           TUTORIAL_MAX_MESSAGES=3)

    sent = [
        ((), " [x] Sent anonymous.info:Hello World!"),  # the default key
        (("kern.info", "kernel", "up"), " [x] Sent kern.info:kernel up"),
        (("cron.critical", "cron", "died"), " [x] Sent cron.critical:cron died"),
        (("kern", "one", "word"), " [x] Sent kern:one word"),  # "*" needs a word
        (("kern.critical.extra", "three", "words"), " [x] Sent kern.critical.extra:three words"),
        (("kern.critical", "A", "critical", "kernel", "error"),
         " [x] Sent kern.critical:A critical kernel error"),  # everyone; `both` just once
    ]
    for args, printed in sent:
        assert tutorials.run("emit_log_topic.py", *args) == [printed]

    assert everything.finish() == [
        WAITING_LOGS,
        " [x] anonymous.info:b'Hello World!'",
        " [x] kern.info:b'kernel up'",
        " [x] cron.critical:b'cron died'",
        " [x] kern:b'one word'",
        " [x] kern.critical.extra:b'three words'",
        " [x] kern.critical:b'A critical kernel error'",
    ]
    assert kern.finish() == [
        WAITING_LOGS,
        " [x] kern.info:b'kernel up'",
        " [x] kern.critical:b'A critical kernel error'",
    ]
    assert critical.finish() == [
        WAITING_LOGS,
        " [x] cron.critical:b'cron died'",
        " [x] kern.critical:b'A critical kernel error'",
    ]
    assert both.finish() == [
        WAITING_LOGS,
        " [x] kern.info:b'kernel up'",
        " [x] cron.critical:b'cron died'",
        " [x] kern.critical:b'A critical kernel error'",
    ]


def test_topics_animals(tutorials: Tutorials) -> None:
    # The tutorial's "<speed>.<colour>.<species>" example: Q1 is interested in
    # orange animals, Q2 in rabbits and in everything lazy.
    q1 = tutorials.start("receive_logs_topic.py", "*.orange.*", ready=WAITING_LOGS,
                         TUTORIAL_MAX_MESSAGES=4)
    q2 = tutorials.start("receive_logs_topic.py", "*.*.rabbit", "lazy.#", ready=WAITING_LOGS,
                         TUTORIAL_MAX_MESSAGES=7)

    keys = [
        "quick.orange.rabbit",  # Q1, Q2
        "lazy.orange.elephant",  # Q1, Q2
        "quick.orange.fox",  # Q1
        "lazy.brown.fox",  # Q2
        "lazy.pink.rabbit",  # Q2, once though both its bindings match
        "quick.brown.fox",  # nobody
        "orange",  # nobody
        "quick.orange.new.rabbit",  # nobody
        "lazy.orange.new.rabbit",  # Q2
        "lazy",  # Q2: "#" matches zero words
        "lazy.orange.rabbit",  # Q1, Q2 (last, so nothing can arrive unseen after it)
    ]
    for key in keys:
        assert tutorials.run("emit_log_topic.py", key, "animal") == [f" [x] Sent {key}:animal"]

    assert q1.finish() == [WAITING_LOGS] + [
        f" [x] {key}:b'animal'"
        for key in ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox",
                    "lazy.orange.rabbit"]
    ]
    assert q2.finish() == [WAITING_LOGS] + [
        f" [x] {key}:b'animal'"
        for key in ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox",
                    "lazy.pink.rabbit", "lazy.orange.new.rabbit", "lazy", "lazy.orange.rabbit"]
    ]


# --------------------------------------------------------------------------
# 6. RPC


def test_rpc(tutorials: Tutorials) -> None:
    server = tutorials.start("rpc_server.py", ready=AWAITING_RPC, TUTORIAL_MAX_MESSAGES=1)

    assert tutorials.run("rpc_client.py", "10") == [" [x] Requesting fib(10)", " [.] Got 55"]

    assert server.finish() == [AWAITING_RPC, " [.] fib(10)"]


def test_rpc_concurrent_clients_and_two_servers(tutorials: Tutorials) -> None:
    """Each client gets its own answer, on its own reply queue, matched by correlation_id."""
    servers = [tutorials.start("rpc_server.py", ready=AWAITING_RPC) for _ in range(2)]

    answers = {5: 5, 10: 55, 15: 610, 20: 6765, 25: 75025, 30: 832040}
    clients = {n: tutorials.start("rpc_client.py", *([] if n == 30 else [str(n)])) for n in answers}

    for n, client in clients.items():
        assert client.finish() == [f" [x] Requesting fib({n})", f" [.] Got {answers[n]}"]

    outputs = [server.interrupt() for server in servers]
    for output in outputs:
        assert output[0] == AWAITING_RPC
        assert output[-1] == "Interrupted"
    handled = sorted(line for output in outputs for line in output[1:-1])
    assert handled == sorted(f" [.] fib({n})" for n in answers)
