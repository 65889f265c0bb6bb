"""``/metrics`` and ``/metrics/per-object``, as rabbitmq_prometheus serves them (default port 15692)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amqpbroker.broker.broker import Broker
from amqpbroker.metrics import BrokerCollector

__all__ = ["prometheus_app"]


def prometheus_app(broker: Broker, store_writer: Any = None) -> Starlette:
    registries = {}
    for path, per_object in (("/metrics", False), ("/metrics/per-object", True)):
        registry = CollectorRegistry(auto_describe=True)
        registry.register(BrokerCollector(broker, per_object=per_object, store_writer=store_writer))
        registries[path] = registry

    async def metrics(request: Request) -> Response:
        # generated on the loop: a consistent view of broker state, no thread touches it
        return Response(generate_latest(registries[request.url.path]), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route(path, metrics) for path in registries])
