"""Consumer timeouts: a delivery left unacknowledged for longer than its timeout ends its consumer.

The timeout of a delivery is, first found: its consumer's ``x-consumer-timeout`` argument
(``basic.consume``), its queue's (``x-consumer-timeout`` argument or ``consumer-timeout`` policy,
the lower of the two and of an operator policy's), the broker's ``consumer_timeout`` (off unless
configured). All in milliseconds; 0 or absent: none.

What happens then is RabbitMQ 4.x's: a consumer whose connection advertised
``consumer_cancel_notify`` gets ``basic.cancel``, and its unacknowledged deliveries on that channel
return to their queues (redelivered, counted by a queue that counts deliveries); a late ack, nack
or reject of one of them is ignored rather than an unknown-tag error. A ``basic.get`` delivery, a
cancelled consumer's, or a consumer whose client cannot take ``basic.cancel`` closes the channel
with 406 and RabbitMQ 3.x's text (which returns all of the channel's deliveries).

Deliveries carry no timestamp (the hot path stays as it is): once a second each channel with
unacknowledged deliveries gets a mark ``(last delivery tag, now)``, and a delivery's age is taken
from the first mark at or after its tag. Ages are never overestimated, so a timeout fires between
its value and about a second later, like RabbitMQ's coarse timer. Nothing is tracked while no
timeout is configured anywhere.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from amqpbroker.errors import ChannelError, ReplyCode

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker
    from amqpbroker.broker.channel import Channel
    from amqpbroker.broker.consumer import Consumer

__all__ = ["ConsumerTimeouts", "CHECK_SECONDS", "consumer_timeout_argument"]

log = logging.getLogger("amqpbroker.consumer_timeouts")

CHECK_SECONDS = 1.0
_MAX_MARKS = 512  # per channel; past it every other older mark goes (the oldest stays: ages only get younger)
TIMED_OUT_TEXT = ("delivery acknowledgement on channel {} timed out. Timeout value used: "
                  "{} ms. This timeout value can be configured, see consumers doc guide to learn more")


def consumer_timeout_argument(arguments: dict[str, Any]) -> int | None:
    """A ``basic.consume``'s ``x-consumer-timeout`` (ms), or None; a bad one raises ValueError."""
    value = arguments.get("x-consumer-timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid x-consumer-timeout {value!r}: a non-negative number of milliseconds")
    return value or None


def _queue_timeout(queue: Any) -> int | None:
    options = queue.options
    return options.consumer_timeout if options is not None else None


class ConsumerTimeouts:
    def __init__(self, default_ms: int = 0) -> None:
        self.default_ms = default_ms
        self._marks: dict[Channel, deque[tuple[int, float]]] = {}
        self._reclaimed: dict[Channel, set[int]] = {}
        self._next_check = 0.0
        self.timed_out = 0  # consumers cancelled and channels closed, since the start

    def reclaimed(self, channel: Channel, tag: int) -> bool:
        """Was ``tag`` taken back from a timed-out consumer (a late ack is then ignored)?"""
        held = self._reclaimed.get(channel)
        return held is not None and tag in held

    def check(self, broker: Broker, now: float) -> None:
        """Once a second (the broker's timer calls it more often): act on what timed out."""
        if now < self._next_check:
            return
        self._next_check = now + CHECK_SECONDS
        shortest = self._shortest_timeout(broker)
        live = set()
        for session in list(broker.sessions):
            for channel in list(session.channels.values()):
                live.add(channel)
                if shortest is not None and channel.unacked:
                    self._check_channel(channel, now, shortest)
                else:
                    self._marks.pop(channel, None)
        for held in (self._marks, self._reclaimed):
            for channel in [channel for channel in held if channel not in live]:
                del held[channel]

    def _shortest_timeout(self, broker: Broker) -> int | None:
        """The shortest timeout anything has (None: nothing to watch)."""
        found = [self.default_ms] if self.default_ms else []
        for vhost in broker.vhosts.values():
            for queue in vhost.queues.values():
                timeout = _queue_timeout(queue)
                if timeout:
                    found.append(timeout)
                for consumer in queue.consumers:
                    timeout = consumer.timeout
                    if timeout:
                        found.append(timeout)
        return min(found) if found else None

    def _timeout_of(self, channel: Channel, queue: Any, consumer: Consumer | None) -> int | None:
        if consumer is not None and channel.consumers.get(consumer.tag) is consumer and consumer.timeout:
            return consumer.timeout
        return _queue_timeout(queue) or self.default_ms or None

    def _ages(self, channel: Channel, now: float) -> Iterator[tuple[int, float, Any]]:
        """Each unacknowledged delivery, oldest first, with its age in ms (never overestimated)."""
        marks = self._marks[channel]
        index = 0
        for tag, delivery in channel.unacked.items():
            while marks[index][0] < tag:  # the last mark holds the channel's latest tag
                index += 1
            yield tag, (now - marks[index][1]) * 1000, delivery

    def _check_channel(self, channel: Channel, now: float, shortest: int) -> None:
        marks = self._marks.setdefault(channel, deque())
        marks.append((channel.next_tag, now))
        oldest = next(iter(channel.unacked))
        while marks[0][0] < oldest:
            marks.popleft()
        if len(marks) > _MAX_MARKS:
            kept = list(marks)
            marks.clear()
            marks.extend(kept[:-(_MAX_MARKS // 2):2] + kept[-(_MAX_MARKS // 2):])
        expired: dict[Consumer | None, int] = {}
        for _, age, (queue, _, consumer) in self._ages(channel, now):
            if age < shortest:
                break  # every later delivery is younger still
            timeout = self._timeout_of(channel, queue, consumer)
            if timeout is not None and age >= timeout and consumer not in expired:
                expired[consumer] = timeout
        for consumer, timeout in expired.items():
            if channel.number not in channel.session.channels:
                return  # closed by an earlier one
            self._time_out(channel, consumer, timeout)

    def _time_out(self, channel: Channel, consumer: Consumer | None, timeout: int) -> None:
        session = channel.session
        self.timed_out += 1
        active = consumer is not None and channel.consumers.get(consumer.tag) is consumer
        if active and session.connection.client_capability("consumer_cancel_notify"):
            log.warning("consumer %r on channel %d of %s (queue '%s') did not acknowledge a delivery within "
                        "%d ms: cancelled, its deliveries requeued", consumer.tag, channel.number, session.name,
                        consumer.queue.name, timeout)
            tags = [tag for tag, delivery in channel.unacked.items() if delivery[2] is consumer]
            self._reclaimed.setdefault(channel, set()).update(tags)
            deliveries = [channel.unacked.pop(tag) for tag in tags]
            session.remove_consumer(channel, consumer)
            session.cancel_by_broker(consumer)
            channel.settle(deliveries, requeue=True)
            return
        error = ChannelError(ReplyCode.PRECONDITION_FAILED, TIMED_OUT_TEXT.format(channel.number, timeout))
        log.warning("%s (%s)", error.reply_text, session.name)
        session.connection.close_channel(channel.number, error)
        session.mark_output()
