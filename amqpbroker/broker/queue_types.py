"""Queue types: what differs between a classic and a quorum queue (and a stream), in one object per type rather
than flags spread through ``Queue`` (the first step of making queue types strategies behind one
interface, before streams: issue #12).

A queue's type comes from its ``x-queue-type`` argument at declare and never changes. What a type
decides today:

- ``counts_every_delivery``: every delivery carries ``x-delivery-count`` (quorum), or only
  redeliveries do (classic);
- ``takes_global_qos``: a consumer may use a channel with ``basic.qos global=true`` (quorum
  queues refuse it with 540, as RabbitMQ);
- ``dead_letters_at_least_once``: ``x-dead-letter-strategy: at-least-once`` is honoured;
- ``default_delivery_limit``: which of the broker's defaults applies when no
  ``x-delivery-limit`` is set;
- ``needs_durable_shared``: only durable, non-exclusive, non-auto-delete queues (406 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QueueType", "CLASSIC", "QUORUM", "STREAM", "queue_type_of"]


@dataclass(frozen=True)
class QueueType:
    name: str
    counts_every_delivery: bool
    takes_global_qos: bool
    dead_letters_at_least_once: bool
    needs_durable_shared: bool

    def default_delivery_limit(self, defaults: tuple[int | None, int | None]) -> int | None:
        """``defaults``: the vhost's (classic, quorum) delivery limits."""
        return defaults[1] if self.name == "quorum" else defaults[0]


CLASSIC = QueueType("classic", counts_every_delivery=False, takes_global_qos=True,
                    dead_letters_at_least_once=False, needs_durable_shared=False)
QUORUM = QueueType("quorum", counts_every_delivery=True, takes_global_qos=False,
                   dead_letters_at_least_once=True, needs_durable_shared=True)
# a stream (stream.py) is its own class of queue; these say what it shares with the others
STREAM = QueueType("stream", counts_every_delivery=False, takes_global_qos=True,
                   dead_letters_at_least_once=False, needs_durable_shared=True)
_BY_NAME = {CLASSIC.name: CLASSIC, QUORUM.name: QUORUM, STREAM.name: STREAM}


def queue_type_of(arguments: dict[str, Any]) -> QueueType:
    """The type an (already validated) ``x-queue-type`` names; classic when absent."""
    name = arguments.get("x-queue-type", CLASSIC.name)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return _BY_NAME.get(name, CLASSIC)
