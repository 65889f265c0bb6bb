"""The broker as users run it: a subprocess, real clients, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pika
import pytest

from amqpbroker.testing import free_port, _wait_for_port
from tests.broker_process import BrokerProcess


@pytest.fixture
def broker_process(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", "0", "--management-port", "0",
         "--data-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, process, 20)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_connections_with_connection_forced(broker_process, signum) -> None:
    process, port = broker_process
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.queue_declare("", exclusive=True)
    process.send_signal(signum)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as raised:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
    assert raised.value.reply_code == 320
    assert "CONNECTION_FORCED" in raised.value.reply_text
    assert process.wait(10) == 0
    log = process.stderr.read()
    assert "connection opened" in log and "closing connections" in log


def test_one_clients_garbage_does_not_disturb_another(broker_process) -> None:
    _, port = broker_process
    good = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = good.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert raw.recv(8) == b"AMQP\x00\x00\x09\x01"
    channel.basic_publish("", queue, b"still here")
    assert channel.basic_get(queue, auto_ack=True)[2] == b"still here"
    good.close()


def test_memory_alarm_blocks_publishers_but_not_consumers(start_broker) -> None:
    """Above the watermark (here 1 000 bytes: always), a connection that published gets
    connection.blocked and is read no more; a connection that only consumes keeps going."""
    broker = start_broker(env={"AMQPBROKER_MEMORY_HIGH_WATERMARK": "1000"})
    reader = broker.connect()
    reader_channel = reader.channel()
    reader_channel.queue_declare("alarmed")
    publisher = broker.connect()
    blocked = []
    publisher.add_on_connection_blocked_callback(lambda connection, frame: blocked.append(frame.method))
    channel = publisher.channel()
    # read whole if its frames came in one read; if not, the rest waits with the connection (a
    # message half received counts as publishing, as RabbitMQ blocks at the publish method)
    channel.basic_publish("", "alarmed", b"first")
    deadline = time.monotonic() + 5
    while not blocked and time.monotonic() < deadline:
        publisher.process_data_events(time_limit=0.05)
    assert [type(method).__name__ for method in blocked] == ["Blocked"]
    assert blocked[0].reason == "low on memory"
    channel.basic_publish("", "alarmed", b"second")  # sent, never read
    publisher.process_data_events(time_limit=0.3)
    # the consuming connection is served throughout; "second" was never read
    count = reader_channel.queue_declare("alarmed", passive=True).method.message_count
    assert count in (0, 1)
    if count:
        assert reader_channel.basic_get("alarmed", auto_ack=True)[2] == b"first"


def test_diagnostics_ping_tells_whether_a_broker_answers(tmp_path) -> None:
    broker = BrokerProcess(str(tmp_path / "data"))
    broker.start()
    try:
        done = subprocess.run([sys.executable, "-m", "amqpbroker", "diagnostics", "ping", "--port", str(broker.port)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "Ping succeeded" in done.stdout
    finally:
        broker.stop()
    done = subprocess.run([sys.executable, "-m", "amqpbroker", "diagnostics", "ping", "--port", str(broker.port),
                           "--timeout", "1"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "Error: cannot reach" in done.stderr


@pytest.mark.parametrize("which", ["amqp", "management", "prometheus"])
def test_a_port_in_use_stops_start_up_with_one_line(tmp_path, which) -> None:
    """As RabbitMQ's listeners: a port that cannot be bound is a failed start, said in one line
    (no "listening on", no traceback, no broker left running without that endpoint)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    ports = {"amqp": free_port(), "management": 0, "prometheus": 0, which: port}
    try:
        done = subprocess.run([sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(ports["amqp"]),
                               "--data-dir", str(tmp_path / "data"), "--management-port", str(ports["management"]),
                               "--prometheus-port", str(ports["prometheus"])],
                              env={**os.environ, "AMQPBROKER_MANAGEMENT_HOST": "127.0.0.1",
                                   "AMQPBROKER_PROMETHEUS_HOST": "127.0.0.1"},
                              capture_output=True, text=True, timeout=30)
    finally:
        taken.close()
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f":{port}: Address already in use; refusing to start" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
