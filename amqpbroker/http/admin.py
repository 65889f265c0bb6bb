"""The management API's administration paths: users, virtual hosts, permissions and topic
permissions, as RabbitMQ serves them (PUT answers 201 when it created, 204 when it replaced;
DELETE 204; an unknown name 404). Every change goes through :mod:`amqpbroker.broker.tenancy`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amqpbroker.broker import tenancy
from amqpbroker.broker.access import Permission, TopicPermission
from amqpbroker.http import bodies, views
from amqpbroker.http.errors import HTTPError, bad_request, not_found
from amqpbroker.http.handlers import ApiBase, handler

__all__ = ["AdminApi", "LimitsApi", "PoliciesApi", "admin_routes", "by_method"]


def _created(existed: bool) -> Response:
    return Response(status_code=204 if existed else 201)


def _tenancy_error(exc: tenancy.TenancyError) -> HTTPError:
    return not_found() if exc.missing else bad_request(exc.reason)


def _required_text(body: dict[str, Any], key: str) -> str:
    if key not in body:
        raise bad_request(f"{key} not found")  # RabbitMQ's reason for a missing field
    return bodies.text(body, key, "")


class AdminApi(ApiBase):
    # ------------------------------------------------------------ users

    @handler(admin=True)
    async def put_user(self, request: Request, user: Any) -> Any:
        name = self._name(request)
        body = await bodies.json_object(request)
        if "tags" not in body:
            raise bad_request("tags_not_present")  # as RabbitMQ
        try:
            tags = tenancy.parse_tags(body["tags"])
            password_hash = None
            if "password_hash" in body:
                algorithm = bodies.text(body, "hashing_algorithm", tenancy.HASHING_ALGORITHM)
                if algorithm != tenancy.HASHING_ALGORITHM:
                    raise bad_request(f"unsupported hashing algorithm {algorithm!r}; "
                                      f"use {tenancy.HASHING_ALGORITHM}")
                password_hash = tenancy.decode_password_hash(bodies.text(body, "password_hash", ""))
            password = bodies.text(body, "password", "") if "password" in body else None
            existed = name in self.broker.users.users
            tenancy.put_user(self.broker, name, password=password, password_hash=password_hash, tags=tags)
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return _created(existed)

    @handler(admin=True)
    async def delete_user(self, request: Request, user: Any) -> Any:
        try:
            tenancy.delete_user(self.broker, self._name(request))
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return Response(status_code=204)

    @handler(admin=True)
    async def user_permissions(self, request: Request, user: Any) -> Any:
        name = self._name(request)
        if name not in self.broker.users.users:
            raise not_found()
        return [each for each in views.permission_views(self.broker.users) if each["user"] == name]

    @handler(admin=True)
    async def user_topic_permissions(self, request: Request, user: Any) -> Any:
        name = self._name(request)
        if name not in self.broker.users.users:
            raise not_found()
        return [each for each in views.topic_permission_views(self.broker.users) if each["user"] == name]

    # ------------------------------------------------------------ virtual hosts

    @handler(admin=True)
    async def put_vhost(self, request: Request, user: Any) -> Any:
        name = self._name(request, "vhost")
        body = await bodies.json_object(request)
        existed = name in self.broker.vhosts
        vhost = self.broker.vhosts.get(name)
        try:
            tags = tenancy.parse_tags(body.get("tags", list(vhost.tags) if vhost else ""))
            description = bodies.text(body, "description", vhost.description if vhost else "")
            queue_type = bodies.text(body, "default_queue_type", (vhost.default_queue_type or "") if vhost else "")
            tenancy.put_vhost(self.broker, name, description=description, tags=tags,
                              default_queue_type=queue_type or None)
            if not existed:  # its creator may use it, as RabbitMQ grants on creation
                tenancy.set_permission(self.broker, user.name, name, Permission())
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return _created(existed)

    @handler(admin=True)
    async def delete_vhost(self, request: Request, user: Any) -> Any:
        try:
            tenancy.delete_vhost(self.broker, self._name(request, "vhost"))
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return Response(status_code=204)

    @handler(admin=True)
    async def vhost_permissions(self, request: Request, user: Any) -> Any:
        name = self._vhost(request).name
        return [each for each in views.permission_views(self.broker.users) if each["vhost"] == name]

    @handler(admin=True)
    async def vhost_topic_permissions(self, request: Request, user: Any) -> Any:
        name = self._vhost(request).name
        return [each for each in views.topic_permission_views(self.broker.users) if each["vhost"] == name]

    # ------------------------------------------------------------ permissions

    def _user_and_vhost(self, request: Request) -> tuple[str, str]:
        """The path's user and vhost; 404 unless both exist."""
        vhost = self._vhost(request).name
        name = self._name(request, "user")
        if name not in self.broker.users.users:
            raise not_found()
        return name, vhost

    @handler(admin=True)
    async def permission(self, request: Request, user: Any) -> Any:
        name, vhost = self._user_and_vhost(request)
        if request.method == "GET":
            found = [each for each in views.permission_views(self.broker.users)
                     if each["user"] == name and each["vhost"] == vhost]
            if not found:
                raise not_found()
            return found[0]
        try:
            if request.method == "DELETE":
                tenancy.clear_permission(self.broker, name, vhost)
                return Response(status_code=204)
            body = await bodies.json_object(request)
            permission = Permission(_required_text(body, "configure"), _required_text(body, "write"),
                                    _required_text(body, "read"))
            existed = (name, vhost) in self.broker.users.permissions
            tenancy.set_permission(self.broker, name, vhost, permission)
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return _created(existed)

    @handler(admin=True)
    async def topic_permissions(self, request: Request, user: Any) -> Any:
        return views.topic_permission_views(self.broker.users)

    @handler(admin=True)
    async def topic_permission(self, request: Request, user: Any) -> Any:
        name, vhost = self._user_and_vhost(request)
        held = self.broker.users.topic_permissions.get((name, vhost), {})
        if request.method == "GET":
            found = [each for each in views.topic_permission_views(self.broker.users)
                     if each["user"] == name and each["vhost"] == vhost]
            if not found:
                raise not_found()
            return found
        try:
            if request.method == "DELETE":
                exchange = request.path_params.get("exchange")
                tenancy.clear_topic_permission(self.broker, name, vhost,
                                               self._name(request, "exchange") if exchange else None)
                return Response(status_code=204)
            body = await bodies.json_object(request)
            permission = TopicPermission(_required_text(body, "exchange"), _required_text(body, "write"),
                                         _required_text(body, "read"))
            existed = permission.exchange in held
            tenancy.set_topic_permission(self.broker, name, vhost, permission)
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return _created(existed)


