"""How a task queue is doing, beyond its lengths: how old its oldest ready and oldest unacked
messages are, how often its messages came back, what its delivery limit and consumer timeouts
did, and per consumer the unacknowledged deliveries it holds and how old the oldest is.

Read by the management API and Prometheus; nothing here runs per message. Unacked ages come from
the time each delivery was sent (``Channel.unacked``, monotonic), ready ages from the time a
message arrived (``Message.arrived``, the vhost's clock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amqpbroker.broker import channel as delivery_clock

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker
    from amqpbroker.broker.consumer import Consumer
    from amqpbroker.broker.queue import Queue

__all__ = ["TaskCounters", "UnackedAges", "oldest_ready_age", "redelivery_histogram", "REDELIVERY_BUCKETS"]

REDELIVERY_BUCKETS = ("1", "2-5", "6+")  # how many times the messages now in a queue came back


class TaskCounters:
    """Per queue, since it was declared."""

    __slots__ = ("dropped_by_delivery_limit", "dead_lettered_by_delivery_limit", "consumer_timeouts",
                 "drop_warned_at")

    def __init__(self) -> None:
        self.dropped_by_delivery_limit = 0  # past x-delivery-limit, no dead-letter exchange
        self.dead_lettered_by_delivery_limit = 0
        self.consumer_timeouts = 0  # consumers cancelled or channels closed for its deliveries
        self.drop_warned_at: float | None = None  # (monotonic) the last warning about such a drop


def oldest_ready_age(queue: Queue, now: float) -> float | None:
    """Seconds the first ready message in memory has waited (None: none there, or not known)."""
    if not queue.ready:
        return None
    arrived = queue.ready[0][1].arrived
    return max(0.0, now - arrived) if arrived is not None else None


def redelivery_histogram(queue: Queue) -> dict[str, int]:
    """How many of the queue's messages came back once, 2 to 5 times, 6 times or more."""
    buckets = dict.fromkeys(REDELIVERY_BUCKETS, 0)
    for count in queue.delivery_counts.values():
        buckets["1" if count == 1 else "2-5" if count <= 5 else "6+"] += 1
    return buckets


class UnackedAges:
    """One pass over every channel's unacknowledged deliveries: per queue and per consumer, when
    the oldest was sent."""

    def __init__(self, broker: Broker) -> None:
        self.now = delivery_clock.monotonic()  # the clock deliveries are stamped with
        self.by_queue: dict[Any, float] = {}
        self.by_consumer: dict[Any, float] = {}
        for session in broker.sessions:
            for channel in session.channels.values():
                seen_queues: set[Any] = set()
                for queue, _, consumer, sent in channel.unacked.values():  # oldest first
                    if queue not in seen_queues:
                        seen_queues.add(queue)
                        if sent < self.by_queue.get(queue, sent + 1):
                            self.by_queue[queue] = sent
                    if consumer is not None and consumer not in self.by_consumer:
                        self.by_consumer[consumer] = sent

    def of_queue(self, queue: Queue) -> float | None:
        sent = self.by_queue.get(queue)
        return None if sent is None else max(0.0, self.now - sent)

    def of_consumer(self, consumer: Consumer) -> float | None:
        sent = self.by_consumer.get(consumer)
        return None if sent is None else max(0.0, self.now - sent)
