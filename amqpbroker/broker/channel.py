"""A channel's broker-side state: consumers, delivery tags, unacked messages, prefetch and
transactions; its publisher confirms are in ``channel_confirms.py``.

Delivery tags count up from 1 per channel; ``unacked`` maps each outstanding tag to
``(queue, entry, consumer, delivered_at)`` in tag order (dict insertion order), so ``multiple``
acks walk it from the front (``delivered_at``: the monotonic clock, for consumer timeouts).
"""

from __future__ import annotations

from collections.abc import Iterable
from time import monotonic
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.channel_confirms import ConfirmsMixin
from amqpbroker.broker.dead_letter import REJECTED
from amqpbroker.codec.frames import FRAME_END_BYTE
from amqpbroker.codec.methods import Ack, encode_method, method_frame
from amqpbroker.codec.writer import append_content, append_deliver, deliver_parts, get_ok_payload, pack_delivery_tag
from amqpbroker.errors import precondition_failed

if TYPE_CHECKING:
    from amqpbroker.broker.consumer import Consumer
    from amqpbroker.broker.queue import Entry, Queue
    from amqpbroker.broker.session import Session

__all__ = ["Channel", "OUTPUT_HIGH_WATER"]

# A consumer stops getting messages while its connection holds this many unsent output pieces
# (nine per delivery, seven in deliver_stream) or message bytes; the transport's writer resumes it once the socket took
# them.
OUTPUT_HIGH_WATER = 8192
OUTPUT_BYTES_HIGH_WATER = 4 << 20

Unacked = tuple  # (queue, entry, consumer or None for basic.get, delivered_at)


# body sizes the published-message histogram counts up to (bytes), as rabbitmq_prometheus's
# rabbitmq_message_size_bytes; one more bucket for larger ones
MESSAGE_SIZE_BOUNDS = (100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 50_000_000, 100_000_000)
SIZE_TOTAL = len(MESSAGE_SIZE_BOUNDS) + 1  # Channel.size_counts[SIZE_TOTAL]: the body bytes published


def _count_acked(queue: Any, consumer: Consumer | None, count: int) -> None:
    queue.unacked_count -= count
    queue.completed += count
    if consumer is not None:
        consumer.unacked -= count


