"""Definitions in RabbitMQ's JSON: export everything durable, import a file (the API's
``/api/definitions`` and ``load_definitions`` at start-up alike).

Import order is RabbitMQ's: users, vhosts, permissions, topic permissions, policies
(:func:`amqpbroker.broker.tenancy.import_definitions`), runtime and global parameters
(:func:`amqpbroker.broker.parameters.import_parameters`), then exchanges, queues and bindings, each
through the checks an AMQP client's declare takes. Importing is idempotent; the first bad entry
raises (an ``HTTPError`` 400 naming it, or the AMQP error its declare got), and what came before it
stays applied, as with RabbitMQ.
"""

from __future__ import annotations

from typing import Any

from amqpbroker import __version__
from amqpbroker.broker import parameters, tenancy
from amqpbroker.broker.broker import Broker
from amqpbroker.http import bodies, views
from amqpbroker.http.errors import HTTPError, bad_request

__all__ = ["export_definitions", "import_definitions", "declare_queue", "declare_exchange"]


def export_definitions(broker: Broker, vhost_name: str | None = None) -> dict[str, Any]:
    """Everything (``vhost_name`` None), or one vhost's exchanges, queues, bindings and policies
    without their ``vhost`` fields, as RabbitMQ's ``GET /api/definitions/{vhost}``."""
    if vhost_name is not None:
        whole = export_definitions(broker)
        strip = lambda items: [{key: value for key, value in item.items() if key != "vhost"}  # noqa: E731
                               for item in items if item.get("vhost") == vhost_name]
        return {"rabbit_version": whole["rabbit_version"], "product_name": whole["product_name"],
                "parameters": strip(whole["parameters"]), "policies": strip(whole["policies"]),
                "queues": strip(whole["queues"]), "exchanges": strip(whole["exchanges"]),
                "bindings": strip(whole["bindings"])}
    queues, exchanges = [], []
    for vhost in broker.vhosts.values():
        for queue in vhost.queues.values():
            if queue.durable and not queue.exclusive:
                view = views.queue_view(vhost.name, queue)
                queues.append({key: view[key] for key in ("name", "vhost", "durable", "auto_delete", "type",
                                                          "arguments")})
        for exchange in vhost.exchanges.values():
            if exchange.name and not exchange.name.startswith("amq."):
                view = views.exchange_view(vhost.name, exchange)
                exchanges.append({key: view[key] for key in ("name", "vhost", "type", "durable", "auto_delete",
                                                             "internal", "arguments")})
    bindings = [{key: view[key] for key in ("source", "vhost", "destination", "destination_type",
                                             "routing_key", "arguments")}
                for view in views.binding_views(broker) if view["source"]]
    return {"rabbit_version": __version__, "product_name": "amqpbroker",
            "users": [{**views.user_view(each), "tags": ",".join(each.tags)} for each in broker.users.users.values()],
            "vhosts": [_vhost_entry(vhost) for vhost in broker.vhosts.values()],
            "parameters": parameters.parameter_views(broker),
            "global_parameters": parameters.global_parameter_views(broker),
            "topic_permissions": views.topic_permission_views(broker.users),
            "permissions": views.permission_views(broker.users),
            "policies": [policy.view() for vhost in broker.vhosts.values() for policy in vhost.policies.values()],
            "operator_policies": [policy.view() for vhost in broker.vhosts.values()
                                  for policy in vhost.operator_policies.values()],
            "queues": queues, "exchanges": exchanges, "bindings": bindings}


def _vhost_entry(vhost: Any) -> dict[str, Any]:
    """A vhost as RabbitMQ 3.11+ exports it (its default queue type at the top and in ``metadata``,
    when set)."""
    entry: dict[str, Any] = {"name": vhost.name, "description": vhost.description, "tags": list(vhost.tags)}
    if vhost.default_queue_type:
        entry["default_queue_type"] = vhost.default_queue_type
        entry["metadata"] = {"description": vhost.description, "tags": list(vhost.tags),
                             "default_queue_type": vhost.default_queue_type}
    return entry


def import_definitions(broker: Broker, definitions: dict[str, Any], vhost_name: str | None = None) -> None:
    """Import a file; with ``vhost_name``, a per-vhost one (its entities go to that vhost, and
    users, vhosts and permissions in it are not taken, as RabbitMQ's ``POST /api/definitions/{vhost}``)."""
    if vhost_name is not None:
        scoped = {key: [{**item, "vhost": vhost_name} for item in _entries(definitions, key)]
                  for key in ("exchanges", "queues", "bindings", "policies", "parameters")}
        definitions = scoped
    try:
        tenancy.import_definitions(broker, definitions)
        parameters.import_parameters(broker, definitions)
    except tenancy.TenancyError as exc:
        raise bad_request(exc.reason) from None
    for item in _entries(definitions, "exchanges"):
        declare_exchange(_vhost_named(broker, item), bodies.text(item, "name", None), item)
    for item in _entries(definitions, "queues"):
        declare_queue(_vhost_named(broker, item), bodies.text(item, "name", None), item)
    for item in _entries(definitions, "bindings"):
        vhost = _vhost_named(broker, item)
        source, destination = bodies.text(item, "source", None), bodies.text(item, "destination", None)
        key, arguments = bodies.text(item, "routing_key", ""), bodies.arguments(item)
        if bodies.choice(item, "destination_type", "queue", ("queue", "exchange")) == "queue":
            vhost.bind_queue(destination, source, key, arguments, owner=None)
        else:
            vhost.bind_exchange(destination, source, key, arguments)


def _vhost_named(broker: Broker, item: dict[str, Any]) -> Any:
    name = bodies.text(item, "vhost", "/")
    vhost = broker.vhosts.get(name)
    if vhost is None:
        raise HTTPError(400, "bad_request", f"vhost '{name}' does not exist")
    return vhost


def _entries(definitions: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = definitions.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise bad_request(f"{key} must be a list of objects")
    return entries


def declare_queue(vhost: Any, name: str, body: dict[str, Any]) -> None:
    """A queue as a PUT body or a definitions entry describes it (durable unless it says not; its
    ``type``, as RabbitMQ 3.13+ exports it, stands for ``x-queue-type``, so a vhost's default queue
    type does not change an exported classic queue into another type)."""
    arguments = bodies.arguments(body)
    queue_type = body.get("type")
    if isinstance(queue_type, str) and queue_type and "x-queue-type" not in arguments:
        arguments["x-queue-type"] = queue_type
    vhost.declare_queue(bodies.name_of("queue", name), passive=False, durable=bodies.flag(body, "durable", True),
                        exclusive=False, auto_delete=bodies.flag(body, "auto_delete", False),
                        arguments=arguments, owner=None)


def declare_exchange(vhost: Any, name: str, body: dict[str, Any]) -> None:
    vhost.declare_exchange(bodies.name_of("exchange", name), bodies.text(body, "type", "direct"), passive=False,
                           durable=bodies.flag(body, "durable", True),
                           auto_delete=bodies.flag(body, "auto_delete", False),
                           internal=bodies.flag(body, "internal", False),
                           arguments=bodies.arguments(body))
