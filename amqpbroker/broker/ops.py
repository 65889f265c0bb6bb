"""Topology operations: the only way a virtual host's exchanges, queues and bindings change.

Live declares and boot-time recovery both build these and pass them to
:meth:`amqpbroker.broker.vhost.VirtualHost.apply`; the store persists the durable ones as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeclareExchange", "DeleteExchange", "DeclareQueue", "DeleteQueue", "Bind", "Unbind", "Op"]


@dataclass(frozen=True, slots=True)
class DeclareExchange:
    name: str
    type: str
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeleteExchange:
    name: str


@dataclass(frozen=True, slots=True)
class DeclareQueue:
    name: str
    durable: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    exclusive_owner: Any = None  # the owning session; never persisted (exclusive queues are transient)
    queue_id: int | None = None  # the store's id, when recovering


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    name: str


@dataclass(frozen=True, slots=True)
class Bind:
    source: str
    destination: str
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    destination_is_exchange: bool = False


@dataclass(frozen=True, slots=True)
class Unbind:
    source: str
    destination: str
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    destination_is_exchange: bool = False


Op = DeclareExchange | DeleteExchange | DeclareQueue | DeleteQueue | Bind | Unbind