class Channel(ConfirmsMixin):
    __slots__ = (
        "number", "session", "out", "frame_max", "next_tag", "unacked", "consumers",
        "consumer_prefetch", "global_prefetch", "confirm", "publish_seq",
        "confirms_pending", "nacks_pending", "confirmed_through", "settled_ahead", "tx", "last_queue",
        "reply_queue", "global_qos_requested", "acknowledged", "redelivered", "auto_delivered",
        "size_counts",
    )

    def __init__(self, session: Session, number: int) -> None:
        self.number = number
        self.session = session
        self.out = session.out
        self.frame_max = session.connection.frame_max
        self.next_tag = 0
        self.unacked: dict[int, Unacked] = {}
        self.consumers: dict[str, Consumer] = {}
        self.consumer_prefetch = 0
        self.global_prefetch = 0
        self.confirm = False
        self.publish_seq = 0
        self.confirms_pending: list[int] = []
        self.nacks_pending: list[int] = []
        self.confirmed_through = 0
        self.settled_ahead: set[int] = set()
        self.tx: list[tuple] | None = None
        self.last_queue = ""
        self.reply_queue: Queue | None = None  # its direct reply-to consumer's hidden queue
        self.global_qos_requested = False  # basic.qos global=true (quorum queues refuse it)
        # message counters for metrics (deliveries are next_tag: one tag per delivery)
        self.acknowledged = 0
        self.redelivered = 0  # deliveries (and gets) of redelivered messages
        self.auto_delivered = 0  # deliveries to consumers without acks
        # messages published per body size bucket (MESSAGE_SIZE_BOUNDS, one more for larger
        # ones), then their body bytes: one list increment per publish counts the publishes and
        # the size histogram (rabbitmq_message_size_bytes)
        self.size_counts = [0] * (SIZE_TOTAL + 1)

    @property
    def published(self) -> int:
        """Messages published on this channel."""
        return sum(self.size_counts) - self.size_counts[SIZE_TOTAL]

    @property
    def received_bytes(self) -> int:
        return self.size_counts[SIZE_TOTAL]

    # ---------------------------------------------------------------- sending

    def can_send(self) -> bool:
        if len(self.out) < OUTPUT_HIGH_WATER and self.session.out_bytes < OUTPUT_BYTES_HIGH_WATER:
            return True
        self.session.output_saturated = True
        return False

    def deliver(self, consumer: Consumer, queue: Queue, entry: Entry, header: bytes | None = None) -> None:
        """Hand ``entry`` to ``consumer``; ``header`` replaces the message's content header for
        this delivery (a quorum queue's ``x-delivery-count``)."""
        tag = self.next_tag = self.next_tag + 1
        message = entry[1]
        append_deliver(self.out, self.number, consumer.prefix, tag, entry[2], message.routing_raw,
                       header or message.header, message.body, self.frame_max)
        if entry[2]:
            self.redelivered += 1
        if consumer.no_ack:
            self.auto_delivered += 1
            queue.completed += 1
            if message.message_id is not None or queue.delivery_counts:
                queue.discard(entry)
        else:
            self.unacked[tag] = (queue, entry, consumer, monotonic())
            consumer.unacked += 1
            queue.unacked_count += 1
            if message.message_id is not None and not entry[2] and queue.queue_id is not None:
                queue.journal.mark_delivered(queue, entry)
        session = self.session
        session.out_bytes += len(message.body)
        if not session.output_marked:  # (mark_output, inlined: this runs once per delivery)
            session.mark_output()

    def deliver_stream(self, consumer: Consumer, queue: Queue, offset: int, items: Iterable[Any], tailed: bool) -> int:
        """Hand a stream's messages from ``offset`` on to ``consumer``, which takes every one, as
        :meth:`deliver` would one at a time, until the connection's output is full: how many
        went. ``items`` are log tail entries when ``tailed`` (message, header with the offset,
        filter value), else messages read back from the store (their header has the offset).
        Messages alike in routing and sizes share their frames' fixed parts."""
        out, number, prefix, frame_max = self.out, self.number, consumer.prefix, self.frame_max
        unacked = self.unacked
        session = self.session
        room = OUTPUT_BYTES_HIGH_WATER - session.out_bytes
        tag = start = self.next_tag
        now = monotonic()
        sent_bytes = 0
        routing = None
        header_size = body_size = -1
        lead = middle = body_head = b""
        for item in items:
            message, header = (item[0], item[1]) if tailed else (item, item.header)
            tag += 1
            body = message.body
            size = len(body)
            if size != body_size or len(header) != header_size or message.routing_raw != routing:
                if 0 < size <= frame_max - 8:
                    routing, header_size, body_size = message.routing_raw, len(header), size
                    lead, middle, body_head = deliver_parts(number, prefix, routing, header_size, size)
                else:  # (a body in several frames, or none)
                    append_deliver(out, number, prefix, tag, False, message.routing_raw, header, body, frame_max)
                    routing = None
            if routing is not None:
                out += (lead, pack_delivery_tag(tag, False), middle, header, body_head, body, FRAME_END_BYTE)
            unacked[tag] = (queue, (offset, message, False), consumer, now)
            offset += 1
            sent_bytes += size
            if len(out) >= OUTPUT_HIGH_WATER or sent_bytes >= room:
                session.output_saturated = True
                break
        sent = tag - start
        self.next_tag = tag
        consumer.unacked += sent
        queue.unacked_count += sent
        session.out_bytes += sent_bytes
        if sent and not session.output_marked:
            session.mark_output()
        return sent

    def send_get_ok(self, queue: Queue, entry: Entry, no_ack: bool) -> None:
        tag = self.next_tag = self.next_tag + 1
        message = entry[1]
        self.out.append(method_frame(self.number, get_ok_payload(tag, entry[2], message.routing_raw,
                                                                 queue.message_count)))
        append_content(self.out, self.number, queue.delivery_header(entry) or message.header, message.body,
                       self.frame_max)
        self.session.out_bytes += len(message.body)
        if entry[2]:
            self.redelivered += 1
        totals = self.session.broker.totals
        if no_ack:
            totals.get_auto_ack += 1
            queue.completed += 1
            queue.discard(entry)
        else:
            totals.get_manual_ack += 1
            self.unacked[tag] = (queue, entry, None, monotonic())
            queue.unacked_count += 1
            if message.message_id is not None and not entry[2] and queue.queue_id is not None:
                queue.journal.mark_delivered(queue, entry)

    def send(self, method: Any) -> None:
        self.out.append(encode_method(self.number, method))
        self.session.mark_output()

    # ---------------------------------------------------------------- acks

    def take_unacked(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        """Remove and return the deliveries an ack/nack/reject names; unknown tags are a 406."""
        unacked = self.unacked
        if multiple:
            if delivery_tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if delivery_tag not in unacked:  # even with multiple, the tag itself must be outstanding
                if not self._reclaimed(delivery_tag):
                    raise precondition_failed(f"unknown delivery tag {delivery_tag}")
            elif next(reversed(unacked)) == delivery_tag:  # all of them (tags go up in the dict's order)
                taken = list(unacked.values())
                unacked.clear()
                return taken
            tags = []
            for tag in unacked:
                if tag > delivery_tag:
                    break
                tags.append(tag)
            return [unacked.pop(tag) for tag in tags]
        found = unacked.pop(delivery_tag, None)
        if found is None:
            if self._reclaimed(delivery_tag):
                return []
            raise precondition_failed(f"unknown delivery tag {delivery_tag}")
        return [found]

    def _reclaimed(self, tag: int) -> bool:
        """Was the tag taken back from a consumer that timed out? (Its late ack is ignored.)"""
        return self.session.broker.consumer_timeouts.reclaimed(self, tag)

    def check_tags(self, delivery_tag: int, multiple: bool) -> None:
        """Raise as ``take_unacked`` would, without taking anything (for transactions)."""
        if multiple and delivery_tag == 0:
            return
        if delivery_tag not in self.unacked and not self._reclaimed(delivery_tag):
            raise precondition_failed(f"unknown delivery tag {delivery_tag}")

    def settle(self, deliveries: Iterable[Unacked], requeue: bool, rejected: bool = False) -> None:
        """Finish deliveries: drop them (ack; reject without requeue, which dead-letters) or put
        them back."""
        freed: dict[Queue, list] = {}
        for queue, entry, consumer, _ in deliveries:
            queue.unacked_count -= 1
            if consumer is not None:
                consumer.unacked -= 1
            returned = freed.get(queue)
            if returned is None:
                returned = freed[queue] = []
            if requeue:
                returned.append(entry)
            elif rejected:
                queue.discard(entry, reason=REJECTED)
            elif entry[1].message_id is not None or queue.delivery_counts:  # (stored, or counted)
                queue.discard(entry)
        for queue, entries in freed.items():
            if entries:
                if queue.deleted:
                    for entry in entries:
                        queue.discard(entry)
                else:
                    queue.requeue(entries, failed=rejected)
            queue.consumer_ready()
        if self.global_prefetch:
            for consumer in self.consumers.values():
                consumer.queue.consumer_ready()

    def ack(self, ack: Ack) -> None:
        """``settle(deliveries, requeue=False)`` for what an ack names, with the counts of each
        run of deliveries from one queue to one consumer (usually all of them) changed once."""
        deliveries = self.take_unacked(ack.delivery_tag, ack.multiple)
        self.acknowledged += len(deliveries)
        queues: list[Queue] = []
        queue = consumer = None
        count = 0
        for delivered_from, entry, delivered_to, _ in deliveries:
            if delivered_from is not queue or delivered_to is not consumer:
                if count:
                    _count_acked(queue, consumer, count)
                queue, consumer, count = delivered_from, delivered_to, 0
                if queue not in queues:
                    queues.append(queue)
            count += 1
            if entry[1].message_id is not None or queue.delivery_counts:  # (stored, or counted)
                queue.discard(entry)
        if count:
            _count_acked(queue, consumer, count)
        for queue in queues:
            queue.consumer_ready()
        if self.global_prefetch:
            for consumer in self.consumers.values():
                consumer.queue.consumer_ready()

    def requeue_all(self) -> None:
        deliveries = list(self.unacked.values())
        self.unacked.clear()
        self.settle(deliveries, requeue=True)
