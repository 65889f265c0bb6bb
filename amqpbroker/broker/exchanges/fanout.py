"""Fanout exchange: every bound destination, whatever the routing key."""

from __future__ import annotations

from amqpbroker.broker.exchanges.base import Binding, Exchange, unique
from amqpbroker.broker.message import Message


class FanoutExchange(Exchange):
    type_name = "fanout"
    __slots__ = ("_all",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._all: tuple = ()

    def _add(self, binding: Binding) -> None:
        self._all = unique(b.destination for b in self.bindings.values())

    _remove = _add

    def route(self, routing_key: str, message: Message) -> tuple:
        return self._all

    def _match(self, routing_key: str, message: Message) -> tuple:
        return self._all
