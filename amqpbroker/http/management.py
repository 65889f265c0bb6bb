"""RabbitMQ's management HTTP API: the paths, HTTP Basic auth with user tags, and the JSON that
tools (rabbitmqadmin-style scripts, Flower, monitoring) use.

Handlers run on the broker's event loop, so they read and change broker state directly, through
the same vhost methods AMQP clients end up in; after a change, ``Broker.run_pending`` sends what
it caused (deliveries, store writes). Paths take the vhost URL-encoded (``%2F`` for ``/``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.lowlevel
from pamqp import commands
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from amqpbroker import __version__
from amqpbroker.broker.auth import is_loopback_address
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.message import Message
from amqpbroker.codec.content import encode_content_header
from amqpbroker.codec.methods import shortstr
from amqpbroker.errors import AMQPError, ReplyCode
from amqpbroker.http import views
from amqpbroker.protocol.connection import AuthenticationFailed
from amqpbroker.server.memory import resident_bytes

__all__ = ["management_app"]

ADMIN = "administrator"
_SLICE = 500  # queues turned into JSON between two looks at other work
_PAGE = os.path.join(os.path.dirname(__file__), "static", "index.html")  # the web UI
_MONITORING_TAGS = {"administrator", "monitoring", "management", "policymaker"}
Handler = Callable[[Request], Awaitable[Response]]


class HTTPError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def _not_found() -> HTTPError:
    return HTTPError(404, "Object Not Found", "Not Found")


def management_app(broker: Broker, listeners: list[dict[str, Any]], memory_limit: int | None = None) -> Any:
    api = _Api(broker, listeners, memory_limit)
    async def page(request: Request) -> Response:
        return FileResponse(_PAGE, media_type="text/html")

    routes = [
        Route("/", page),
        Route("/api/overview", api.overview),
        Route("/api/whoami", api.whoami),
        Route("/api/nodes", api.nodes),
        Route("/api/vhosts", api.vhosts),
        Route("/api/vhosts/{vhost}", api.vhost),
        Route("/api/users", api.users),
        Route("/api/users/{name}", api.user),
        Route("/api/permissions", api.permissions),
        Route("/api/policies", api.policies),
        Route("/api/policies/{vhost}", api.policies),
        Route("/api/queues", api.queues),
        Route("/api/queues/{vhost}", api.queues),
        Route("/api/queues/{vhost}/{name}", api.queue, methods=["GET", "PUT", "DELETE"]),
        Route("/api/queues/{vhost}/{name}/contents", api.purge, methods=["DELETE"]),
        Route("/api/queues/{vhost}/{name}/get", api.get_messages, methods=["POST"]),
        Route("/api/queues/{vhost}/{name}/bindings", api.queue_bindings),
        Route("/api/exchanges", api.exchanges),
        Route("/api/exchanges/{vhost}", api.exchanges),
        Route("/api/exchanges/{vhost}/{name}", api.exchange, methods=["GET", "PUT", "DELETE"]),
        Route("/api/exchanges/{vhost}/{name}/publish", api.publish, methods=["POST"]),
        Route("/api/bindings", api.bindings),
        Route("/api/bindings/{vhost}", api.bindings),
        Route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", api.bind, methods=["GET", "POST"]),
        Route("/api/connections", api.connections),
        Route("/api/connections/{name}", api.connection, methods=["GET", "DELETE"]),
        Route("/api/channels", api.channels),
        Route("/api/consumers", api.consumers),
        Route("/api/consumers/{vhost}", api.consumers),
        Route("/api/definitions", api.definitions, methods=["GET", "POST"]),
        Route("/api/health/checks/alarms", api.alarms),
        Route("/api/aliveness-test/{vhost}", api.aliveness),
    ]
    return _KeepEncodedSlashes(Starlette(routes=routes))


class _KeepEncodedSlashes:
    """Route on the raw path with ``%2F`` kept, so ``/api/queues/%2F/q`` finds vhost ``/``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("raw_path"):
            raw = scope["raw_path"].decode("latin-1").split("?", 1)[0]
            scope = {**scope, "path": unquote(re.sub("%2[Ff]", "%252F", raw))}
        await self.app(scope, receive, send)


