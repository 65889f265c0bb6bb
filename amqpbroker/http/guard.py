"""What the management API refuses before it looks at credentials: requests a web page on another
site made a browser send, bodies a form can post, and a client guessing passwords.

* **Cross-site and DNS-rebinding requests.** A browser marks its requests (``Origin``,
  ``Sec-Fetch-Site``); tools (curl, rabbitmqadmin, Flower, Prometheus) send neither and are not
  concerned. A browser request must come from the API's own origin (``Sec-Fetch-Site`` not
  ``cross-site``/``same-site``, ``Origin`` equal to the ``Host`` it was sent to), and name the
  server by an IP address, ``localhost``, this machine's host name or one of
  ``management_allowed_hosts`` (``*``: any): a page whose DNS name was rebound to 127.0.0.1 is
  same-origin for the browser but names its own host.
* **Bodies** of PUT/POST/DELETE must be JSON (``Content-Type: application/json``) when present:
  an HTML form can only post ``application/x-www-form-urlencoded``, ``multipart/form-data`` or
  ``text/plain`` without a preflight, so a cross-site form post cannot reach a handler (415).
* **Failed logins** per client address: after ``FAILED_LOGINS`` in ``FAILED_LOGIN_WINDOW``
  seconds, that address gets 429 until the window has passed (successful logins do not count).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import deque
from urllib.parse import urlsplit

from starlette.requests import Request

from amqpbroker.http.errors import HTTPError

__all__ = ["RequestGuard", "FAILED_LOGINS", "FAILED_LOGIN_WINDOW"]

FAILED_LOGINS = 20
FAILED_LOGIN_WINDOW = 60.0  # seconds
_TRACKED_ADDRESSES = 10_000  # clients remembered at most (the oldest are forgotten first)


def _split_host(host: str) -> tuple[str, str]:
    """``host[:port]`` (IPv6 in brackets) -> (host name lowercased, port or "")."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest.lstrip(":")
    name, _, port = host.partition(":")
    return name, port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


class RequestGuard:
    def __init__(self, allowed_hosts: str = "") -> None:
        names = {name.strip().lower() for name in allowed_hosts.split(",") if name.strip()}
        self.any_host = "*" in names
        self.allowed_names = names | {"localhost", socket.gethostname().lower()}
        self._failures: dict[str, deque[float]] = {}

    # ------------------------------------------------------------ browsers

    def check_request(self, request: Request) -> None:
        headers = request.headers
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site")
        if origin is None and fetch_site is None:
            return  # not a browser
        if fetch_site in ("cross-site", "same-site"):
            raise HTTPError(403, "forbidden", "cross-site requests are not accepted")
        host = headers.get("host", "")
        if origin is not None and (origin == "null" or _split_host(urlsplit(origin).netloc) != _split_host(host)):
            raise HTTPError(403, "forbidden", "the request's origin is not this server")
        name = _split_host(host)[0]
        if not (self.any_host or _is_ip(name) or name in self.allowed_names or name.endswith(".localhost")):
            raise HTTPError(403, "forbidden", f"host '{name}' is not one this server answers browsers "
                                              f"for (management_allowed_hosts)")

    def check_body(self, request: Request) -> None:
        if request.method not in ("PUT", "POST", "DELETE"):
            return
        length = request.headers.get("content-length")
        has_body = (length not in (None, "0")) or "transfer-encoding" in request.headers
        if not has_body:
            return
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise HTTPError(415, "bad_request", "request bodies must be JSON (Content-Type: application/json)")

    # ------------------------------------------------------------ passwords

    def check_login_rate(self, address: str, now: float | None = None) -> None:
        failures = self._failures.get(address)
        if not failures:
            return
        now = time.monotonic() if now is None else now
        while failures and now - failures[0] > FAILED_LOGIN_WINDOW:
            failures.popleft()
        if len(failures) >= FAILED_LOGINS:
            raise HTTPError(429, "too_many_requests", "too many failed logins from this address; try later")

    def login_failed(self, address: str, now: float | None = None) -> None:
        failures = self._failures.get(address)
        if failures is None:
            if len(self._failures) >= _TRACKED_ADDRESSES:
                del self._failures[next(iter(self._failures))]
            failures = self._failures[address] = deque(maxlen=FAILED_LOGINS)
        failures.append(time.monotonic() if now is None else now)
