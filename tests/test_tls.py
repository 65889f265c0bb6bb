"""AMQPS: a TLS listener with certificates made at test time (trustme), real clients (pika)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time

import pika
import pika.credentials
import pika.exceptions
import pytest
import trustme

from amqpbroker.testing import free_port, _wait_for_port
from tests.broker_process import BrokerProcess
from tests.test_management import call


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca, tmp_path) -> dict[str, str]:
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("tls-user@example.com", common_name="tls-user")
    files = {"cert": tmp_path / "server.pem", "key": tmp_path / "server.key", "ca": tmp_path / "ca.pem",
             "client": tmp_path / "client.pem"}
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return {key: str(value) for key, value in files.items()}


def _tls_broker(start_broker, tls_files, prometheus_port: int = 0, **settings: str) -> tuple[BrokerProcess, int]:
    tls_port = free_port()
    env = {"AMQPBROKER_TLS_PORT": str(tls_port), "AMQPBROKER_TLS_CERTFILE": tls_files["cert"],
           "AMQPBROKER_TLS_KEYFILE": tls_files["key"], "AMQPBROKER_TLS_CAFILE": tls_files["ca"], **settings}
    broker = start_broker(env=env, management_port=free_port(), prometheus_port=prometheus_port)
    _wait_for_port(tls_port, broker.process, 10)
    return broker, tls_port


def _client_context(tls_files, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls_files["ca"])
    if with_certificate:
        context.load_cert_chain(tls_files["client"])
    return context


def _connect(port: int, context: ssl.SSLContext, credentials) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, credentials=credentials, ssl_options=pika.SSLOptions(context, "127.0.0.1"),
        connection_attempts=1, socket_timeout=5))


def test_a_client_verifying_the_server_publishes_and_gets_over_tls(start_broker, tls_files) -> None:
    broker, port = _tls_broker(start_broker, tls_files)
    with _connect(port, _client_context(tls_files, with_certificate=False),
                  pika.PlainCredentials("guest", "guest")) as connection:
        channel = connection.channel()
        channel.queue_declare("over-tls")
        channel.basic_publish("", "over-tls", b"x" * 300_000)  # several TLS records
        method, _, body = channel.basic_get("over-tls", auto_ack=True)
        assert body == b"x" * 300_000
    with broker.connect() as plain:  # the plain listener goes on beside it
        plain.channel().queue_delete("over-tls")


def test_external_login_takes_the_user_from_the_client_certificate(start_broker, tls_files) -> None:
    broker, port = _tls_broker(start_broker, tls_files, AMQPBROKER_TLS_VERIFY_PEER="true")
    call(broker, "PUT", "/api/users/tls-user", {"tags": ""})  # no password: certificate only
    call(broker, "PUT", "/api/permissions/%2F/tls-user", {"configure": ".*", "write": ".*", "read": ".*"})
    with _connect(port, _client_context(tls_files, with_certificate=True),
                  pika.credentials.ExternalCredentials()) as connection:
        connection.channel().queue_declare("", exclusive=True)
    # without a certificate, EXTERNAL is not offered and fails
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        _connect(port, _client_context(tls_files, with_certificate=False), pika.credentials.ExternalCredentials())


def test_a_required_client_certificate_refuses_clients_without_one(start_broker, tls_files) -> None:
    broker, port = _tls_broker(start_broker, tls_files, AMQPBROKER_TLS_FAIL_IF_NO_PEER_CERT="true")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        _connect(port, _client_context(tls_files, with_certificate=False), pika.PlainCredentials("guest", "guest"))
    with _connect(port, _client_context(tls_files, with_certificate=True),
                  pika.PlainCredentials("guest", "guest")) as connection:
        connection.channel()


def test_a_plain_amqp_client_on_the_tls_port_gets_a_clean_close(start_broker, tls_files) -> None:
    broker, port = _tls_broker(start_broker, tls_files)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not sock.recv(4096):  # (a TLS alert may come first)
                break
        else:
            pytest.fail("the broker kept a plain client on the TLS port open")
    with broker.connect() as connection:  # and goes on serving
        connection.channel()


def test_a_bad_tls_setting_stops_start_up_with_one_clear_line(tmp_path, tls_files) -> None:
    result = subprocess.run([sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(free_port()),
                             "--data-dir", str(tmp_path / "d"), "--management-port", "0", "--prometheus-port", "0"],
                            env={"AMQPBROKER_TLS_CERTFILE": tls_files["cert"], "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "tls_keyfile" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_management_api_and_metrics_over_https(start_broker, tls_files) -> None:
    import urllib.request
    metrics_port = free_port()
    broker, _ = _tls_broker(start_broker, tls_files, prometheus_port=metrics_port, AMQPBROKER_MANAGEMENT_TLS="true",
                            AMQPBROKER_PROMETHEUS_TLS="true")
    context = _client_context(tls_files, with_certificate=False)
    request = urllib.request.Request(f"https://127.0.0.1:{broker.management_port}/api/overview")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    with urllib.request.urlopen(request, context=context, timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"https://127.0.0.1:{metrics_port}/metrics", context=context, timeout=5) as response:
        assert b"rabbitmq_" in response.read()
    with pytest.raises(Exception):  # plain HTTP on the HTTPS port
        urllib.request.urlopen(f"http://127.0.0.1:{broker.management_port}/api/overview", timeout=5)
