"""A full disk: the broker's data directory on a small tmpfs (64 MB), filled with a filler file.

1. The disk alarm (``AMQPBROKER_DISK_FREE_LIMIT``) set so that publishing crosses it: the publisher
   gets ``connection.blocked`` ("low on disk") and stalls, nothing is nacked; deleting the filler
   clears the alarm by itself (``connection.unblocked``), publishing resumes, and every confirmed
   message is in the queue exactly once.
2. The disk alarm off, the file system filled until RocksDB's writes fail (ENOSPC): the store alarm
   nacks persistent publishes and blocks publishers, the broker stays up; deleting the filler clears
   it by itself, a new persistent publish is confirmed, and after a restart on the same data dir
   every confirmed message is recovered exactly once.

Runs its own broker subprocesses (never ``AMQP_URL``) and needs root to mount; skipped, with the
reason, where mounting is not permitted. The broker's output goes to a log outside the small file
system and a traceback in it fails the test. The alarm gauges of /metrics are checked where the
broker exports them. 64 MB because RocksDB resumes after ENOSPC only once its write buffer (32 MB)
is free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from amqpbroker.testing import free_port

FS_BYTES = 64 << 20
MIB = 1 << 20
PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)
DISK_REASON = "low on disk"
STORE_REASON = "the message store failed"
DISK_GAUGE = "rabbitmq_alarms_free_disk_space_watermark"
STORE_GAUGE = "amqpbroker_alarms_store_failed"


# ------------------------------------------------------------------ the small file system

@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs mounted under the test's tmp dir, unmounted afterwards."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0755", "tmpfs",
                                 str(mountpoint)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (uid {os.geteuid()}): "
                    f"{(result.stderr or result.stdout).strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def write_filler(path: Path, size: int | None) -> int:
    """Write ``size`` bytes (None: until the file system is full); returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    chunk = b"\0" * MIB
    written = 0
    try:
        while size is None or written < size:
            want = MIB if size is None else min(MIB, size - written)
            try:
                count = os.write(fd, chunk[:want])
            except OSError as exc:
                if exc.errno == errno.ENOSPC and size is None:
                    break
                raise
            written += count
    finally:
        os.close(fd)
    return written


# ------------------------------------------------------------------ the broker


