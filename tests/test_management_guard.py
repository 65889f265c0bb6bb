"""The management API against a browser on another site, form posts and password guessing."""

from __future__ import annotations

import base64
import http.client
import urllib.error
import urllib.request

import pytest

from amqpbroker.http.guard import FAILED_LOGINS, RequestGuard
from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess
from tests.test_management import call

GUEST = "Basic " + base64.b64encode(b"guest:guest").decode()


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port())


def _raw(broker: BrokerProcess, method: str, path: str, headers: dict[str, str], data: bytes | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{broker.management_port}{path}", method=method, data=data)
    for key, value in {"Authorization": GUEST, **headers}.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_cross_site_form_post_cannot_create_a_user(managed) -> None:
    """What a hostile page's <form method=post> makes a browser send (with the guest credentials
    it may have cached): refused, and no user appears."""
    form = b"password=pw&tags=administrator"
    assert _raw(managed, "PUT", "/api/users/evil", {"Content-Type": "application/x-www-form-urlencoded"}, form) == 415
    assert _raw(managed, "POST", "/api/definitions", {"Content-Type": "text/plain"}, b'{"users": []}') == 415
    assert _raw(managed, "PUT", "/api/users/evil", {"Content-Type": "application/json",
                                                     "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                b'{"password": "pw", "tags": "administrator"}') == 403
    assert call(managed, "GET", "/api/users/evil")[0] == 404


def test_a_dns_rebound_page_is_refused_and_the_own_ui_is_not(managed) -> None:
    port = managed.management_port
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}", "Sec-Fetch-Site": "same-origin"}
    assert _raw(managed, "GET", "/api/overview", rebound) == 403
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin", "X-Requested-With": "XMLHttpRequest"}
    assert _raw(managed, "GET", "/api/overview", own) == 200
    localhost = {"Host": f"localhost:{port}", "Sec-Fetch-Site": "same-origin"}
    assert _raw(managed, "GET", "/api/overview", localhost) == 200
    assert _raw(managed, "GET", "/api/overview", {"Host": f"broker.internal:{port}"}) == 200  # not a browser


def test_allowed_host_names_are_configurable() -> None:
    class Request:
        def __init__(self, headers):
            self.headers = headers
    guard = RequestGuard("broker.internal")
    guard.check_request(Request({"host": "broker.internal:15672", "sec-fetch-site": "same-origin"}))
    with pytest.raises(Exception):
        RequestGuard().check_request(Request({"host": "broker.internal:15672", "sec-fetch-site": "same-origin"}))
    RequestGuard("*").check_request(Request({"host": "anything:15672", "sec-fetch-site": "same-origin"}))


def test_password_guessing_is_slowed_to_429_per_address(managed) -> None:
    for _ in range(FAILED_LOGINS):
        assert call(managed, "GET", "/api/whoami", password="wrong")[0] == 401
    assert call(managed, "GET", "/api/whoami", password="wrong")[0] == 429
    assert call(managed, "GET", "/api/whoami")[0] == 429  # the right one too, until the window passed


def test_the_failed_login_window_passes() -> None:
    guard = RequestGuard()
    for second in range(FAILED_LOGINS):
        guard.login_failed("10.0.0.1", now=float(second))
    with pytest.raises(Exception):
        guard.check_login_rate("10.0.0.1", now=float(FAILED_LOGINS))
    guard.check_login_rate("10.0.0.2", now=float(FAILED_LOGINS))  # another address is not concerned
    guard.check_login_rate("10.0.0.1", now=FAILED_LOGINS + 61.0)


def test_a_401_challenges_a_browser_but_not_the_web_ui_s_own_calls(managed) -> None:
    def challenge(headers: dict[str, str]) -> str | None:
        connection = http.client.HTTPConnection("127.0.0.1", managed.management_port, timeout=5)
        try:
            connection.request("GET", "/api/overview", headers=headers)
            response = connection.getresponse()
            assert response.status == 401
            return response.getheader("WWW-Authenticate")
        finally:
            connection.close()
    assert challenge({}) == 'Basic realm="RabbitMQ Management"'  # as RabbitMQ: a browser asks for a login
    assert challenge({"X-Requested-With": "XMLHttpRequest"}) is None  # the page shows its own login form
