"""``loopback_users`` over real sockets: a broker listening on 127.0.0.1 and a client whose
connection comes from this machine's own non-loopback address (the socket bound to it before
connecting, which Linux allows for any local address), so the broker sees a remote peer.
127.0.0.2 would not do: RabbitMQ and amqpbroker both count all of 127/8 as loopback."""

from __future__ import annotations

import base64
import http.client
import socket

import pika
import pika.exceptions
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess
from tests.test_management import call


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if any."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.254.254.254", 9))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


SOURCE = _non_loopback_address()
pytestmark = pytest.mark.skipif(SOURCE is None, reason="this machine has no non-loopback IPv4 address")


@pytest.fixture
def from_outside(monkeypatch):
    """Connections this test makes to ``port`` come from SOURCE."""
    ports: set[int] = set()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def bound(sock: socket.socket, address) -> None:
        if isinstance(address, tuple) and address[1] in ports and sock.family == socket.AF_INET \
                and sock.getsockname()[1] == 0:  # (not bound yet: http.client binds source_address itself)
            sock.bind((SOURCE, 0))

    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: (bound(sock, address),
                                                                        real_connect(sock, address))[1])
    monkeypatch.setattr(socket.socket, "connect_ex", lambda sock, address: (bound(sock, address),
                                                                           real_connect_ex(sock, address))[1])
    return ports


def _login(port: int, user: str, password: str) -> None:
    parameters = pika.ConnectionParameters("127.0.0.1", port, "/", pika.PlainCredentials(user, password),
                                           connection_attempts=1)
    pika.BlockingConnection(parameters).close()


def test_guest_is_refused_from_a_remote_address_and_other_users_are_not(tmp_path, from_outside) -> None:
    broker = BrokerProcess(str(tmp_path / "data"), management_port=free_port())
    broker.start(capture=True)
    try:
        _refuses_guest_only(broker, from_outside)
    finally:
        broker.stop()


def _refuses_guest_only(broker: BrokerProcess, from_outside: set[int]) -> None:
    assert call(broker, "PUT", "/api/users/app", {"password": "pw", "tags": "administrator"})[0] == 201
    assert call(broker, "PUT", "/api/permissions/%2F/app", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    from_outside.update({broker.port, broker.management_port})
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        _login(broker.port, "guest", "guest")
    assert "403" in str(refused.value)  # RabbitMQ's answer; the reason is in the log, as there
    assert "user 'guest' can only connect via localhost" in broker.output()
    _login(broker.port, "app", "pw")
    for user, password, status in (("guest", "guest", 401), ("app", "pw", 200)):  # the management API too
        connection = http.client.HTTPConnection("127.0.0.1", broker.management_port, timeout=5,
                                                source_address=(SOURCE, 0))
        connection.request("GET", "/api/whoami", headers={
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
        assert connection.getresponse().status == status
        connection.close()


def test_loopback_users_false_lets_guest_in_from_anywhere(start_broker, from_outside) -> None:
    broker = start_broker(env={"AMQPBROKER_LOOPBACK_USERS": "false"})
    from_outside.add(broker.port)
    _login(broker.port, "guest", "guest")
