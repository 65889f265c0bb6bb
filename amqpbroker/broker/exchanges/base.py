"""The exchange interface: bindings in, destinations out.

An exchange type implements ``_add`` / ``_remove`` (keep its index of bindings) and
``_match`` (the destinations for one routing key and message). The base class keeps the set of
bindings, answers ``route()`` from a per-routing-key cache when the type allows it, and drops the
cache whenever a binding changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from amqpbroker.broker.message import Message

__all__ = ["Binding", "Exchange", "freeze"]

_ROUTE_CACHE_LIMIT = 10_000


def freeze(value: Any) -> Any:
    """A hashable, order-independent form of a field table (for binding identity)."""
    if isinstance(value, dict):
        return tuple(sorted((key, freeze(item)) for key, item in value.items()))
    if isinstance(value, list):
        return tuple(freeze(item) for item in value)
    return value


class Binding:
    """``source`` routes to ``destination`` (a queue or an exchange) for ``routing_key``/``arguments``."""

    __slots__ = ("destination", "routing_key", "arguments", "key")

    def __init__(self, destination: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        self.destination = destination
        self.routing_key = routing_key
        self.arguments = arguments
        self.key = (destination, routing_key, freeze(arguments))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Binding) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


class Exchange:
    """Base of every exchange type."""

    type_name: ClassVar[str] = ""
    cacheable: ClassVar[bool] = True  # routing depends on the routing key only
    delayed: ClassVar[bool] = False  # holds messages with an x-delay header (x-delayed-message)

    __slots__ = ("name", "durable", "auto_delete", "internal", "arguments", "bindings", "_cache",
                 "alternate", "dedup")

    def __init__(self, name: str, durable: bool = False, auto_delete: bool = False,
                 internal: bool = False, arguments: dict[str, Any] | None = None) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        alternate = self.arguments.get("alternate-exchange")
        # where messages that match no binding go instead (RabbitMQ's alternate exchange)
        # (a longstr only, as RabbitMQ: any other type, or bytes that are not UTF-8, means none)
        self.alternate: str | None = alternate or None if isinstance(alternate, str) else None
        self.bindings: dict[tuple, Binding] = {}
        self._cache: dict[str, tuple] = {}
        self.dedup: Any = None  # its deduplication cache (deduplication.py), set by its vhost

    def bind(self, binding: Binding) -> bool:
        """Add a binding; False when it already existed (binding is idempotent)."""
        if binding.key in self.bindings:
            return False
        self.bindings[binding.key] = binding
        self._add(binding)
        self._cache.clear()
        return True

    def unbind(self, binding: Binding) -> bool:
        existing = self.bindings.pop(binding.key, None)
        if existing is None:
            return False
        self._remove(existing)
        self._cache.clear()
        return True

    def bindings_to(self, destination: Any) -> list[Binding]:
        return [binding for binding in self.bindings.values() if binding.destination is destination]

    def route(self, routing_key: str, message: Message) -> tuple:
        """The destinations (queues and exchanges) bound for this message, without duplicates."""
        if not self.cacheable:
            return self._match(routing_key, message)
        cache = self._cache
        found = cache.get(routing_key)
        if found is None:
            if len(cache) >= _ROUTE_CACHE_LIMIT:
                cache.clear()
            found = cache[routing_key] = self._match(routing_key, message)
        return found

    # -- what each type implements

    def _add(self, binding: Binding) -> None:
        raise NotImplementedError

    def _remove(self, binding: Binding) -> None:
        raise NotImplementedError

    def _match(self, routing_key: str, message: Message) -> tuple:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def unique(destinations: Any) -> tuple:
    """Destinations in first-seen order without duplicates."""
    return tuple(dict.fromkeys(destinations))
