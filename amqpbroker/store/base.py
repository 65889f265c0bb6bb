"""The store's narrow interface. It knows keys and values, not consumers or requeue policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Store", "Recovered", "StoredMessage", "StoreError"]


class StoreError(Exception):
    """The store cannot be opened, read or written (corrupt, locked, disk full, I/O error)."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    routing_raw: bytes  # exchange and routing key as two shortstrs
    header: bytes  # content header payload as published
    body: bytes


@dataclass
class Recovered:
    """Everything a restart needs, read once before the broker serves."""

    exchanges: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    bindings: list[dict[str, Any]] = field(default_factory=list)
    entries: dict[int, list[tuple[int, int, bool]]] = field(default_factory=dict)  # queue id -> (seq, message id, delivered)
    messages: dict[int, StoredMessage] = field(default_factory=dict)


class Store(Protocol):
    def recover(self) -> Recovered:
        """Read the whole durable state (blocking; called before serving)."""

    def write(self, ops: list[tuple]) -> None:
        """Apply journal operations as one atomic batch, without waiting for the disk."""

    def sync(self) -> None:
        """Make every write so far durable (blocking; called from a worker thread)."""

    def remove(self, keys: list[tuple]) -> None:
        """Drop orphans found at recovery (``("message", id)`` / ``("entry", queue_id, seq)``)."""

    def close(self) -> None: ...
