"""A consumer: one ``basic.consume`` on a channel, with its own prefetch credit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amqpbroker.codec.writer import deliver_prefix

if TYPE_CHECKING:
    from amqpbroker.broker.channel import Channel
    from amqpbroker.broker.queue import Queue

__all__ = ["Consumer"]

UNLIMITED = 1 << 62


class Consumer:
    __slots__ = ("tag", "queue", "channel", "no_ack", "exclusive", "prefetch", "unacked", "prefix",
                 "arguments", "priority", "timeout")

    def __init__(self, tag: str, queue: Queue, channel: Channel, *, no_ack: bool, exclusive: bool,
                 prefetch: int, arguments: dict[str, Any]) -> None:
        self.tag = tag
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0
        self.prefix = deliver_prefix(tag)
        self.arguments = arguments
        priority = arguments.get("x-priority", 0)
        self.priority = priority if isinstance(priority, int) and not isinstance(priority, bool) else 0
        self.timeout: int | None = None  # x-consumer-timeout (ms; broker/consumer_timeouts.py)

    def has_credit(self) -> bool:
        """May this consumer take one more message now?"""
        channel = self.channel
        if not channel.can_send():
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        limit = channel.global_prefetch
        return not limit or len(channel.unacked) < limit

    def credit(self) -> int:
        """How many messages this consumer may take now, before its connection's output is
        looked at again (the caller checks that per message): prefetch and global limits."""
        channel = self.channel
        if not channel.can_send():
            return 0
        room = UNLIMITED
        if not self.no_ack:
            if self.prefetch:
                room = self.prefetch - self.unacked
            limit = channel.global_prefetch
            if limit:
                room = min(room, limit - len(channel.unacked))
        return room

    def __repr__(self) -> str:
        return f"<Consumer {self.tag!r} on {self.queue.name!r} unacked={self.unacked}>"
