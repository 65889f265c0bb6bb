"""A queue's consumers: the part of :class:`~amqpbroker.broker.queue.Queue` that keeps who consumes
from it, and the general dispatch path, which picks who gets each message.

Consumers are served round-robin within their prefetch credit (``Queue.dispatch``). When they
have different priorities (``x-priority``) they are grouped by priority, highest first, and a
message goes to the highest group that has a consumer with credit, taking turns within the group;
with ``x-single-active-consumer`` only the first consumer gets messages, and the next one in line
takes over when it goes. Either makes the queue use the general dispatch path
(:meth:`ConsumersMixin._dispatch_general`, chosen by ``Queue._update_dispatch``), as do messages
with a TTL (the head is checked before every delivery) and delivery counts (each delivery may
carry ``x-delivery-count``). A stream keeps more per consumer (stream.py overrides these).

:class:`ConsumersMixin` holds no state of its own (``__slots__ = ()``): it works on the Queue's
``consumers``, ``exclusive_consumer``, ``had_consumers``, ``single_active``,
``_consumer_groups``, ``_turn``, ``ready``, ``ready_bytes``, ``expiring`` and ``host``, and calls
its ``_mark_dirty``, ``touch``, ``_update_dispatch``, ``_after_dispatch``, ``_drop_expired_head``
(queue_limits.py) and ``delivery_header`` (queue_redelivery.py).
"""

from __future__ import annotations

from typing import Any

from amqpbroker.broker.consumer import Consumer

__all__ = ["ConsumersMixin"]


class ConsumersMixin:
    """Adding and removing consumers, their priority groups, and the general dispatch path (see
    the module's docstring); mixed into ``Queue``."""

    __slots__ = ()

    def consumer_for(self, tag: str, channel: Any, *, no_ack: bool, exclusive: bool, prefetch: int,
                     arguments: dict[str, Any]) -> Consumer:
        """The consumer a ``basic.consume`` makes (a stream checks and keeps more: stream.py)."""
        return Consumer(tag, self, channel, no_ack=no_ack, exclusive=exclusive, prefetch=prefetch,
                        arguments=arguments)

    def add_consumer(self, consumer: Consumer, exclusive: bool) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        if exclusive:
            self.exclusive_consumer = consumer
        self._group_consumers()
        self._mark_dirty(self)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._group_consumers()
            if not self.consumers:
                self.touch()
            elif self.single_active:
                self._mark_dirty(self)  # the next one in line takes over
        if self.exclusive_consumer is consumer:
            self.exclusive_consumer = None

    def _group_consumers(self) -> None:
        """Consumers by priority (``x-priority``), highest first; empty (the plain round-robin)
        when they all have the same one and the queue has no single active consumer."""
        priorities = sorted({consumer.priority for consumer in self.consumers}, reverse=True)
        if len(priorities) <= 1 and not self.single_active:
            self._consumer_groups = []
        else:
            self._consumer_groups = [[consumer for consumer in self.consumers if consumer.priority == level]
                                     for level in priorities]
        self._update_dispatch()

    def consumer_ready(self) -> None:
        """A consumer of this queue got credit back: serve it in the next dispatch round."""
        if self.ready:
            self._mark_dirty(self)

    # ---------------------------------------------------------------- the general dispatch path

    def _dispatch_general(self) -> None:
        """``dispatch`` for a queue that may hold messages with a TTL (the head is checked before
        every delivery, so an expired message is never handed out), or whose consumers have
        priorities (the highest with credit first, round-robin among equals) or take turns as
        the single active consumer (only the first one gets messages)."""
        consumers = self.consumers
        if not consumers:
            return
        groups = [consumers[:1]] if self.single_active else (self._consumer_groups or [consumers])
        now = self.host.clock() if self.expiring else 0.0
        ready = self.ready
        sent = 0
        while True:
            if self.expiring:
                self._drop_expired_head(now)
            if not ready:
                break
            consumer = self._next_consumer(groups)
            if consumer is None:
                break
            entry = ready.popleft()
            self.ready_bytes -= len(entry[1].body)
            consumer.channel.deliver(consumer, self, entry, self.delivery_header(entry))
            sent += 1
        self._after_dispatch(sent)

    def _next_consumer(self, groups: list[list[Consumer]]) -> Consumer | None:
        """The next consumer with credit: from the highest priority group that has one, taking
        turns within the group."""
        for group in groups:
            count = len(group)
            start = self._turn % count
            for step in range(count):
                consumer = group[(start + step) % count]
                if consumer.has_credit():
                    self._turn = start + step + 1
                    return consumer
        return None
