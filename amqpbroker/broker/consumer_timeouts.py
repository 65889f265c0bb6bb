"""Consumer timeouts: a delivery left unacknowledged for longer than its timeout ends its consumer.

The timeout of a delivery is, first found: its consumer's ``x-consumer-timeout`` argument
(``basic.consume``), its queue's (``x-consumer-timeout`` argument or ``consumer-timeout`` policy,
the lower of the two and of an operator policy's), the broker's ``consumer_timeout`` (off unless
configured). All in milliseconds; 0 or absent: none.

What happens then is RabbitMQ 4.3+'s: a consumer whose connection advertised
``consumer_cancel_notify`` gets ``basic.cancel``, and its unacknowledged deliveries on that channel
return to their queues (redelivered, counted by a queue that counts deliveries); a late ack, nack
or reject of one of them is ignored rather than an unknown-tag error. A ``basic.get`` delivery, a
cancelled consumer's, or a consumer whose client cannot take ``basic.cancel`` closes the channel
with 406 and RabbitMQ 3.x's text (which returns all of the channel's deliveries).

Each unacknowledged delivery carries the monotonic time it was sent (``Channel.unacked``); once
a second the channels holding deliveries older than the shortest timeout anywhere are looked at,
oldest delivery first, so a timeout fires between its value and a second later (RabbitMQ's
timer is coarser). Nothing is looked at while no timeout is configured anywhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from amqpbroker.broker import channel as delivery_clock
from amqpbroker.errors import ChannelError, ReplyCode

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker
    from amqpbroker.broker.channel import Channel
    from amqpbroker.broker.consumer import Consumer

__all__ = ["ConsumerTimeouts", "CHECK_SECONDS", "consumer_timeout_argument"]

log = logging.getLogger("amqpbroker.consumer_timeouts")

CHECK_SECONDS = 1.0
_RECLAIMED_KEPT = 4096  # per channel: tags whose late ack is ignored (older ones are an unknown tag again)
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
    """The queue's own: the lowest of its argument, its policy's and its operator policy's."""
    found = [value for value in (
        queue.arguments.get("x-consumer-timeout"),
        queue.policy.definition.get("consumer-timeout") if queue.policy is not None else None,
        queue.operator_policy.definition.get("consumer-timeout") if queue.operator_policy is not None else None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0]
    return min(found) if found else None


class ConsumerTimeouts:
    def __init__(self, default_ms: int = 0) -> None:
        self.default_ms = default_ms
        self._reclaimed: dict[Channel, dict[int, None]] = {}  # (ordered: the oldest go first)
        self._next_check = 0.0
        self.timed_out = 0  # consumers cancelled and channels closed, since the start

    def reclaimed(self, channel: Channel, tag: int) -> bool:
        """Was ``tag`` taken back from a timed-out consumer (a late ack is then ignored)?"""
        held = self._reclaimed.get(channel)
        return held is not None and tag in held

    def check(self, broker: Broker) -> None:
        """Once a second (the broker's timer calls it more often): act on what timed out."""
        now = delivery_clock.monotonic()  # the clock deliveries are stamped with (no wall-clock steps)
        if self._next_check - CHECK_SECONDS < now < self._next_check:
            return
        self._next_check = now + CHECK_SECONDS
        channels = [channel for session in list(broker.sessions) for channel in list(session.channels.values())]
        live = set(channels)
        for channel in [channel for channel in self._reclaimed if channel not in live]:
            del self._reclaimed[channel]
        holding = [channel for channel in channels if channel.unacked]
        shortest = self._shortest(broker) if holding else None
        if shortest is None:
            return
        for channel in holding:
            if channel.number in channel.session.channels:  # (not closed by an earlier one)
                self._check_channel(channel, now, shortest)

    def _shortest(self, broker: Broker) -> int | None:
        """The shortest timeout anything has (None: nothing to watch)."""
        found = [self.default_ms] if self.default_ms else []
        for vhost in broker.vhosts.values():
            for queue in vhost.queues.values():
                timeout = _queue_timeout(queue)
                if timeout:
                    found.append(timeout)
                for consumer in queue.consumers:
                    if consumer.timeout:
                        found.append(consumer.timeout)
        return min(found) if found else None

    def _timeout_of(self, channel: Channel, queue: Any, consumer: Consumer | None) -> int | None:
        if consumer is not None and channel.consumers.get(consumer.tag) is consumer and consumer.timeout:
            return consumer.timeout
        return _queue_timeout(queue) or self.default_ms or None

    def _check_channel(self, channel: Channel, now: float, shortest: int) -> None:
        expired: dict[Consumer | None, tuple[int, Any]] = {}
        for queue, _, consumer, delivered_at in channel.unacked.values():
            age = (now - delivered_at) * 1000
            if age < shortest:
                break  # every later delivery is younger still
            timeout = self._timeout_of(channel, queue, consumer)
            if timeout is not None and age >= timeout and consumer not in expired:
                expired[consumer] = (timeout, queue)
        for consumer, (timeout, queue) in expired.items():
            if channel.number not in channel.session.channels:
                return  # closed by an earlier one
            queue.counters.consumer_timeouts += 1
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
            reclaimed = self._reclaimed.setdefault(channel, {})
            reclaimed.update(dict.fromkeys(tags))
            for old in list(reclaimed)[:max(0, len(reclaimed) - _RECLAIMED_KEPT)]:
                del reclaimed[old]
            deliveries = [channel.unacked.pop(tag) for tag in tags]
            try:
                session.remove_consumer(channel, consumer)
                session.cancel_by_broker(consumer)
            finally:  # the deliveries go back whatever happened to the consumer
                channel.settle(deliveries, requeue=True)
            return
        error = ChannelError(ReplyCode.PRECONDITION_FAILED, TIMED_OUT_TEXT.format(channel.number, timeout))
        log.warning("%s (%s)", error.reply_text, session.name)
        session.connection.close_channel(channel.number, error)
        session.mark_output()