class LimitsApi(ApiBase):
    """``/api/vhost-limits`` and ``/api/user-limits``: ``{"value": N}`` per limit name (a
    negative value: no limit), listed as ``[{"vhost"|"user": name, "value": {limit: N}}]``."""

    @handler(admin=True)
    async def vhost_limits(self, request: Request, user: Any) -> Any:
        vhosts = self._vhosts(request)
        return [{"vhost": vhost.name, "value": dict(vhost.limits)} for vhost in vhosts if vhost.limits]

    @handler(admin=True)
    async def vhost_limit(self, request: Request, user: Any) -> Any:
        return await self._change(request, "vhost", self._vhost(request).name)

    @handler(admin=True)
    async def user_limits(self, request: Request, user: Any) -> Any:
        users = self.broker.users.users
        if "user" in request.path_params:
            name = self._name(request, "user")
            if name not in users:
                raise not_found()
            selected = [users[name]]
        else:
            selected = list(users.values())
        return [{"user": each.name, "value": dict(each.limits)} for each in selected if each.limits]

    @handler(admin=True)
    async def user_limit(self, request: Request, user: Any) -> Any:
        return await self._change(request, "user", self._name(request, "user"))

    async def _change(self, request: Request, kind: str, owner: str) -> Response:
        """PUT ``{"value": N}`` or DELETE one limit of a vhost or user."""
        name = self._name(request)
        try:
            if request.method == "DELETE":
                tenancy.clear_limit(self.broker, kind, owner, name)
            else:
                body = await bodies.json_object(request)
                if "value" not in body:
                    raise bad_request("value not found")
                tenancy.set_limit(self.broker, kind, owner, name, body["value"])
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return Response(status_code=204)


