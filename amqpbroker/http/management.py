"""RabbitMQ's management HTTP API: the paths, HTTP Basic auth with user tags, and the JSON that
tools (rabbitmqadmin-style scripts, Flower, monitoring) use.

Handlers run on the broker's event loop, so they read and change broker state directly, through
the same vhost methods AMQP clients end up in; after a change, ``Broker.run_pending`` sends what
it caused (deliveries, store writes). Paths take the vhost URL-encoded (``%2F`` for ``/``).

Nothing a request holds may stall or break the broker: bodies are checked field by field
(``bodies``), lists are filtered and paged off the loop where it matters (``listing``), every
value is shown as JSON that renders (``views.json_value``), and every failure is an answer in
RabbitMQ's JSON shape (``errors``), never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from typing import Any

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from amqpbroker.broker.backlog import UnackedAges
from amqpbroker.broker.broker import Broker
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.message import Message
from amqpbroker.broker.queue_types import STREAM
from amqpbroker.broker.publishing import message_ttl
from amqpbroker.codec.content import encode_content_header
from amqpbroker.codec.methods import shortstr
from amqpbroker.errors import AMQPError, ReplyCode, access_refused, precondition_failed
from amqpbroker.http import bodies, views
from amqpbroker.http.definitions import declare_exchange, declare_queue, export_definitions, import_definitions
from amqpbroker.http.history import window_of
from amqpbroker.http.admin import AdminApi, LimitsApi, PoliciesApi, admin_routes, by_method
from amqpbroker.http.parameters import ParametersApi, parameter_routes
from amqpbroker.http.errors import HTTPError, bad_request, not_found, refused
from amqpbroker.http.guard import RequestGuard
from amqpbroker.broker.access import CONFIGURE, READ, WRITE
from amqpbroker.http.handlers import ADMIN, ApiBase, handler
from amqpbroker.server.memory import resident_bytes

__all__ = ["management_app"]

log = logging.getLogger("amqpbroker.http")

_SLICE = 500  # queues turned into JSON between two looks at other work
GET_LIMIT = 10_000  # messages one POST .../get takes at most
PAGE_IN_WAIT = 1.0  # seconds a /get waits for a queue's paged-out messages to come in
_ACKMODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")
_PAGE = os.path.join(os.path.dirname(__file__), "static", "index.html")  # the web UI
_ICON = os.path.join(os.path.dirname(__file__), "static", "favicon.ico")


def management_app(broker: Broker, listeners: list[dict[str, Any]], memory_limit: int | None = None, *,
                   allowed_hosts: str = "") -> Any:
    guard = RequestGuard(allowed_hosts)
    api = _Api(broker, listeners, memory_limit, guard)
    admin = AdminApi(broker, listeners, memory_limit, guard)
    async def auth(request: Request) -> Response:
        """What a login page asks before logging in (RabbitMQ 3.10's /api/auth, no login needed):
        Basic auth only, no OAuth."""
        return JSONResponse({"enable_uaa": False, "uaa_client_id": "", "uaa_location": ""})

    async def page(request: Request) -> Response:
        return FileResponse(_PAGE, media_type="text/html")

    async def icon(request: Request) -> Response:
        return FileResponse(_ICON, media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    routes = [
        Route("/", page),
        Route("/favicon.ico", icon),
        Route("/api/overview", api.overview),
        Route("/api/whoami", api.whoami),
        Route("/api/nodes", api.nodes),
        Route("/api/vhosts", api.vhosts),
        Route("/api/vhosts/{vhost}", by_method(GET=api.vhost, PUT=admin.put_vhost, DELETE=admin.delete_vhost),
              methods=["GET", "PUT", "DELETE"]),
        Route("/api/users", api.users),
        Route("/api/users/{name}", by_method(GET=api.user, PUT=admin.put_user, DELETE=admin.delete_user),
              methods=["GET", "PUT", "DELETE"]),
        *admin_routes(admin, LimitsApi(broker, listeners, memory_limit, guard),
                      PoliciesApi(broker, listeners, memory_limit, guard)),
        *parameter_routes(ParametersApi(broker, listeners, memory_limit, guard)),
        Route("/api/permissions", api.permissions),
        Route("/api/queues", api.queues),
        Route("/api/queues/{vhost}", api.queues),
        Route("/api/queues/{vhost}/{name}", api.queue, methods=["GET", "PUT", "DELETE"]),
        Route("/api/queues/{vhost}/{name}/contents", api.purge, methods=["DELETE"]),
        Route("/api/queues/{vhost}/{name}/get", api.get_messages, methods=["POST"]),
        Route("/api/queues/{vhost}/{name}/bindings", api.queue_bindings),
        Route("/api/queues/{vhost}/{name}/retrying", api.retrying),
        Route("/api/exchanges", api.exchanges),
        Route("/api/exchanges/{vhost}", api.exchanges),
        Route("/api/exchanges/{vhost}/{name}", api.exchange, methods=["GET", "PUT", "DELETE"]),
        Route("/api/exchanges/{vhost}/{name}/publish", api.publish, methods=["POST"]),
        Route("/api/exchanges/{vhost}/{name}/delayed", api.delayed, methods=["GET", "DELETE"]),
        Route("/api/exchanges/{vhost}/{name}/bindings/{direction}", api.exchange_bindings),
        Route("/api/bindings", api.bindings),
        Route("/api/bindings/{vhost}", api.bindings),
        Route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", api.bind, methods=["GET", "POST"]),
        Route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", api.binding,
              methods=["GET", "DELETE"]),
        Route("/api/connections", api.connections),
        Route("/api/connections/{name}", api.connection, methods=["GET", "DELETE"]),
        Route("/api/channels", api.channels),
        Route("/api/consumers", api.consumers),
        Route("/api/consumers/{vhost}", api.consumers),
        Route("/api/definitions", api.definitions, methods=["GET", "POST"]),
        Route("/api/definitions/{vhost}", api.definitions, methods=["GET", "POST"]),
        Route("/api/auth", auth),
        Route("/api/health/checks/alarms", api.alarms),
        Route("/api/aliveness-test/{vhost}", api.aliveness),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _starlette_error})
    app.router.redirect_slashes = False  # never a redirect that drops credentials (_RouteOnRawPath)
    return _RouteOnRawPath(app)


class _RouteOnRawPath:
    """Route on the raw path, still percent-encoded, so that ``/api/queues/%2F/q`` finds vhost
    ``/``; each path parameter is then decoded exactly once (``_Api._name``). One trailing slash
    is ignored, as RabbitMQ's router does (``/api/queues/`` is ``/api/queues``: Flower asks for
    it), never redirected (a redirect makes clients drop the credentials in the URL)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["raw_path"].decode("latin-1").split("?", 1)[0] if scope.get("raw_path") else scope["path"]
            if len(path) > 1 and path.endswith("/"):
                path = path[:-1]
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    """No route (404) or a method the path does not take (405), in RabbitMQ's JSON shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    error = {404: ("Object Not Found", "Not Found"), 405: ("bad_request", "Method Not Allowed")}
    name, reason = error.get(status, ("bad_request", str(getattr(exc, "detail", ""))))
    return JSONResponse({"error": name, "reason": reason}, status)


class _Api(ApiBase):
    # ------------------------------------------------------------ overview, node, users

    @handler()
    async def overview(self, request: Request, user: Any) -> Any:
        windows = {"rates_window": window_of(request.query_params, "msg_rates"),
                   "lengths_window": window_of(request.query_params, "lengths")}
        if self._sees_all(request):
            return views.overview(self.broker, self.listeners, **windows)
        return views.overview(self.broker, self.listeners, self._vhosts(request), self._sessions(request), **windows)

    @handler()
    async def whoami(self, request: Request, user: Any) -> Any:
        return {"name": user.name, "tags": list(user.tags)}

    @handler()
    async def nodes(self, request: Request, user: Any) -> Any:
        return [views.node_view(self.broker, resident_bytes(), self.memory_limit)]

    @handler()
    async def vhosts(self, request: Request, user: Any) -> Any:
        return [views.vhost_view(self.broker, vhost.name) for vhost in self._vhosts(request)]

    @handler()
    async def vhost(self, request: Request, user: Any) -> Any:
        return views.vhost_view(self.broker, self._vhost(request).name)

    @handler(admin=True)
    async def users(self, request: Request, user: Any) -> Any:
        return [views.user_view(each) for each in self.broker.users.users.values()]

    @handler(admin=True)
    async def user(self, request: Request, user: Any) -> Any:
        found = self.broker.users.users.get(self._name(request))
        if found is None:
            raise not_found()
        return views.user_view(found)

    @handler(admin=True)
    async def permissions(self, request: Request, user: Any) -> Any:
        return views.permission_views(self.broker.users)

    # ------------------------------------------------------------ queues

    @handler()
    async def queues(self, request: Request, user: Any) -> Any:
        """Every queue; built in slices, letting AMQP traffic in between, so that ten thousand
        queues do not stall the broker."""
        snapshot = [(vhost.name, queue) for vhost in self._vhosts(request) for queue in vhost.queues.values()]
        wanted_type = request.query_params.get("type")  # (ours, for the web UI: classic or quorum)
        if wanted_type:
            snapshot = [(vhost, queue) for vhost, queue in snapshot if views.queue_type(queue) == wanted_type]
        ages = UnackedAges(self.broker)
        result = []
        for start in range(0, len(snapshot), _SLICE):
            result.extend(views.queue_view(vhost, queue, ages) for vhost, queue in snapshot[start:start + _SLICE]
                          if not queue.deleted)
            await anyio.lowlevel.checkpoint()
        return result

    @handler()
    async def queue(self, request: Request, user: Any) -> Any:
        vhost, name = self._vhost(request), self._name(request)
        if request.method == "PUT":
            self._permit(request, vhost, CONFIGURE, "queue", name)
            body = await bodies.json_object(request)
            existed = name in vhost.queues
            declare_queue(vhost, name, body)
            return Response(status_code=204 if existed else 201)
        queue = vhost.queues.get(name)
        if queue is None:
            raise not_found()
        if request.method == "DELETE":  # another connection's exclusive queue is refused, as in RabbitMQ
            self._permit(request, vhost, CONFIGURE, "queue", name)
            vhost.delete_queue(name, if_unused=request.query_params.get("if-unused") == "true",
                               if_empty=request.query_params.get("if-empty") == "true", owner=None)
            return Response(status_code=204)
        view = views.queue_view(vhost.name, queue, UnackedAges(self.broker))
        view["consumer_details"] = [consumer for consumer in views.consumer_views(self.broker)
                                    if consumer["queue"] == {"name": queue.name, "vhost": vhost.name}]
        return view

    @handler()
    async def purge(self, request: Request, user: Any) -> Any:
        vhost, queue = self._queue(request)
        self._permit(request, vhost, READ, "queue", queue.name)
        vhost.purge_queue(queue.name, owner=None)  # refuses another connection's exclusive queue
        return Response(status_code=204)

    @handler()
    async def get_messages(self, request: Request, user: Any) -> Any:
        """``POST .../get``: take up to ``count`` messages, then requeue or drop them (``ackmode``)."""
        vhost, queue = self._queue(request)
        self._permit(request, vhost, READ, "queue", queue.name)
        body = await bodies.json_object(request)
        count = min(bodies.integer(body, "count", 1, low=None), GET_LIMIT)
        ackmode = bodies.choice(body, "ackmode", "ack_requeue_true", _ACKMODES)
        encoding = body.get("encoding", "auto")
        if encoding not in ("auto", "base64"):
            raise bad_request("Unsupported encoding. Please use auto or base64.")
        truncate = bodies.integer(body, "truncate", None)
        try:  # as RabbitMQ's basic.get: another connection's exclusive queue is refused
            vhost.use_queue(queue.name, owner=None)
        except AMQPError as exc:
            raise refused(exc) from None
        if queue.type is STREAM:  # (RabbitMQ's answer, with basic.get's reply code)
            raise bad_request(f"540 basic.get not supported by stream queues queue '{queue.name}' "
                              f"in vhost '{vhost.name}'")
        taken = await _take(queue, count)
        answers = [_got(message, redelivered, queue.message_count + len(taken) - index - 1, encoding, truncate)
                   for index, (_, message, redelivered) in enumerate(taken)]
        if ackmode.endswith("requeue_true"):
            queue.requeue(taken)
        else:
            for entry in taken:
                queue.discard(entry, reason="rejected" if ackmode.startswith("reject") else None)
        return answers

    @handler()
    async def queue_bindings(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request)
        name = self._name(request)  # (a queue that does not exist has none)
        return [view for view in views.binding_views(self.broker, vhost.name)
                if view["destination_type"] == "queue" and view["destination"] == name]

    # ------------------------------------------------------------ exchanges and bindings

    @handler()
    async def exchanges(self, request: Request, user: Any) -> Any:
        return [views.exchange_view(vhost.name, exchange, vhost.delayed.counts.get(exchange.name, 0))
                for vhost in self._vhosts(request)
                for exchange in vhost.exchanges.values()]

    @handler()
    async def exchange(self, request: Request, user: Any) -> Any:
        vhost, name = self._vhost(request), self._exchange_name(request)
        if request.method == "PUT":
            self._permit(request, vhost, CONFIGURE, "exchange", name)
            body = await bodies.json_object(request)
            existed = name in vhost.exchanges
            declare_exchange(vhost, name, body)
            return Response(status_code=204 if existed else 201)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise not_found()
        if request.method == "DELETE":
            self._permit(request, vhost, CONFIGURE, "exchange", name)
            vhost.delete_exchange(name, if_unused=request.query_params.get("if-unused") == "true")
            return Response(status_code=204)
        return views.exchange_view(vhost.name, exchange, vhost.delayed.counts.get(name, 0))

    @handler()
    async def retrying(self, request: Request, user: Any) -> Any:
        """``GET .../retrying?count=N``: the messages backing off before their next delivery
        (``x-delayed-retry-*``), due first, with their due times and delivery counts."""
        vhost, queue = self._queue(request)
        self._permit(request, vhost, READ, "queue", queue.name)
        count = self._count(request)
        first = sorted(queue.retrying)[:count]
        return {"messages": len(queue.retrying),
                "next_due": _milliseconds(min(queue.retrying)[0]) if queue.retrying else None,
                "held": [{"due": _milliseconds(due), "delivery_count": queue.delivery_counts.get(seq, 0),
                          **_got(entry[1], True, 0, "auto", None)} for due, seq, entry in first]}

    @staticmethod
    def _count(request: Request) -> int:
        try:
            return max(0, min(int(request.query_params.get("count", "10")), GET_LIMIT))
        except ValueError:
            raise bad_request("count must be an integer") from None

    @handler()
    async def delayed(self, request: Request, user: Any) -> Any:
        """What an ``x-delayed-message`` exchange holds: GET how many, the next due time and the
        first ``?count=N`` (default 10, at most 1000) messages; DELETE drops them all."""
        vhost, name = self._vhost(request), self._exchange_name(request)
        exchange = vhost.exchanges.get(name)
        if exchange is None or not exchange.delayed:
            raise not_found()
        if request.method == "DELETE":
            self._permit(request, vhost, CONFIGURE, "exchange", name)
            vhost.delayed.purge(name)
            return Response(status_code=204)
        self._permit(request, vhost, READ, "exchange", name)
        first = vhost.delayed.first(name, self._count(request))
        return {"messages": vhost.delayed.counts.get(name, 0),
                "next_due": _milliseconds(first[0][0]) if first else None,
                "held": [{"due": _milliseconds(due), **_got(message, False, 0, "auto", None)}
                         for due, message in first]}

    @handler()
    async def publish(self, request: Request, user: Any) -> Any:
        """``POST .../publish``: one message, refused where RabbitMQ's channel would refuse it."""
        vhost, name = self._vhost(request), self._exchange_name(request)
        self._permit(request, vhost, WRITE, "exchange", name)
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise not_found()
        body = await bodies.json_object(request)
        key = bodies.text(body, "routing_key", "")
        self._permit(request, vhost, WRITE, "exchange", name, routing_key=key)
        data = _payload(body)
        properties = bodies.amqp_properties(body.get("properties") or {})
        try:
            _check_publish(vhost, exchange, properties, user)
            message = _message(name, key, properties, data)
            return {"routed": self._route(vhost, exchange, message)}
        except AMQPError as exc:
            raise refused(exc) from None

    def _route(self, vhost: Any, exchange: Any, message: Message) -> bool:
        """As an AMQP publish is routed: its TTL, a deduplicating or delayed exchange, then the queues."""
        message.arrived = vhost.clock()
        if message.properties.expiration is not None:
            message.ttl = message_ttl(message.properties.expiration)
        dedup = exchange.dedup
        if dedup is not None and dedup.is_duplicate(message.headers, message.arrived, remember=False):
            return False  # a duplicate: dropped
        if exchange.delayed and vhost.delay(exchange, message):
            return False  # held, to be routed when due
        queues = vhost.route(exchange, message.routing_key, message)
        taken = [queue.enqueue(message) for queue in queues]
        if dedup is not None and taken and all(taken):
            dedup.remember(message.headers, message.arrived)
        if not queues:
            self.broker.totals.count_unroutable(returned=False)
        return bool(queues)

    @handler()
    async def bindings(self, request: Request, user: Any) -> Any:
        visible = {vhost.name for vhost in self._vhosts(request)}
        return [view for view in views.binding_views(self.broker) if view["vhost"] in visible]

    @handler()
    async def exchange_bindings(self, request: Request, user: Any) -> Any:
        """``.../bindings/source``: the bindings from this exchange; ``.../destination``: to it
        (an exchange that does not exist has none, as RabbitMQ answers)."""
        vhost, name = self._vhost(request), self._name(request)
        direction = request.path_params["direction"]
        if direction not in ("source", "destination"):
            raise not_found()
        name = "" if name == "amq.default" else name
        return [view for view in views.binding_views(self.broker, vhost.name)
                if view[direction] == name and (direction == "source" or view["destination_type"] == "exchange")]

    @handler()
    async def bind(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request)
        source, destination = self._name(request, "source"), self._name(request, "destination")
        kind = request.path_params["kind"]
        if kind not in ("q", "e"):
            raise not_found()
        if request.method == "POST":
            self._permit(request, vhost, WRITE, "queue" if kind == "q" else "exchange", destination)
            body = await bodies.json_object(request)
            key, arguments = bodies.text(body, "routing_key", ""), bodies.arguments(body)
            self._permit(request, vhost, READ, "exchange", source, routing_key=key)
            if kind == "q":
                vhost.bind_queue(destination, source, key, arguments, owner=None)
            else:
                vhost.bind_exchange(destination, source, key, arguments)
            return Response(status_code=201)
        wanted = "queue" if kind == "q" else "exchange"
        return [view for view in views.binding_views(self.broker, vhost.name)
                if view["source"] == source and view["destination"] == destination
                and view["destination_type"] == wanted]

    @handler()
    async def binding(self, request: Request, user: Any) -> Any:
        """One binding by its ``properties_key``: GET it, or DELETE it (write on the destination,
        read on the source, as ``queue.unbind``)."""
        vhost = self._vhost(request)
        source, destination = self._exchange_name(request, "source"), self._name(request, "destination")
        kind, props = request.path_params["kind"], self._name(request, "props")
        exchange = vhost.exchanges.get(source)
        found = None if exchange is None or kind not in ("q", "e") else next(
            (binding for binding in exchange.bindings.values()
             if binding.destination.name == destination and isinstance(binding.destination, Queue) == (kind == "q")
             and views.properties_key(binding.routing_key, binding.arguments) == props), None)
        if found is None:
            raise not_found()
        if request.method == "GET":
            wanted = "queue" if kind == "q" else "exchange"
            return next(view for view in views.binding_views(self.broker, vhost.name)
                        if view["source"] == source and view["destination"] == destination
                        and view["destination_type"] == wanted and view["properties_key"] == props)
        self._permit(request, vhost, WRITE, "queue" if kind == "q" else "exchange", destination)
        self._permit(request, vhost, READ, "exchange", source, routing_key=found.routing_key)
        if kind == "q":
            vhost.unbind_queue(destination, source, found.routing_key, dict(found.arguments), owner=None)
        else:
            vhost.unbind_exchange(destination, source, found.routing_key, dict(found.arguments))
        return Response(status_code=204)

    # ------------------------------------------------------------ connections, channels, consumers

    @handler()
    async def connections(self, request: Request, user: Any) -> Any:
        return [views.connection_view(session) for session in self._sessions(request)]

    @handler()
    async def connection(self, request: Request, user: Any) -> Any:
        name = self._name(request)
        session = next((each for each in self._sessions(request) if each.name == name), None)
        if session is None:
            raise not_found()
        if request.method == "DELETE":
            if session.user != user.name:  # one's own connection, or any for an administrator
                _require_admin(user)
            reason = request.headers.get("x-reason", "Closed via management plugin")
            session.close(ReplyCode.CONNECTION_FORCED, f"CONNECTION_FORCED - {reason}")
            return Response(status_code=204)
        return views.connection_view(session)

    def _sessions(self, request: Request) -> list[Any]:
        """The connections this user may see: all of them, or its own."""
        if self._sees_all(request):
            return list(self.broker.sessions)
        return [session for session in self.broker.sessions if session.user == request.state.user.name]

    @handler()
    async def channels(self, request: Request, user: Any) -> Any:
        names = {session.name for session in self._sessions(request)}
        return [view for view in views.channel_views(self.broker) if view["connection_details"]["name"] in names]

    @handler()
    async def consumers(self, request: Request, user: Any) -> Any:
        visible = {vhost.name for vhost in self._vhosts(request)}
        return [view for view in views.consumer_views(self.broker) if view["queue"]["vhost"] in visible]

    # ------------------------------------------------------------ definitions and health

    @handler(admin=True)
    async def definitions(self, request: Request, user: Any) -> Any:
        vhost = self._vhost(request).name if "vhost" in request.path_params else None
        if request.method == "POST":
            import_definitions(self.broker, await bodies.json_object(request), vhost)
            return Response(status_code=204)
        return export_definitions(self.broker, vhost)


    @handler()
    async def alarms(self, request: Request, user: Any) -> Any:
        if self.broker.alarms:
            return JSONResponse({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                                 "alarms": [{"node": views.NODE, "resource": resource}
                                            for resource in sorted(self.broker.alarms)]}, 503)
        return {"status": "ok"}

    @handler()
    async def aliveness(self, request: Request, user: Any) -> Any:
        """Declare ``aliveness-test``, publish to it through the default exchange, get it back."""
        vhost = self._vhost(request)
        queue = vhost.declare_queue("aliveness-test", passive=False, durable=False, exclusive=False,
                                    auto_delete=False, arguments={}, owner=None)
        body = b"test_message"
        message = Message("", queue.name, shortstr("") + shortstr(queue.name), encode_content_header(len(body)), body)
        queue.enqueue(message)
        entry = queue.get() if queue.ready else None  # never a store read on the loop
        if entry is None or entry[1].body != body:
            if entry is not None:
                queue.requeue([entry], counted=False)  # someone else's message at the head: it stays theirs
            return JSONResponse({"status": "failed", "reason": "the test message did not come back"}, 503)
        queue.discard(entry)
        return {"status": "ok"}


