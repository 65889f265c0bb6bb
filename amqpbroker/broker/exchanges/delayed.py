"""``x-delayed-message``: the exchange type of RabbitMQ's delayed-message plugin.

It routes like the type named in its ``x-delayed-type`` argument (direct, fanout, topic,
headers), but a message published with an ``x-delay`` header (milliseconds, above 0) is held
by the vhost for that long and routed only then (``VirtualHost.delay`` / ``tick``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from amqpbroker.broker.exchanges.base import Binding, Exchange
from amqpbroker.broker.message import Message

__all__ = ["DelayedExchange", "delayed_type"]


def delayed_type(arguments: dict[str, Any]) -> str | None:
    value = arguments.get("x-delayed-type")
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class DelayedExchange(Exchange):
    type_name: ClassVar[str] = "x-delayed-message"
    delayed: ClassVar[bool] = True
    inner_types: ClassVar[dict[str, type[Exchange]]] = {}  # filled by the registry

    __slots__ = ("inner",)

    def __init__(self, name: str, durable: bool = False, auto_delete: bool = False,
                 internal: bool = False, arguments: dict[str, Any] | None = None) -> None:
        super().__init__(name, durable, auto_delete, internal, arguments)
        self.inner = self.inner_types[delayed_type(self.arguments)](name)
        self.inner.bindings = self.bindings  # the inner type matches against these bindings

    def route(self, routing_key: str, message: Message) -> tuple:
        if not self.inner.cacheable:
            return self._match(routing_key, message)
        return super().route(routing_key, message)

    def _add(self, binding: Binding) -> None:
        self.inner._add(binding)

    def _remove(self, binding: Binding) -> None:
        self.inner._remove(binding)

    def _match(self, routing_key: str, message: Message) -> tuple:
        return self.inner._match(routing_key, message)

    @staticmethod
    def delay_of(message: Message) -> float:
        """The ``x-delay`` header in seconds (0 when absent, not a number, or not above 0)."""
        delay = message.headers.get("x-delay")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay <= 0:
            return 0.0
        return delay / 1000
