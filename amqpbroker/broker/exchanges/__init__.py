"""Exchange types: small plugins behind one interface (:class:`Exchange`), found by type name."""

from amqpbroker.broker.exchanges.base import Binding, Exchange
from amqpbroker.broker.exchanges.registry import EXCHANGE_TYPES, exchange_class

__all__ = ["Binding", "Exchange", "EXCHANGE_TYPES", "exchange_class"]