# ------------------------------------------------------------------ /get and /publish

async def _take(queue: Any, count: int) -> list[Any]:
    """Up to ``count`` ready messages, as basic.get takes them, but never reading the store on
    the event loop: when the in-memory part runs out while messages are paged out, wait (at most
    ``PAGE_IN_WAIT``) for the page read the queue asked for."""
    taken: list[Any] = []
    while len(taken) < count:
        if not queue.ready and not await _paged_in(queue):
            break
        entry = queue.get()
        if entry is None:
            break
        taken.append(entry)
    return taken


async def _paged_in(queue: Any) -> bool:
    """Wait for the page read the queue's head needs, as basic.get does (``when_paged_in``)."""
    if not queue.ready and queue.head_on_disk and not queue.deleted:
        read = anyio.Event()
        queue.when_paged_in(lambda read_ok: read.set())
        with anyio.move_on_after(PAGE_IN_WAIT):
            await read.wait()
    return bool(queue.ready)


def _got(message: Message, redelivered: bool, left: int, encoding: str, truncate: int | None) -> dict[str, Any]:
    """One message as ``/get`` shows it."""
    payload = message.body if truncate is None else message.body[:truncate]
    try:
        text = payload.decode() if encoding == "auto" else None
    except UnicodeDecodeError:
        text = None
    return {"payload_bytes": len(message.body), "redelivered": redelivered, "exchange": message.exchange,
            "routing_key": message.routing_key, "message_count": left,
            "properties": bodies.properties_view(message.properties),
            "payload": text if text is not None else base64.b64encode(payload).decode(),
            "payload_encoding": "string" if text is not None else "base64"}


