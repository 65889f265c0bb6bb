"""Headers exchange: match on message headers instead of the routing key.

RabbitMQ's rules: ``x-match`` is ``all`` (default), ``any``, ``all-with-x`` or ``any-with-x``;
other binding arguments starting with ``x-`` take no part in matching (unless ``-with-x``); a
binding argument of void type matches on the header's presence alone; otherwise the header must
be present with an equal value. A binding with no matchable arguments matches every message
under ``all`` and none under ``any``.
"""

from __future__ import annotations

from typing import Any

from amqpbroker.broker.exchanges.base import Binding, Exchange, unique
from amqpbroker.broker.message import Message

__all__ = ["HeadersExchange", "headers_match", "X_MATCH_VALUES"]

X_MATCH_VALUES = ("all", "any", "all-with-x", "any-with-x")
_MISSING = object()


def headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode.endswith("-with-x")
    want_all = mode.startswith("all")
    for key, expected in arguments.items():
        if key == "x-match" or (not with_x and key.startswith("x-")):
            continue
        actual = headers.get(key, _MISSING)
        ok = actual is not _MISSING and (expected is None or _equal(expected, actual))
        if want_all and not ok:
            return False
        if ok and not want_all:
            return True
    return want_all


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, bytes) and isinstance(actual, str):
        return expected == actual.encode()
    if isinstance(expected, str) and isinstance(actual, bytes):
        return expected.encode() == actual
    return expected == actual


class HeadersExchange(Exchange):
    type_name = "headers"
    cacheable = False
    __slots__ = ()

    def _add(self, binding: Binding) -> None:
        pass

    def _remove(self, binding: Binding) -> None:
        pass

    def _match(self, routing_key: str, message: Message) -> tuple:
        if not self.bindings:
            return ()
        headers = message.headers
        return unique(b.destination for b in self.bindings.values() if headers_match(b.arguments, headers))