def _handler(*, admin: bool = False) -> Callable[[Callable[..., Any]], Handler]:
    """Authenticate (HTTP Basic), check the tag, turn errors into RabbitMQ's JSON answers."""

    def wrap(method: Callable[..., Any]) -> Handler:
        async def handle(self: _Api, request: Request) -> Response:
            try:
                user = self._login(request)
                if admin and ADMIN not in user.tags:
                    raise HTTPError(401, "not_authorised", "Not administrator user")
                result = await method(self, request, user)
            except HTTPError as exc:
                # a script (the web UI) handles a 401 itself: no browser login prompt for it
                challenge = exc.status == 401 and "x-requested-with" not in request.headers
                headers = {"WWW-Authenticate": 'Basic realm="RabbitMQ Management"'} if challenge else None
                return JSONResponse({"error": exc.error, "reason": exc.reason}, exc.status, headers)
            except AMQPError as exc:  # what an AMQP client would have got as a channel or connection close
                status = 404 if exc.reply_code == ReplyCode.NOT_FOUND else 400
                return JSONResponse({"error": "bad_request" if status == 400 else "Object Not Found",
                                     "reason": exc.reply_text.partition(" - ")[2] or exc.reply_text}, status)
            finally:
                self.broker.run_pending()
            return result if isinstance(result, Response) else _json(result, request)
        return handle
    return wrap