class Broker:
    """amqpbroker as a subprocess on loopback, its output in a log file (outside the small fs)."""

    def __init__(self, data_dir: Path, log_path: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "AMQPBROKER_PROMETHEUS_HOST": "127.0.0.1", **env}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        args = [sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--prometheus-port", str(self.metrics_port),
                "--management-port", "0"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the broker exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError(f"the broker did not listen within {timeout} s:\n{self.log()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then kill after 10 s; returns the exit code (None: it had to be killed)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return None
        return process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def gauge(self, name: str) -> float | None:
        """A value from /metrics (None: the broker does not export it)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def tail(self, lines: int = 30) -> str:
        """The end of its log, without the connection chatter."""
        chatter = ("accepting AMQP connection", "connection opened", "connection closed")
        kept = [line for line in self.log().splitlines() if not any(word in line for word in chatter)]
        return "\n".join(kept[-lines:])

    def url_params(self, blocked_timeout: float = 30.0) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host="127.0.0.1", port=self.port, credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=5, stack_timeout=10,
            blocked_connection_timeout=blocked_timeout)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.url_params())


@contextlib.contextmanager
def running(broker: Broker) -> Iterator[Broker]:
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ------------------------------------------------------------------ a confirming publisher

class Publisher(threading.Thread):
    """Publishes numbered messages to one queue in confirm mode, one at a time, and records what
    the broker confirmed and nacked. Blocked/unblocked are seen the moment the frame arrives (on
    pika's connection implementation, ``_impl``: BlockingConnection only dispatches its own
    callbacks between calls) and through BlockingConnection's callbacks as well."""

    def __init__(self, broker: Broker, queue: str, tag: str, *, size: int, interval: float,
                 persistent: bool = True, limit: int | None = None) -> None:
        super().__init__(daemon=True, name=f"publisher-{tag}")
        self.broker, self.queue, self.tag = broker, queue, tag
        self.size, self.interval, self.limit = size, interval, limit
        self.properties = PERSISTENT if persistent else TRANSIENT
        self.sent: list[str] = []
        self.confirmed: list[str] = []
        self.nacked: list[str] = []
        self.events: list[tuple[str, str]] = []  # (blocked|unblocked, reason) via BlockingConnection
        self.blocked = threading.Event()
        self.unblocked = threading.Event()
        self.block_reason: str | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        self.block_reason = frame.method.reason
        self.unblocked.clear()
        self.blocked.set()

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.unblocked.set()

    def run(self) -> None:
        connection = None
        try:
            connection = pika.BlockingConnection(self.broker.url_params())
            connection._impl.add_on_connection_blocked_callback(self._on_blocked)
            connection._impl.add_on_connection_unblocked_callback(self._on_unblocked)
            connection.add_on_connection_blocked_callback(
                lambda _c, frame: self.events.append(("blocked", frame.method.reason)))
            connection.add_on_connection_unblocked_callback(
                lambda _c, _frame: self.events.append(("unblocked", "")))
            channel = connection.channel()
            channel.confirm_delivery()
            self.ready.set()
            number = 0
            while not self.stopping.is_set() and (self.limit is None or number < self.limit):
                name = f"{self.tag}-{number:06d}"
                number += 1
                self.sent.append(name)
                body = name.encode().ljust(self.size, b".")
                try:
                    channel.basic_publish("", self.queue, body, self.properties)
                except pika.exceptions.NackError:
                    self.nacked.append(name)
                else:
                    self.confirmed.append(name)
                connection.process_data_events(0)  # BlockingConnection's own callbacks
                if self.interval:
                    time.sleep(self.interval)
            connection.process_data_events(0)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ready.set()
            if connection is not None and connection.is_open:
                with contextlib.suppress(Exception):
                    connection.close()

    def finish(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        self.join(timeout)
        assert not self.is_alive(), f"publisher {self.tag} did not stop"

    def summary(self) -> str:
        return (f"{self.tag}: sent {len(self.sent)}, confirmed {len(self.confirmed)}, nacked {len(self.nacked)}, "
                f"events {self.events}, error {self.error!r}")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll until ``predicate()``; returns the seconds it took, fails the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def drain(broker: Broker, queue: str) -> list[str]:
    """Every message in ``queue`` (basic.get, auto-ack), by name."""
    names = []
    with contextlib.closing(broker.connect()) as connection:
        channel = connection.channel()
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return names
            names.append(body.split(b".", 1)[0].decode())


def check_exactly_once(found: list[str], confirmed: list[str], sent: list[str]) -> None:
    duplicates = sorted({name for name in found if found.count(name) > 1})
    missing = sorted(set(confirmed) - set(found))
    unknown = sorted(set(found) - set(sent))
    assert not missing, f"{len(missing)} confirmed messages lost: {missing[:10]}"
    assert not duplicates, f"{len(duplicates)} messages found more than once: {duplicates[:10]}"
    assert not unknown, f"messages never published: {unknown[:10]}"


def assert_clean_log(broker: Broker) -> None:
    text = broker.log()
    assert "Traceback" not in text, f"traceback in the broker's output:\n{text[-4000:]}"


# ------------------------------------------------------------------ 1: the disk alarm

@pytest.mark.timeout(60)
def test_disk_alarm_blocks_publishers_and_clears_when_space_is_freed(small_fs: Path, tmp_path: Path) -> None:
    limit = 16 * MIB
    broker = Broker(small_fs / "data", tmp_path / "broker.log", AMQPBROKER_DISK_FREE_LIMIT=str(limit))
    queue = "disk-alarm"
    filler = small_fs / "filler"
    with running(broker):
        with contextlib.closing(broker.connect()) as connection:
            connection.channel().queue_declare(queue, durable=True)
        # leave 3 MB above the limit: the publisher's own writes take the disk below it
        write_filler(filler, free_bytes(small_fs) - limit - 3 * MIB)
        assert free_bytes(small_fs) > limit
        publisher = Publisher(broker, queue, "d", size=16 * 1024, interval=0.002)
        publisher.start()
        try:
            assert publisher.blocked.wait(20), f"never blocked; {publisher.summary()}"
            assert publisher.block_reason == DISK_REASON, publisher.summary()
            assert free_bytes(small_fs) < limit
            disk_gauge_on = broker.gauge(DISK_GAUGE)
            assert disk_gauge_on in (None, 1.0)  # checked where the broker exports it
            # publishing stalls while the alarm is on: nothing more confirmed (once the publish that
            # was already taken when the alarm went on is confirmed), nothing nacked
            time.sleep(0.5)
            stalled_at = len(publisher.confirmed)
            time.sleep(1.5)
            assert len(publisher.confirmed) == stalled_at, publisher.summary()
            assert not publisher.nacked, publisher.summary()
            assert broker.alive()
            filler.unlink()
            freed = time.monotonic()
            assert publisher.unblocked.wait(10), (f"the disk alarm did not clear; {publisher.summary()}; "
                                                  f"free {free_bytes(small_fs)}\n{broker.tail()}")
            cleared_after = time.monotonic() - freed
            wait_for(lambda: len(publisher.confirmed) >= stalled_at + 50, 15, "publishing to resume")
            assert broker.gauge(DISK_GAUGE) in (None, 0.0)
        finally:
            filler.unlink(missing_ok=True)  # a failed check must not leave the publisher blocked
            publisher.finish()
        assert publisher.error is None, publisher.summary()
        assert not publisher.nacked, publisher.summary()
        assert publisher.events == [("blocked", DISK_REASON), ("unblocked", "")], publisher.summary()
        found = drain(broker, queue)
        check_exactly_once(found, publisher.confirmed, publisher.sent)
        assert broker.alive()
    assert_clean_log(broker)
    assert "store alarm" not in broker.log(), "the store failed: the disk alarm came too late"
    print(f"\ndisk alarm ({DISK_GAUGE} while blocked: {disk_gauge_on}): blocked after {stalled_at} confirmed, "
          f"cleared {cleared_after:.2f} s after the filler went; {publisher.summary()}; {len(found)} in the queue")


# ------------------------------------------------------------------ 2: the store alarm (ENOSPC)

@pytest.mark.timeout(60)
def test_full_disk_store_alarm_nacks_then_recovers_and_keeps_confirmed(small_fs: Path, tmp_path: Path) -> None:
    broker = Broker(small_fs / "data", tmp_path / "broker.log", AMQPBROKER_DISK_FREE_LIMIT="0")
    durable, transient = "full-durable", "full-transient"
    filler = small_fs / "filler"
    with running(broker):
        with contextlib.closing(broker.connect()) as connection:
            channel = connection.channel()
            channel.queue_declare(durable, durable=True)
            channel.queue_declare(transient, durable=False)
        publisher = Publisher(broker, durable, "p", size=4096, interval=0.002)
        publisher.start()
        transient_publisher = None
        try:
            wait_for(lambda: len(publisher.confirmed) >= 30 or publisher.error, 10, "confirms before the fill")
            before_fill = len(publisher.confirmed)
            write_filler(filler, None)
            # the next persistent publish cannot be written: nacked, and the publisher blocked
            wait_for(lambda: publisher.nacked and publisher.blocked.is_set() or publisher.error, 10,
                     "a nack and connection.blocked after the disk filled")
            assert publisher.error is None, publisher.summary()
            assert publisher.block_reason == STORE_REASON, publisher.summary()
            assert broker.alive()
            store_gauge_on = broker.gauge(STORE_GAUGE)
            assert store_gauge_on in (None, 1.0)  # checked where the broker exports it
            # a transient publisher to a non-durable queue: never nacked; confirmed, or blocked
            # like every publisher while a resource alarm is on (RabbitMQ's rule)
            transient_publisher = Publisher(broker, transient, "t", size=100, interval=0, persistent=False,
                                            limit=20)
            transient_publisher.start()
            wait_for(lambda: (len(transient_publisher.confirmed) == 20 or transient_publisher.blocked.is_set()
                              or transient_publisher.error or transient_publisher.nacked),
                     10, "the transient publisher")
            time.sleep(0.2)
            assert transient_publisher.error is None, transient_publisher.summary()
            assert not transient_publisher.nacked, transient_publisher.summary()
            if transient_publisher.blocked.is_set():
                assert transient_publisher.block_reason == STORE_REASON, transient_publisher.summary()
            transient_outcome = (("blocked after " if transient_publisher.blocked.is_set() else "")
                                 + f"{len(transient_publisher.confirmed)} confirmed")
            # the broker still serves a connection that does not publish: what was confirmed transiently
            # is there to take
            with contextlib.closing(broker.connect()) as connection:
                channel = connection.channel()
                got = channel.queue_declare(transient, passive=True).method.message_count
                assert len(transient_publisher.confirmed) <= got <= len(transient_publisher.sent)
                if got:
                    method, _, body = channel.basic_get(transient, auto_ack=True)
                    assert method is not None and body.startswith(b"t-")
            confirmed_during = len(publisher.confirmed) - before_fill
            assert broker.alive()
            filler.unlink()
            freed = time.monotonic()
            # RocksDB resumes by itself (it looks every 5 s, once 32 MB, its write buffer, are free)
            assert publisher.unblocked.wait(15), (f"the store alarm did not clear; {publisher.summary()}; "
                                                  f"free {free_bytes(small_fs)}\n{broker.tail()}")
            cleared_after = time.monotonic() - freed
            nacked_at_clear = len(publisher.nacked)
            resumed_from = len(publisher.confirmed)
            wait_for(lambda: len(publisher.confirmed) >= resumed_from + 20, 10, "publishing to resume")
            assert broker.gauge(STORE_GAUGE) in (None, 0.0)
        finally:
            filler.unlink(missing_ok=True)
            publisher.finish()
            if transient_publisher is not None:
                transient_publisher.finish()
        assert publisher.error is None, publisher.summary()
        assert len(publisher.nacked) == nacked_at_clear, "nacks after the store alarm cleared"
        assert publisher.events[:1] == [("blocked", STORE_REASON)] and publisher.events[-1][0] == "unblocked", \
            publisher.summary()
        # a new connection's persistent publish is confirmed
        with contextlib.closing(broker.connect()) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish("", durable, b"after-000000".ljust(4096, b"."), PERSISTENT)
        confirmed = [*publisher.confirmed, "after-000000"]
        sent = [*publisher.sent, "after-000000"]
        assert "store alarm cleared" in broker.log()
        assert broker.stop() == 0, f"the broker did not stop cleanly:\n{broker.log()[-4000:]}"
        broker.start()  # the same data dir and port
        found = drain(broker, durable)
        check_exactly_once(found, confirmed, sent)
        with contextlib.closing(broker.connect()) as connection:  # the transient queue went with the restart
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                connection.channel().queue_declare(transient, passive=True)
    assert_clean_log(broker)
    nacked_found = len(set(found) & set(publisher.nacked))
    print(f"\nstore alarm ({STORE_GAUGE} while on: {store_gauge_on}): {before_fill} confirmed before the fill, "
          f"{confirmed_during} more while filling, {len(publisher.nacked)} nacked; transient publisher "
          f"{transient_outcome}; cleared {cleared_after:.2f} s after the filler went; {len(confirmed)} "
          f"confirmed in all, {len(found)} recovered "
          f"({nacked_found} of them nacked ones); {publisher.summary()}")
