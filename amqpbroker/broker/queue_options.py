"""What a queue's ``x-`` arguments make it do: TTLs, expiry, length limits, dead-lettering.

Parsed once at declare (arguments were validated by ``arguments.py`` already). A queue without
any of them has no ``QueueOptions`` at all (``Queue.options is None``), which keeps the plain
queue's path free of these checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QueueOptions", "DROP_HEAD", "REJECT_PUBLISH", "REJECT_PUBLISH_DLX"]

DROP_HEAD, REJECT_PUBLISH, REJECT_PUBLISH_DLX = "drop-head", "reject-publish", "reject-publish-dlx"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class QueueOptions:
    message_ttl: float | None = None  # seconds
    expires: float | None = None  # seconds unused before the queue is deleted
    max_length: int | None = None  # ready messages
    max_length_bytes: int | None = None  # ready body bytes
    overflow: str = DROP_HEAD
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    deduplicate: bool = False  # x-message-deduplication (the cache is the queue's)
    # x-dead-letter-strategy: at-least-once, which RabbitMQ honours only with reject-publish
    # (dead_letter_hold.py; quorum queues only)
    dead_letter_at_least_once: bool = False

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> QueueOptions | None:
        ttl = arguments.get("x-message-ttl")
        expires = arguments.get("x-expires")
        dlx = arguments.get("x-dead-letter-exchange")
        dlrk = arguments.get("x-dead-letter-routing-key")
        options = cls(
            message_ttl=ttl / 1000 if ttl is not None else None,
            expires=expires / 1000 if expires is not None else None,
            max_length=arguments.get("x-max-length"),
            max_length_bytes=arguments.get("x-max-length-bytes"),
            overflow=_text(arguments.get("x-overflow", DROP_HEAD)),
            dead_letter_exchange=_text(dlx) if dlx is not None else None,
            dead_letter_routing_key=_text(dlrk) if dlrk is not None else None,
            deduplicate=arguments.get("x-message-deduplication") is True,
            dead_letter_at_least_once=(
                _text(arguments.get("x-dead-letter-strategy", "")) == "at-least-once"
                and _text(arguments.get("x-overflow", DROP_HEAD)) == REJECT_PUBLISH and dlx is not None),
        )
        return None if options == cls() else options

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None
