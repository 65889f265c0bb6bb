"""What every management API handler shares: HTTP Basic login with user tags, the lookups of
path parameters, and the turning of every failure into RabbitMQ's JSON answer.

``@handler()`` wraps an ``async def method(self, request, user)`` of an :class:`ApiBase`
subclass: it logs the user in, checks the tag, runs the method, shapes a plain result as JSON
(sorting, filtering and paging through ``listing``), and answers ``HTTPError``, ``AMQPError`` and
anything unexpected in RabbitMQ's ``{"error", "reason"}`` shape. After every request the broker
sends what the change caused (``Broker.run_pending``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from amqpbroker.broker.auth import is_loopback_address
from amqpbroker.broker.broker import Broker
from amqpbroker.codec.tables import TableError
from amqpbroker.errors import AMQPError, ReplyCode, log_internal_error
from amqpbroker.http.errors import HTTPError, bad_request, not_found
from amqpbroker.http.guard import RequestGuard
from amqpbroker.http.listing import Lister
from amqpbroker.protocol.connection import AuthenticationFailed

__all__ = ["ADMIN", "ApiBase", "handler", "Handler"]

log = logging.getLogger("amqpbroker.http")

ADMIN = "administrator"
MONITORING_TAGS = {"administrator", "monitoring", "management", "policymaker"}
SEES_ALL_TAGS = {"administrator", "monitoring"}
Handler = Callable[[Request], Awaitable[Response]]


def handler(*, admin: bool = False) -> Callable[[Callable[..., Any]], Handler]:
    """Authenticate (HTTP Basic), check the tag, turn errors into RabbitMQ's JSON answers."""

    def wrap(method: Callable[..., Any]) -> Handler:
        async def handle(self: ApiBase, request: Request) -> Response:
            try:
                self.guard.check_request(request)
                self.guard.check_body(request)
                user = self._login(request)
                request.state.user = user  # (what it may see: _vhost, _vhosts, _permit)
                if admin and ADMIN not in user.tags:
                    raise HTTPError(401, "not_authorised", "Not administrator user")
                result = await method(self, request, user)
                if not isinstance(result, Response):
                    result = JSONResponse(await self.lister.shape(result, request.query_params))
            except HTTPError as exc:
                return error_response(request, exc)
            except AMQPError as exc:  # what an AMQP client would have got as a channel or connection close
                return error_response(request, amqp_error(exc))
            except TableError as exc:  # a value AMQP cannot carry (too deep, an integer past 64 bits)
                return error_response(request, bad_request(str(exc)))
            except Exception as exc:  # a bug: logged, answered, and the broker goes on
                log_internal_error(log, f"management API {request.method} {request.url.path}", exc)
                return JSONResponse({"error": "internal_server_error", "reason": "Internal Server Error"}, 500)
            finally:
                self.broker.run_pending()
            return result
        return handle
    return wrap


def error_response(request: Request, exc: HTTPError) -> Response:
    # a script (the web UI) handles a 401 itself: no browser login prompt for it
    challenge = exc.status == 401 and "x-requested-with" not in request.headers
    headers = {"WWW-Authenticate": 'Basic realm="RabbitMQ Management"'} if challenge else None
    return JSONResponse({"error": exc.error, "reason": exc.reason}, exc.status, headers)


def amqp_error(exc: AMQPError) -> HTTPError:
    if exc.reply_code == ReplyCode.NOT_FOUND:
        return HTTPError(404, "Object Not Found", exc.reply_text.partition(" - ")[2] or exc.reply_text)
    return bad_request(exc.reply_text.partition(" - ")[2] or exc.reply_text)


class ApiBase:
    def __init__(self, broker: Broker, listeners: list[dict[str, Any]], memory_limit: int | None,
                 guard: RequestGuard | None = None) -> None:
        self.guard = guard if guard is not None else RequestGuard()
        self.broker = broker
        self.listeners = listeners
        self.memory_limit = memory_limit
        self.lister = Lister()

    # ------------------------------------------------------------ helpers

    def _login(self, request: Request) -> Any:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise HTTPError(401, "not_authorised", "Not_Authorized")
        try:
            name, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise HTTPError(401, "not_authorised", "Not_Authorized") from None
        host = request.client.host if request.client else ""
        self.guard.check_login_rate(host)
        try:
            user = self.broker.users.check(name, password, from_loopback=is_loopback_address(host))
        except AuthenticationFailed:
            self.guard.login_failed(host)
            log.warning("management API login refused from %s", host)
            raise HTTPError(401, "not_authorised", "Login failed") from None
        if not MONITORING_TAGS & set(user.tags):
            raise HTTPError(401, "not_authorised", "Not management user")
        return user

    def _sees_all(self, request: Request) -> bool:
        """Administrators and monitoring users see every vhost and connection; management and
        policymaker users only the vhosts they have a permission on, and their own connections."""
        return bool(SEES_ALL_TAGS & set(request.state.user.tags))

    def _may_see(self, request: Request, vhost_name: str) -> bool:
        return self._sees_all(request) or (request.state.user.name, vhost_name) in self.broker.users.permissions

    def _vhost(self, request: Request) -> Any:
        vhost = self.broker.vhosts.get(unquote(request.path_params["vhost"]))
        if vhost is None:
            raise not_found()
        if not self._may_see(request, vhost.name):
            raise HTTPError(401, "not_authorised", "User not authorised to access virtual host")
        return vhost

    def _vhosts(self, request: Request) -> list[Any]:
        if "vhost" in request.path_params:
            return [self._vhost(request)]
        return [vhost for vhost in self.broker.vhosts.values() if self._may_see(request, vhost.name)]

    def _permit(self, request: Request, vhost: Any, action: str, kind: str, name: str,
                routing_key: str | None = None) -> None:
        """The API user's permission, as an AMQP client's (RabbitMQ checks it for every user,
        administrators included); with ``routing_key``, on a topic exchange, its topic
        permission too (a publish: write; a binding from it: read)."""
        try:
            access = self.broker.users.access(request.state.user.name, vhost.name)
            access.check(action, kind, name)
            if routing_key is not None and access.topic_permissions:
                exchange = vhost.exchanges.get(name)
                if exchange is not None and exchange.type_name == "topic":
                    access.check_topic(action, name, routing_key)
        except AMQPError:
            raise HTTPError(401, "not_authorised", "Access refused.") from None

    @staticmethod
    def _name(request: Request, key: str = "name") -> str:
        return unquote(request.path_params[key])

    def _exchange_name(self, request: Request, key: str = "name") -> str:
        """``amq.default`` stands for the default exchange (whose name is empty) in paths."""
        name = self._name(request, key)
        return "" if name == "amq.default" else name

    def _queue(self, request: Request) -> tuple[Any, Any]:
        """The vhost and queue a path names; 404 when either is missing."""
        vhost = self._vhost(request)
        queue = vhost.queues.get(self._name(request))
        if queue is None:
            raise not_found()
        return vhost, queue