class PoliciesApi(ApiBase):
    """``/api/policies`` (administrator or policymaker) and ``/api/operator-policies``
    (administrator): RabbitMQ's JSON (``pattern``, ``definition``, ``priority``, ``apply-to``)."""

    def _check_tag(self, request: Request, operator: bool) -> None:
        tags = set(request.state.user.tags)
        if "administrator" not in tags and (operator or "policymaker" not in tags):
            raise HTTPError(401, "not_authorised", "Not administrator user" if operator else "Not policymaker user")

    def _held(self, vhost: Any, operator: bool) -> dict[str, Any]:
        return vhost.operator_policies if operator else vhost.policies

    async def _list(self, request: Request, operator: bool) -> Any:
        return [policy.view() for vhost in self._vhosts(request)
                for _, policy in sorted(self._held(vhost, operator).items())]

    async def _one(self, request: Request, operator: bool) -> Any:
        vhost, name = self._vhost(request), self._name(request)
        held = self._held(vhost, operator)
        if request.method == "GET":
            if name not in held:
                raise not_found()
            return held[name].view()
        self._check_tag(request, operator)
        try:
            if request.method == "DELETE":
                tenancy.clear_policy(self.broker, vhost.name, name, operator=operator)
                return Response(status_code=204)
            body = await bodies.json_object(request)
            existed = name in held
            tenancy.set_policy(self.broker, vhost.name, name, pattern=body.get("pattern"),
                               definition=body.get("definition"), priority=body.get("priority", 0),
                               apply_to=body.get("apply-to", "all"), operator=operator)
        except tenancy.TenancyError as exc:
            raise _tenancy_error(exc) from None
        return _created(existed)

    @handler()
    async def policies(self, request: Request, user: Any) -> Any:
        return await self._list(request, False)

    @handler()
    async def policy(self, request: Request, user: Any) -> Any:
        return await self._one(request, False)

    @handler()
    async def operator_policies(self, request: Request, user: Any) -> Any:
        return await self._list(request, True)

    @handler()
    async def operator_policy(self, request: Request, user: Any) -> Any:
        return await self._one(request, True)


def by_method(**handlers: Any) -> Any:
    """One path, a handler per HTTP method."""
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method](request)
    return dispatch


def admin_routes(api: AdminApi, limits: LimitsApi, policies: PoliciesApi) -> list[Route]:
    """The administration routes (the GETs of ``/api/users/{name}`` and ``/api/vhosts/{vhost}``
    stay with the read-only API: these take their other methods)."""
    return [
        Route("/api/users/{name}/permissions", api.user_permissions),
        Route("/api/users/{name}/topic-permissions", api.user_topic_permissions),
        Route("/api/vhosts/{vhost}/permissions", api.vhost_permissions),
        Route("/api/vhosts/{vhost}/topic-permissions", api.vhost_topic_permissions),
        Route("/api/permissions/{vhost}/{user}", api.permission, methods=["GET", "PUT", "DELETE"]),
        Route("/api/topic-permissions", api.topic_permissions),
        Route("/api/topic-permissions/{vhost}/{user}", api.topic_permission, methods=["GET", "PUT", "DELETE"]),
        Route("/api/topic-permissions/{vhost}/{user}/{exchange}", api.topic_permission, methods=["DELETE"]),
        Route("/api/policies", policies.policies),
        Route("/api/policies/{vhost}", policies.policies),
        Route("/api/policies/{vhost}/{name}", policies.policy, methods=["GET", "PUT", "DELETE"]),
        Route("/api/operator-policies", policies.operator_policies),
        Route("/api/operator-policies/{vhost}", policies.operator_policies),
        Route("/api/operator-policies/{vhost}/{name}", policies.operator_policy, methods=["GET", "PUT", "DELETE"]),
        Route("/api/vhost-limits", limits.vhost_limits),
        Route("/api/vhost-limits/{vhost}", limits.vhost_limits),
        Route("/api/vhost-limits/{vhost}/{name}", limits.vhost_limit, methods=["PUT", "DELETE"]),
        Route("/api/user-limits", limits.user_limits),
        Route("/api/user-limits/{user}", limits.user_limits),
        Route("/api/user-limits/{user}/{name}", limits.user_limit, methods=["PUT", "DELETE"]),
    ]
