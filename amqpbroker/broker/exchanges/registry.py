"""Exchange types by name."""

from __future__ import annotations

from amqpbroker.broker.exchanges.base import Exchange
from amqpbroker.broker.exchanges.delayed import DelayedExchange
from amqpbroker.broker.exchanges.direct import DirectExchange
from amqpbroker.broker.exchanges.fanout import FanoutExchange
from amqpbroker.broker.exchanges.headers import HeadersExchange
from amqpbroker.broker.exchanges.topic import TopicExchange

__all__ = ["EXCHANGE_TYPES", "exchange_class"]

EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    cls.type_name: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)
}
DelayedExchange.inner_types = dict(EXCHANGE_TYPES)  # what x-delayed-type may name
EXCHANGE_TYPES[DelayedExchange.type_name] = DelayedExchange


def exchange_class(type_name: str) -> type[Exchange] | None:
    return EXCHANGE_TYPES.get(type_name)
