"""``/api/parameters`` (runtime parameters by component and vhost; policymakers and
administrators), ``/api/global-parameters`` (administrators) and ``/api/cluster-name`` (read by any
management user, set by administrators), as RabbitMQ serves them. Changes go through
:mod:`amqpbroker.broker.parameters`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amqpbroker.broker import parameters
from amqpbroker.broker.tenancy import TenancyError
from amqpbroker.http import bodies
from amqpbroker.http.errors import HTTPError, bad_request, not_found
from amqpbroker.http.handlers import ADMIN, ApiBase, handler

__all__ = ["ParametersApi", "parameter_routes"]


def _answer(exc: TenancyError) -> HTTPError:
    return not_found() if exc.missing else bad_request(exc.reason)


def _created(existed: bool) -> Response:
    return Response(status_code=204 if existed else 201)


async def _value(request: Request) -> Any:
    body = await bodies.json_object(request)
    if "value" not in body:
        raise bad_request("value not found")
    return body["value"]


class ParametersApi(ApiBase):
    def _check_policymaker(self, request: Request) -> None:
        if not {ADMIN, "policymaker"} & set(request.state.user.tags):
            raise HTTPError(401, "not_authorised", "Not policymaker user")

    @handler()
    async def parameters(self, request: Request, user: Any) -> Any:
        self._check_policymaker(request)
        component = self._name(request, "component") if "component" in request.path_params else None
        return [view for vhost in self._vhosts(request)
                for view in parameters.parameter_views(self.broker, component, vhost.name)]

    @handler()
    async def parameter(self, request: Request, user: Any) -> Any:
        self._check_policymaker(request)
        component, vhost, name = self._name(request, "component"), self._vhost(request), self._name(request)
        try:
            if request.method == "GET":
                for view in parameters.parameter_views(self.broker, component, vhost.name):
                    if view["name"] == name:
                        return view
                raise not_found()
            if request.method == "DELETE":
                parameters.clear_parameter(self.broker, component, vhost.name, name)
                return Response(status_code=204)
            return _created(parameters.set_parameter(self.broker, component, vhost.name, name,
                                                     await _value(request)))
        except TenancyError as exc:
            raise _answer(exc) from None

    @handler(admin=True)
    async def global_parameters(self, request: Request, user: Any) -> Any:
        return parameters.global_parameter_views(self.broker)

    @handler(admin=True)
    async def global_parameter(self, request: Request, user: Any) -> Any:
        name = self._name(request)
        try:
            if request.method == "GET":
                if name not in self.broker.global_parameters:
                    raise not_found()
                return {"value": self.broker.global_parameters[name], "name": name}
            if request.method == "DELETE":
                parameters.clear_global_parameter(self.broker, name)
                return Response(status_code=204)
            return _created(parameters.set_global_parameter(self.broker, name, await _value(request)))
        except TenancyError as exc:
            raise _answer(exc) from None

    @handler()
    async def cluster_name(self, request: Request, user: Any) -> Any:
        if request.method == "GET":
            return {"name": self.broker.cluster_name}
        if ADMIN not in user.tags:
            raise HTTPError(401, "not_authorised", "Not administrator user")
        body = await bodies.json_object(request)
        try:
            parameters.set_global_parameter(self.broker, parameters.CLUSTER_NAME, body.get("name"))
        except TenancyError as exc:
            raise _answer(exc) from None
        return Response(status_code=204)


def parameter_routes(api: ParametersApi) -> list[Route]:
    return [
        Route("/api/parameters", api.parameters),
        Route("/api/parameters/{component}", api.parameters),
        Route("/api/parameters/{component}/{vhost}", api.parameters),
        Route("/api/parameters/{component}/{vhost}/{name}", api.parameter, methods=["GET", "PUT", "DELETE"]),
        Route("/api/global-parameters", api.global_parameters),
        Route("/api/global-parameters/{name}", api.global_parameter, methods=["GET", "PUT", "DELETE"]),
        Route("/api/cluster-name", api.cluster_name, methods=["GET", "PUT"]),
    ]
