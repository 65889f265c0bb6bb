"""pytest plugin: an ``amqp_broker`` fixture that runs amqpbroker for a test session.

Registered through the ``pytest11`` entry point, so any project that installs amqpbroker can write::

    def test_roundtrip(amqp_broker):
        connection = pika.BlockingConnection(pika.URLParameters(amqp_broker))

The broker runs as a subprocess of the test run (the same Python), on a free port of 127.0.0.1,
with a temporary data directory; the fixture yields its URL (``amqp://guest:guest@127.0.0.1:PORT/``)
and stops the broker when the session ends. Its management API and Prometheus endpoint listen on
free ports too: ``amqp_broker_endpoints`` gives all three URLs. To start it with other settings,
override the ``amqp_broker_args`` fixture in a ``conftest.py`` (any of ``amqpbroker --help``'s
flags)::

    @pytest.fixture(scope="session")
    def amqp_broker_args():
        return ["--compatibility", "4.3"]
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["run_broker", "free_port", "BrokerEndpoints", "amqp_broker", "amqp_broker_args", "amqp_broker_endpoints",
           "amqp_broker_with_management"]


@dataclass(frozen=True)
class BrokerEndpoints:
    """Where the session's broker answers (guest/guest everywhere)."""

    amqp_url: str  # amqp://guest:guest@127.0.0.1:PORT/
    management_url: str  # http://127.0.0.1:PORT (the management API under /api, the web UI at /)
    metrics_url: str  # http://127.0.0.1:PORT/metrics (Prometheus)


_PORTS = range(20000, 32768)  # below Linux's ephemeral range (32768-60999), where clients' sockets go
_CLAIMS = os.path.join(tempfile.gettempdir(), "amqpbroker-test-ports")
_next_port: list[int] = []


def free_port() -> int:
    """A port free on 127.0.0.1 now, and claimed for this process: under pytest-xdist (and in the
    pytest runs tests start) several processes pick ports at once, and a port one of them chose
    but had not bound yet must not go to another. A claim is a file named after the port holding
    the claiming process's id (``$TMPDIR/amqpbroker-test-ports``); a dead process's claims are
    taken over. Outside pytest-xdist the system picks the port."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _system_port()
    if not _next_port:  # each process walks the range from its own place
        _next_port.append(os.getpid() * 7919 % len(_PORTS))
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port[0]]
        _next_port[0] = (_next_port[0] + 1) % len(_PORTS)
        if _bindable(port) and _claim(port):
            return port
    return _system_port()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _claim(port: int) -> bool:
    os.makedirs(_CLAIMS, exist_ok=True)
    path = os.path.join(_CLAIMS, str(port))
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _claimant_alive(path):
                return False
            with contextlib.suppress(OSError):
                os.unlink(path)  # (a dead process's claim; if another took it over first, O_EXCL says so)
            continue
        with os.fdopen(descriptor, "w") as claim:
            claim.write(str(os.getpid()))
        return True
    return False


def _claimant_alive(path: str) -> bool:
    try:
        with open(path) as claim:
            pid = int(claim.read() or 0)
    except (OSError, ValueError):
        return True  # being written: taken
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _system_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def _wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"amqpbroker exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"amqpbroker did not listen on port {port} within {timeout} s")


@contextlib.contextmanager
def run_broker(*extra_args: str, port: int | None = None, data_dir: str | None = None,
               timeout: float = 20.0) -> Iterator[str]:
    """Run amqpbroker in a subprocess and yield its AMQP URL; stop it on exit (SIGTERM, then kill)."""
    port = port or free_port()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="amqpbroker-"))
        args = [sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", data_dir, "--prometheus-port", "0", "--management-port", "0", *extra_args]
        process = subprocess.Popen(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_for_port(port, process, timeout)
            yield f"amqp://guest:guest@127.0.0.1:{port}/"
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="session")
def amqp_broker_args() -> list[str]:
    """Extra ``amqpbroker`` flags for the session's broker: none; override it to add some."""
    return []


@pytest.fixture(scope="session")
def amqp_broker_endpoints(amqp_broker_args: list[str]) -> Iterator[BrokerEndpoints]:
    """An amqpbroker started for this test session, with its management API and /metrics, all
    on free ports of 127.0.0.1."""
    management_port, metrics_port = free_port(), free_port()
    with run_broker("--management-port", str(management_port), "--prometheus-port", str(metrics_port),
                    *amqp_broker_args) as url:
        for port, what in ((management_port, "management API"), (metrics_port, "Prometheus endpoint")):
            _wait_for_listener(port, what)
        yield BrokerEndpoints(url, f"http://127.0.0.1:{management_port}", f"http://127.0.0.1:{metrics_port}/metrics")


@pytest.fixture(scope="session")
def amqp_broker_with_management(amqp_broker_endpoints: BrokerEndpoints) -> tuple[str, str]:
    """The session's broker: its AMQP URL and its management API's base URL."""
    return amqp_broker_endpoints.amqp_url, amqp_broker_endpoints.management_url


@pytest.fixture(scope="session")
def amqp_broker(amqp_broker_endpoints: BrokerEndpoints) -> str:
    """The URL of an amqpbroker started for this test session on a free port."""
    return amqp_broker_endpoints.amqp_url


def _wait_for_listener(port: int, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"amqpbroker's {what} did not listen on port {port} within {timeout} s")