def _milliseconds(seconds: float) -> int:
    return int(seconds * 1000)


def _payload(body: dict[str, Any]) -> bytes:
    payload = body.get("payload", "")
    if not isinstance(payload, str):
        raise bad_request("payload_not_string")
    encoding = body.get("payload_encoding", "string")
    if encoding == "string":
        return payload.encode()
    if encoding != "base64":
        raise bad_request("unsupported payload_encoding: use string or base64")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise bad_request("payload is not base64") from None


def _check_publish(vhost: Any, exchange: Any, properties: Any, user: Any) -> None:
    """What RabbitMQ's channel refuses in a publish: an internal exchange, a forged ``user_id``."""
    if exchange.internal:
        raise access_refused(f"cannot publish to internal exchange '{exchange.name}' in vhost '{vhost.name}'")
    if properties.user_id is not None and properties.user_id != user.name and "impersonator" not in user.tags:
        raise precondition_failed(f"user_id property set to '{properties.user_id}' but authenticated "
                                  f"user was '{user.name}'")


def _message(exchange: str, key: str, properties: Any, data: bytes) -> Message:
    try:
        routing = shortstr(exchange) + shortstr(key)
        header = encode_content_header(len(data), properties)
    except (ValueError, UnicodeError) as exc:  # TableError is a ValueError
        raise bad_request(str(exc)) from None
    return Message(exchange, key, routing, header, data)


def _require_admin(user: Any) -> None:
    if ADMIN not in user.tags:
        raise HTTPError(401, "not_authorised", "Not administrator user")
