"""A published message: routing info, the raw content header, the body; properties on demand."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from amqpbroker.codec.content import decode_properties, delivery_mode, encode_content_header

__all__ = ["Message", "FROM_HEADERS"]

FROM_HEADERS = "x-death"  # Message.deaths of a stored message: its x-death header is the record


def _routing(routing_raw: bytes) -> tuple[str, str]:
    """Exchange and routing key from their shortstrs (a routing key of any bytes, as publishes
    take them: what is not UTF-8 kept as surrogate escapes)."""
    exchange_end = 1 + routing_raw[0]
    return (routing_raw[1:exchange_end].decode(),
            routing_raw[exchange_end + 1:].decode("utf-8", "surrogateescape"))


class Message:
    """One published message, shared by every queue it was routed to.

    ``header`` is the content header payload exactly as published (class, weight, body size,
    property flags and values) and ``routing_raw`` the exchange and routing key as encoded in the
    publish; deliveries send both back unchanged.
    """

    __slots__ = ("exchange", "routing_key", "routing_raw", "header", "body", "_properties",
                 "message_id", "refs", "durable", "has_stored_copy", "arrived", "ttl", "deaths")

    def __init__(self, exchange: str, routing_key: str, routing_raw: bytes, header: bytes,
                 body: bytes) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.routing_raw = routing_raw
        self.header = header
        self.body = body
        self._properties: Any = None
        # set once the store holds it: its id, shared by queue entries, or journal.INLINE when it
        # lives in a paged queue entry of its own
        self.message_id: int | None = None
        self.refs = 0  # durable queue entries that hold it in the store
        self.durable = False  # written to the store durably: its confirm waits for the sync
        # the store holds a copy of its own (a paged queue entry, a delayed message), which only
        # a sync makes safe: its confirm always waits for the sync
        self.has_stored_copy = False
        self.arrived: float | None = None  # wall-clock seconds, set where a TTL needs it
        self.ttl: float | None = None  # its own TTL (the expiration property), seconds
        # its deaths as the broker recorded them (dead_letter.py): None for a message that never
        # died here (an x-death header a client sent is its data, not this), FROM_HEADERS for one
        # read back from the store (whose x-death the broker wrote)
        self.deaths: list[dict[str, Any]] | str | None = None

    @classmethod
    def from_store(cls, routing_raw: bytes, header: bytes, body: bytes, arrived: float | None) -> Message:
        """A message read back from the store (``routing_raw``: exchange and key as shortstrs)."""
        exchange, routing_key = _routing(routing_raw)
        return cls._stored(exchange, routing_key, routing_raw, header, body, arrived)

    @classmethod
    def many_from_store(cls, stored: Iterable[tuple[Any, tuple]]) -> list[Message]:
        """``from_store`` for the messages of ``(key, stored message)`` pairs (a stream read's;
        a stored message is ``(routing_raw, header, body, arrived)``): each routing that repeats
        the one before is decoded once."""
        messages = []
        routing: bytes | None = None
        exchange = routing_key = ""
        stored_message = cls._stored
        for _, (routing_raw, header, body, arrived) in stored:
            if routing_raw != routing:
                routing = routing_raw
                exchange, routing_key = _routing(routing_raw)
            messages.append(stored_message(exchange, routing_key, routing_raw, header, body, arrived))
        return messages

    @classmethod
    def _stored(cls, exchange: str, routing_key: str, routing_raw: bytes, header: bytes, body: bytes,
                arrived: float | None) -> Message:
        message = cls(exchange, routing_key, routing_raw, header, body)
        message.arrived = arrived
        message.deaths = FROM_HEADERS
        if header[12] & 0x01:  # the expiration property (validated when it was published)
            expiration = message.properties.expiration
            if expiration and expiration.isdigit():
                message.ttl = int(expiration) / 1000
        return message

    def set_reply_to(self, reply_to: str) -> None:
        """Rewrite the ``reply_to`` property (direct reply-to): a new content header."""
        properties = self.properties
        properties.reply_to = reply_to
        self.header = encode_content_header(len(self.body), properties)

    @property
    def persistent(self) -> bool:
        """delivery_mode 2, read from the raw header (properties stay undecoded)."""
        return delivery_mode(self.header) == 2

    @property
    def properties(self) -> Any:
        """The decoded ``Basic.Properties`` (decoded once, on first use)."""
        if self._properties is None:
            self._properties = decode_properties(self.header)
        return self._properties

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    @property
    def size(self) -> int:
        return len(self.body)

    def __repr__(self) -> str:
        return f"Message({self.exchange!r}, {self.routing_key!r}, {len(self.body)} bytes)"
