"""A broker subprocess on a fixed port and data dir that tests stop, kill (SIGKILL) and restart,
with helpers to talk to it through pika."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pika

from amqpbroker.testing import free_port, _wait_for_port

__all__ = ["PERSISTENT", "TRANSIENT", "BrokerProcess", "channel_of", "drain"]

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


class BrokerProcess:
    """A broker subprocess on a fixed port and data dir that tests stop, kill and restart."""

    def __init__(self, data_dir: str, env: dict[str, str] | None = None, prometheus_port: int = 0,
                 management_port: int = 0) -> None:
        self.data_dir = data_dir
        self.prometheus_port = prometheus_port  # 0: no /metrics
        self.management_port = management_port  # 0: no management API
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, *, log_level: str = "warning", capture: bool = False) -> None:
        """Start it; with ``capture`` its log goes to a file that :meth:`output` reads."""
        self._log = open(os.path.join(os.path.dirname(self.data_dir) or ".", f"broker-{self.port}.log"), "w+") \
            if capture else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.data_dir, "--log-level", log_level, "--prometheus-port", str(self.prometheus_port),
             "--management-port", str(self.management_port)],
            env=self.env,
            stderr=self._log if capture else None)
        # the HTTP endpoints start beside the AMQP listener, not before it: wait for each
        for port in (self.port, self.management_port, self.prometheus_port):
            if port:
                _wait_for_port(port, self.process, 30)

    def output(self) -> str:
        """What the broker logged (when started with ``capture``)."""
        self._log.seek(0)
        return self._log.read()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, *, crash: bool = False) -> None:
        self.kill() if crash else self.stop()
        self.start()

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url))


@contextmanager
def channel_of(broker: BrokerProcess) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = broker.connect()
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def drain(channel, queue: str) -> list[tuple[bytes, bool]]:
    got = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((body, method.redelivered))
