"""Runtime parameters (per vhost, by component) and global parameters, as RabbitMQ keeps them.

A runtime parameter belongs to a plugin's component (``federation-upstream``, ``shovel``...); a
component amqpbroker does not have is refused as RabbitMQ refuses it without the plugin
("component ... not found"), so a definitions file that relies on one fails by name instead of
loading and doing nothing. The component amqpbroker has is ``vhost-limits`` (a vhost's limits,
named ``limits``: the same thing ``/api/vhost-limits`` changes).

Global parameters take any name and JSON value and are stored as they are; two mean something:
``cluster_name`` (what the node reports as its cluster's name: ``connection.start``,
``/api/overview``, Prometheus' ``rabbitmq_identity_info``) and ``internal_cluster_id`` (made at
the first start and exported with the definitions, as RabbitMQ's).

Journal records: kind ``g`` (key: the parameter's name, value ``{"name", "value"}``).
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from amqpbroker.broker import tenancy
from amqpbroker.broker.tenancy import GLOBAL_PARAMETER, TenancyError

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker

__all__ = ["GLOBAL_PARAMETER", "CLUSTER_NAME", "INTERNAL_CLUSTER_ID", "VHOST_LIMITS", "parameter_views",
           "set_parameter", "clear_parameter", "set_global_parameter", "clear_global_parameter",
           "global_parameter_views", "import_parameters", "new_cluster_id"]

CLUSTER_NAME = "cluster_name"
INTERNAL_CLUSTER_ID = "internal_cluster_id"
VHOST_LIMITS = "vhost-limits"
_LIMITS_NAME = "limits"


def _validation_failed(reason: str) -> TenancyError:
    return TenancyError(f"Validation failed\n\n{reason}\n")  # RabbitMQ's wording


# ------------------------------------------------------------ runtime parameters

def parameter_views(broker: Broker, component: str | None = None, vhost_name: str | None = None
                    ) -> list[dict[str, Any]]:
    """Every runtime parameter (of one component, in one vhost), as ``/api/parameters`` lists them."""
    if component not in (None, VHOST_LIMITS):
        return []
    return [{"value": dict(vhost.limits), "vhost": name, "component": VHOST_LIMITS, "name": _LIMITS_NAME}
            for name, vhost in broker.vhosts.items()
            if vhost.limits and vhost_name in (None, name)]


def _limited_vhost(broker: Broker, component: str, vhost_name: str, name: str) -> Any:
    if component != VHOST_LIMITS:
        raise _validation_failed(f"component {component} not found")
    vhost = broker.vhosts.get(vhost_name)
    if vhost is None:
        raise TenancyError(f"no vhost '{vhost_name}'", missing=True)
    if name != _LIMITS_NAME:
        raise _validation_failed(f"a vhost's limits are the {VHOST_LIMITS} parameter named '{_LIMITS_NAME}'")
    return vhost


def set_parameter(broker: Broker, component: str, vhost_name: str, name: str, value: Any) -> bool:
    """Set a runtime parameter; returns whether it existed before."""
    vhost = _limited_vhost(broker, component, vhost_name, name)
    limits = tenancy.import_limits(value, tenancy.VHOST_LIMITS, f"vhost '{vhost_name}'")
    existed = bool(vhost.limits)
    tenancy.replace_vhost_limits(broker, vhost_name, limits)
    return existed


def clear_parameter(broker: Broker, component: str, vhost_name: str, name: str) -> None:
    vhost = _limited_vhost(broker, component, vhost_name, name)
    if not vhost.limits:
        raise TenancyError(f"no {component} parameter in vhost '{vhost_name}'", missing=True)
    tenancy.replace_vhost_limits(broker, vhost_name, {})


# ------------------------------------------------------------ global parameters

def new_cluster_id() -> str:
    return "rabbitmq-cluster-id-" + secrets.token_urlsafe(16)


def global_parameter_views(broker: Broker) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in sorted(broker.global_parameters.items())]


def set_global_parameter(broker: Broker, name: str, value: Any) -> bool:
    """Set a global parameter (``cluster_name``: a non-empty string); returns whether it existed."""
    if not isinstance(name, str) or not name:
        raise _validation_failed("a global parameter needs a name")
    if name == CLUSTER_NAME and (not isinstance(value, str) or not value.strip()):
        raise _validation_failed("cluster_name must be a non-empty string")
    try:
        encoded = json.dumps({"name": name, "value": value}, sort_keys=True).encode()
    except (TypeError, ValueError):
        raise _validation_failed(f"the value of {name} is not JSON") from None
    existed = name in broker.global_parameters
    broker.global_parameters[name] = value
    broker.journal.definition(("meta", GLOBAL_PARAMETER, name, encoded))
    return existed


def clear_global_parameter(broker: Broker, name: str) -> None:
    if name not in broker.global_parameters:
        raise TenancyError(f"no global parameter '{name}'", missing=True)
    del broker.global_parameters[name]
    broker.journal.definition(("meta-", GLOBAL_PARAMETER, name))


# ------------------------------------------------------------ definitions

def import_parameters(broker: Broker, definitions: dict[str, Any]) -> None:
    """A definitions file's ``parameters`` and ``global_parameters`` (after its vhosts); the
    first bad entry raises TenancyError naming it."""
    for key in ("parameters", "global_parameters"):
        items = definitions.get(key) or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise TenancyError(f"{key} must be a list of objects")
        for item in items:
            try:
                if key == "global_parameters":
                    set_global_parameter(broker, item.get("name"), item.get("value"))
                else:
                    fields = [item.get(field) for field in ("component", "vhost", "name")]
                    if not all(isinstance(field, str) for field in fields):
                        raise TenancyError("component, vhost and name must be strings")
                    set_parameter(broker, *fields, item.get("value"))
            except TenancyError as exc:
                raise TenancyError(f"{key} entry {json.dumps(item, default=str)[:200]}: "
                                   f"{exc.reason.strip()}") from None
