"""Direct exchange: destinations whose binding key equals the routing key."""

from __future__ import annotations

from amqpbroker.broker.exchanges.base import Binding, Exchange, unique
from amqpbroker.broker.message import Message


class DirectExchange(Exchange):
    type_name = "direct"
    __slots__ = ("_by_key",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._by_key: dict[str, list[Binding]] = {}

    def _add(self, binding: Binding) -> None:
        self._by_key.setdefault(binding.routing_key, []).append(binding)

    def _remove(self, binding: Binding) -> None:
        bindings = self._by_key[binding.routing_key]
        bindings.remove(binding)
        if not bindings:
            del self._by_key[binding.routing_key]

    def _match(self, routing_key: str, message: Message) -> tuple:
        return unique(binding.destination for binding in self._by_key.get(routing_key, ()))