class _Api:
    def __init__(self, broker: Broker, listeners: list[dict[str, Any]], memory_limit: int | None) -> None:
        self.broker = broker
        self.listeners = listeners
        self.memory_limit = memory_limit

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
        try:
            user = self.broker.users.check(name, password, from_loopback=is_loopback_address(host))
        except AuthenticationFailed:
            raise HTTPError(401, "not_authorised", "Login failed") from None
        if not _MONITORING_TAGS & set(user.tags):
            raise HTTPError(401, "not_authorised", "Not management user")
        return user

    def _vhost(self, request: Request) -> Any:
        vhost = self.broker.vhosts.get(unquote(request.path_params["vhost"]))
        if vhost is None:
            raise _not_found()
        return vhost

    def _vhosts(self, request: Request) -> list[Any]:
        return [self._vhost(request)] if "vhost" in request.path_params else list(self.broker.vhosts.values())

    @staticmethod
    def _name(request: Request, key: str = "name") -> str:
        return unquote(request.path_params[key])

    def _exchange_name(self, request: Request, key: str = "name") -> str:
        """``amq.default`` stands for the default exchange (whose name is empty) in paths."""
        name = self._name(request, key)
        return "" if name == "amq.default" else name

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        data = await request.body()
        if not data:
            return {}
        try:
            body = json.loads(data)
        except ValueError:
            raise HTTPError(400, "bad_request", "Invalid JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "bad_request", "Expected a JSON object")
        return body

    # ------------------------------------------------------------ overview, node, users

    @_handler()
    async def overview(self, request: Request, user: Any) -> Any:
        return views.overview(self.broker, self.listeners)

    @_handler()
    async def whoami(self, request: Request, user: Any) -> Any:
        return {"name": user.name, "tags": list(user.tags)}

    @_handler()
    async def nodes(self, request: Request, user: Any) -> Any:
        return [views.node_view(self.broker, resident_bytes(), self.memory_limit)]

    @_handler()
    async def vhosts(self, request: Request, user: Any) -> Any:
        return [views.vhost_view(self.broker, name) for name in self.broker.vhosts]

    @_handler()
    async def vhost(self, request: Request, user: Any) -> Any:
        return views.vhost_view(self.broker, self._vhost(request).name)

    @_handler(admin=True)
    async def users(self, request: Request, user: Any) -> Any:
        return [views.user_view(each) for each in self.broker.users.users.values()]

    @_handler(admin=True)
    async def user(self, request: Request, user: Any) -> Any:
        found = self.broker.users.users.get(self._name(request))
        if found is None:
            raise _not_found()
        return views.user_view(found)

    @_handler(admin=True)
    async def permissions(self, request: Request, user: Any) -> Any:
        return [{"user": each.name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                for each in self.broker.users.users.values() for vhost in sorted(each.vhosts)]

    @_handler()
    async def policies(self, request: Request, user: Any) -> Any:
        return []  # policies are not supported yet: none are in effect

    # ------------------------------------------------------------ queues

    @_handler()
    async def queues(self, request: Request, user: Any) -> Any:
        """Every queue; built in slices, letting AMQP traffic in between, so that ten thousand
        queues do not stall the broker."""
        snapshot = [(vhost.name, queue) for vhost in self._vhosts(request) for queue in vhost.queues.values()]
        result = []
        for start in range(0, len(snapshot), _SLICE):
            result.extend(views.queue_view(vhost, queue) for vhost, queue in snapshot[start:start + _SLICE]
                          if not queue.deleted)
            await anyio.lowlevel.checkpoint()
        return result

    @_handler()
    async def queue(self, request: Request, user: Any) -> Any:
        vhost, name = self._vhost(request), self._name(request)
        if request.method == "PUT":
            _require_admin(user)
            body = await self._body(request)
            existed = name in vhost.queues
            _declare_queue(vhost, name, body)
            return Response(status_code=204 if existed else 201)
        queue = vhost.queues.get(name)
        if queue is None:
            raise _not_found()
        if request.method == "DELETE":
            _require_admin(user)
            vhost.delete_queue(name, if_unused=request.query_params.get("if-unused") == "true",
                               if_empty=request.query_params.get("if-empty") == "true", owner=queue.exclusive_owner)
            return Response(status_code=204)
        return views.queue_view(vhost.name, queue)

    @_handler(admin=True)
    async def purge(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request)
        queue = vhost.queues.get(self._name(request))
        if queue is None:
            raise _not_found()
        queue.purge()
        return Response(status_code=204)

    @_handler(admin=True)
    async def get_messages(self, request: Request, user: Any) -> Any:
        """``POST .../get``: take up to ``count`` messages, then requeue or drop them (``ackmode``)."""
        vhost = self._vhost(request)
        queue = vhost.queues.get(self._name(request))
        if queue is None:
            raise _not_found()
        body = await self._body(request)
        count = int(body.get("count", 1))
        ackmode = body.get("ackmode", "ack_requeue_true")
        encoding = body.get("encoding", "auto")
        truncate = body.get("truncate")
        taken = []
        for _ in range(count):
            entry = queue.get()
            if entry is None:
                break
            taken.append(entry)
        answers = []
        for index, (_, message, redelivered) in enumerate(taken):
            payload = message.body if truncate is None else message.body[:int(truncate)]
            try:
                text = payload.decode() if encoding == "auto" else None
            except UnicodeDecodeError:
                text = None
            answers.append({
                "payload_bytes": len(message.body), "redelivered": redelivered, "exchange": message.exchange,
                "routing_key": message.routing_key, "message_count": queue.message_count + len(taken) - index - 1,
                "properties": _properties(message),
                "payload": text if text is not None else base64.b64encode(payload).decode(),
                "payload_encoding": "string" if text is not None else "base64",
            })
        if ackmode.endswith("requeue_true"):
            queue.requeue(taken)
        else:
            for entry in taken:
                queue.discard(entry, reason="rejected" if ackmode.startswith("reject") else None)
        return answers

    @_handler()
    async def queue_bindings(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request)
        name = self._name(request)
        if name not in vhost.queues:
            raise _not_found()
        return [view for view in views.binding_views(self.broker, vhost.name)
                if view["destination_type"] == "queue" and view["destination"] == name]

    # ------------------------------------------------------------ exchanges and bindings

    @_handler()
    async def exchanges(self, request: Request, user: Any) -> Any:
        return [views.exchange_view(vhost.name, exchange) for vhost in self._vhosts(request)
                for exchange in vhost.exchanges.values()]

    @_handler()
    async def exchange(self, request: Request, user: Any) -> Any:
        vhost, name = self._vhost(request), self._exchange_name(request)
        if request.method == "PUT":
            _require_admin(user)
            body = await self._body(request)
            existed = name in vhost.exchanges
            _declare_exchange(vhost, name, body)
            return Response(status_code=204 if existed else 201)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise _not_found()
        if request.method == "DELETE":
            _require_admin(user)
            vhost.delete_exchange(name, if_unused=request.query_params.get("if-unused") == "true")
            return Response(status_code=204)
        return views.exchange_view(vhost.name, exchange)

    @_handler(admin=True)
    async def publish(self, request: Request, user: Any) -> Any:
        vhost, name = self._vhost(request), self._exchange_name(request)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise _not_found()
        body = await self._body(request)
        payload = body.get("payload", "")
        data = base64.b64decode(payload) if body.get("payload_encoding") == "base64" else str(payload).encode()
        key = str(body.get("routing_key", ""))
        properties = _amqp_properties(body.get("properties") or {})
        message = Message(name, key, shortstr(name) + shortstr(key), encode_content_header(len(data), properties), data)
        queues = vhost.route(exchange, key, message)
        for queue in queues:
            queue.enqueue(message)
        return {"routed": bool(queues)}

    @_handler()
    async def bindings(self, request: Request, user: Any) -> Any:
        return views.binding_views(self.broker, self._vhost(request).name if "vhost" in request.path_params else None)

    @_handler()
    async def bind(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request)
        source, destination = self._name(request, "source"), self._name(request, "destination")
        kind = request.path_params["kind"]
        if kind not in ("q", "e"):
            raise _not_found()
        if request.method == "POST":
            _require_admin(user)
            body = await self._body(request)
            key, arguments = str(body.get("routing_key", "")), dict(body.get("arguments") or {})
            if kind == "q":
                vhost.bind_queue(destination, source, key, arguments, owner=None)
            else:
                vhost.bind_exchange(destination, source, key, arguments)
            return Response(status_code=201)
        wanted = "queue" if kind == "q" else "exchange"
        return [view for view in views.binding_views(self.broker, vhost.name)
                if view["source"] == source and view["destination"] == destination
                and view["destination_type"] == wanted]

    # ------------------------------------------------------------ connections, channels, consumers

    @_handler()
    async def connections(self, request: Request, user: Any) -> Any:
        return [views.connection_view(session) for session in self.broker.sessions]

    @_handler()
    async def connection(self, request: Request, user: Any) -> Any:
        name = self._name(request)
        session = next((each for each in self.broker.sessions if each.name == name), None)
        if session is None:
            raise _not_found()
        if request.method == "DELETE":
            _require_admin(user)
            reason = request.headers.get("x-reason", "Closed via management plugin")
            session.close(ReplyCode.CONNECTION_FORCED, f"CONNECTION_FORCED - {reason}")
            return Response(status_code=204)
        return views.connection_view(session)

    @_handler()
    async def channels(self, request: Request, user: Any) -> Any:
        return views.channel_views(self.broker)

    @_handler()
    async def consumers(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request).name if "vhost" in request.path_params else None
        return [view for view in views.consumer_views(self.broker)
                if vhost is None or view["queue"]["vhost"] == vhost]

    # ------------------------------------------------------------ definitions and health

    @_handler(admin=True)
    async def definitions(self, request: Request, user: Any) -> Any:
        if request.method == "POST":
            self._import(await self._body(request))
            return Response(status_code=204)
        queues, exchanges = [], []
        for vhost in self.broker.vhosts.values():
            for queue in vhost.queues.values():
                if queue.durable and not queue.exclusive:
                    view = views.queue_view(vhost.name, queue)
                    queues.append({key: view[key] for key in ("name", "vhost", "durable", "auto_delete", "arguments")})
            for exchange in vhost.exchanges.values():
                if exchange.name and not exchange.name.startswith("amq."):
                    view = views.exchange_view(vhost.name, exchange)
                    exchanges.append({key: view[key] for key in ("name", "vhost", "type", "durable", "auto_delete",
                                                                 "internal", "arguments")})
        bindings = [{key: view[key] for key in ("source", "vhost", "destination", "destination_type",
                                                 "routing_key", "arguments")}
                    for view in views.binding_views(self.broker) if view["source"]]
        return {"rabbit_version": __version__, "product_name": "amqpbroker",
                "users": [{"name": each.name, "tags": ",".join(each.tags), "limits": {}}
                          for each in self.broker.users.users.values()],
                "vhosts": [{"name": name} for name in self.broker.vhosts],
                "permissions": [{"user": each.name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
                                for each in self.broker.users.users.values() for vhost in sorted(each.vhosts)],
                "policies": [], "queues": queues, "exchanges": exchanges, "bindings": bindings}

    def _import(self, definitions: dict[str, Any]) -> None:
        """Exchanges, queues, then bindings, as RabbitMQ imports them (users and vhosts: later)."""
        for item in definitions.get("exchanges", []):
            _declare_exchange(self._vhost_named(item.get("vhost", "/")), item["name"], item)
        for item in definitions.get("queues", []):
            _declare_queue(self._vhost_named(item.get("vhost", "/")), item["name"], item)
        for item in definitions.get("bindings", []):
            vhost = self._vhost_named(item.get("vhost", "/"))
            arguments = dict(item.get("arguments") or {})
            if item.get("destination_type", "queue") == "queue":
                vhost.bind_queue(item["destination"], item["source"], item.get("routing_key", ""), arguments, owner=None)
            else:
                vhost.bind_exchange(item["destination"], item["source"], item.get("routing_key", ""), arguments)

    def _vhost_named(self, name: str) -> Any:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise HTTPError(400, "bad_request", f"vhost '{name}' does not exist")
        return vhost

    @_handler()
    async def alarms(self, request: Request, user: Any) -> Any:
        if self.broker.memory_alarm:
            return JSONResponse({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                                 "alarms": [{"node": views.NODE, "resource": "memory"}]}, 503)
        return {"status": "ok"}

    @_handler()
    async def aliveness(self, request: Request, user: Any) -> Any:
        """Declare ``aliveness-test``, publish to it through the default exchange, get it back."""
        vhost = self._vhost(request)
        queue = vhost.declare_queue("aliveness-test", passive=False, durable=False, exclusive=False,
                                    auto_delete=False, arguments={}, owner=None)
        body = b"test_message"
        message = Message("", queue.name, shortstr("") + shortstr(queue.name), encode_content_header(len(body)), body)
        queue.enqueue(message)
        entry = queue.get()
        if entry is None or entry[1].body != body:
            return JSONResponse({"status": "failed", "reason": "the test message did not come back"}, 503)
        queue.discard(entry)
        return {"status": "ok"}


# ------------------------------------------------------------------ declares from JSON

def _declare_queue(vhost: Any, name: str, body: dict[str, Any]) -> None:
    """A queue as a PUT body or a definitions entry describes it (durable unless it says not)."""
    vhost.declare_queue(name, passive=False, durable=bool(body.get("durable", True)), exclusive=False,
                        auto_delete=bool(body.get("auto_delete", False)),
                        arguments=dict(body.get("arguments") or {}), owner=None)


def _declare_exchange(vhost: Any, name: str, body: dict[str, Any]) -> None:
    vhost.declare_exchange(name, str(body.get("type", "direct")), passive=False,
                           durable=bool(body.get("durable", True)), auto_delete=bool(body.get("auto_delete", False)),
                           internal=bool(body.get("internal", False)), arguments=dict(body.get("arguments") or {}))


# ------------------------------------------------------------------ shapes of answers

def _json(result: Any, request: Request) -> Response:
    """Lists can be sorted (``sort``, ``sort_reverse``), cut to ``columns`` and paged
    (``page``, ``page_size``, ``name``, ``use_regex``), as the management API does."""
    query = request.query_params
    if isinstance(result, list):
        if "name" in query and "page" in query:
            pattern = query["name"]
            match = (lambda name: re.search(pattern, name)) if query.get("use_regex") == "true" \
                else (lambda name: pattern in name)
            filtered = [item for item in result if match(str(item.get("name", "")))]
        else:
            filtered = result
        sort = query.get("sort")
        if sort:
            filtered = sorted(filtered, key=lambda item: _sort_key(_dig(item, sort)),
                              reverse=query.get("sort_reverse") == "true")
        if "columns" in query:
            columns = [column for column in query["columns"].split(",") if column]
            filtered = [_columns(item, columns) for item in filtered]
        if "page" in query:
            page = max(int(query["page"]), 1)
            size = max(min(int(query.get("page_size", 100)), 500), 1)
            count = max((len(filtered) + size - 1) // size, 1)
            return JSONResponse({"filtered_count": len(filtered), "item_count": len(filtered[(page - 1) * size:page * size]),
                                 "items": filtered[(page - 1) * size:page * size], "page": page,
                                 "page_count": count, "page_size": size, "total_count": len(result)})
        return JSONResponse(filtered)
    if isinstance(result, dict) and "columns" in query:
        result = _columns(result, [column for column in query["columns"].split(",") if column])
    return JSONResponse(result)


def _dig(item: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def _sort_key(value: Any) -> tuple:
    return (value is None, value if isinstance(value, (int, float)) else str(value))


def _columns(item: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in columns:
        value = _dig(item, column)
        target = out
        parts = column.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _properties(message: Message) -> dict[str, Any]:
    properties = message.properties
    out = {}
    for key in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
                "expiration", "message_id", "timestamp", "type", "user_id", "app_id"):
        value = getattr(properties, key, None)
        if value is not None:
            out[key] = value if not hasattr(value, "timestamp") else int(value.timestamp())
    if properties.headers:
        out["headers"] = views._json_safe(properties.headers)
    return out


def _amqp_properties(given: dict[str, Any]) -> commands.Basic.Properties:
    allowed = {"content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
               "reply_to", "expiration", "message_id", "type", "user_id", "app_id"}
    unknown = set(given) - allowed
    if unknown:
        raise HTTPError(400, "bad_request", f"unknown properties: {', '.join(sorted(unknown))}")
    return commands.Basic.Properties(**given)


def _require_admin(user: Any) -> None:
    if ADMIN not in user.tags:
        raise HTTPError(401, "not_authorised", "Not administrator user")
