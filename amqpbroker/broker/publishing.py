"""The publish path: a complete message from a channel, checked, routed and enqueued.

``basic.publish`` is the one method whose content arrives with it; the connection machine hands
over the method, the raw content header and the body once all are in. This is the hot path: one
test of the property flags decides whether any property needs a look.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.access import WRITE
from amqpbroker.broker.arguments import MAX_EXPIRY
from amqpbroker.broker.channel import MESSAGE_SIZE_BOUNDS, SIZE_TOTAL, Channel
from amqpbroker.broker.message import Message
from amqpbroker.broker.vhost import REPLY_TO
from amqpbroker.codec.methods import Publish, method_frame
from amqpbroker.codec.writer import append_content, return_payload
from amqpbroker.errors import ConnectionError, ReplyCode, access_refused, not_found, precondition_failed

if TYPE_CHECKING:
    from amqpbroker.broker.session import Session

__all__ = ["on_publish", "route", "message_ttl"]

_USER_ID_FLAG = 0x10  # user_id's bit in the low byte of the first property-flags word
_EXPIRATION_FLAG = 0x01  # expiration's bit in the high byte
_REPLY_TO_FLAG = 0x02  # reply_to's bit in the high byte


def _size_bucket(size: int) -> int:
    return bisect_left(MESSAGE_SIZE_BOUNDS, size)


def message_ttl(expiration: str | None) -> float | None:
    """A message's own TTL in seconds, from its ``expiration`` property (milliseconds as a
    decimal string); anything else is refused as RabbitMQ does."""
    if expiration is None:
        return None
    if not expiration.isdigit() or int(expiration) > MAX_EXPIRY:
        raise precondition_failed(f"invalid expiration '{expiration}': {{error,invalid_expiration}}")
    return int(expiration) / 1000


def on_publish(session: Session, number: int, publish: Publish, header: bytes, body: bytes) -> None:
    if not session.published:  # a publisher from now on: the memory alarm applies to it
        session.published = True
        if session.broker.alarms:
            session.block()
    channel = session.channels[number]
    size = len(body)
    counts = channel.size_counts  # (its sum is the channel's publish count; the last item the bytes)
    counts[0 if size <= 100 else 1 if size <= 1_000 else 2 if size <= 10_000 else 3 if size <= 100_000
           else _size_bucket(size)] += 1  # (MESSAGE_SIZE_BOUNDS, inline for the usual sizes)
    counts[SIZE_TOTAL] += size
    vhost = session.vhost
    access = session.access
    if publish.exchange not in access.writable:  # (checked before the exchange is looked up)
        access.check_publish(publish.exchange)
    exchange = vhost.exchanges.get(publish.exchange)
    if exchange is None:
        raise not_found(f"no exchange '{publish.exchange}' in vhost '{vhost.name}'")
    if publish.immediate:
        raise ConnectionError(ReplyCode.NOT_IMPLEMENTED, "immediate=true", 60, 40)
    if exchange.internal:
        raise access_refused(f"cannot publish to internal exchange '{publish.exchange}' "
                             f"in vhost '{vhost.name}'")
    if access.topic_permissions and exchange.type_name == "topic":
        access.check_topic(WRITE, publish.exchange, publish.routing_key)
    message = Message(publish.exchange, publish.routing_key, publish.routing_raw, header, body)
    message.arrived = vhost.clock()  # (TTLs count from it; the API shows how old a queue's head is)
    if header[12] & (_EXPIRATION_FLAG | _REPLY_TO_FLAG):  # one test on the usual path
        _special_properties(session, channel, message)
    if header[13] & _USER_ID_FLAG:
        user_id = message.properties.user_id
        if user_id is not None and user_id != session.user and not session.broker.users.may_impersonate(session.user):
            raise precondition_failed(f"user_id property set to '{user_id}' but authenticated "
                                      f"user was '{session.user}'")
    if channel.tx is not None:
        channel.tx.append((exchange, message, publish.mandatory))
        return
    route(session, channel, exchange, message, publish.mandatory)


def _special_properties(session: Session, channel: Channel, message: Message) -> None:
    """A per-message TTL (``expiration``), or direct reply-to in ``reply_to``."""
    header = message.header
    if header[12] & _EXPIRATION_FLAG:
        message.ttl = message_ttl(message.properties.expiration)
    if header[12] & _REPLY_TO_FLAG and message.properties.reply_to == REPLY_TO:
        if channel.reply_queue is None:
            raise precondition_failed("fast reply consumer does not exist")
        message.set_reply_to(channel.reply_queue.name)


def route(session: Session, channel: Channel, exchange: Any, message: Message, mandatory: bool) -> None:
    dedup = exchange.dedup
    if dedup is not None and dedup.is_duplicate(message.headers, session.vhost.clock(), remember=False):
        if channel.confirm:  # a duplicate: confirmed, not routed
            channel.confirm_published(message)
        return
    if exchange.delayed and session.vhost.delay(exchange, message):
        if channel.confirm:  # held, to be routed later: confirmed now (once stored, if it is)
            channel.confirm_published(message)
        return
    queues = session.vhost.route(exchange, message.routing_key, message)
    refused = False
    for queue in queues:
        # a durable queue journals a persistent message (durable set); a full one may refuse
        if not queue.enqueue(message):
            refused = True
        if queue.flow_on:
            session.flow.published_into(queue)
    if dedup is not None and queues and not refused:  # taken: its value is remembered from now
        dedup.remember(message.headers, session.vhost.clock())
    if not queues:
        session.broker.totals.count_unroutable(returned=mandatory)
    if not queues and mandatory:
        out = session.out
        out.append(method_frame(channel.number,
                                return_payload(ReplyCode.NO_ROUTE, "NO_ROUTE", message.routing_raw)))
        append_content(out, channel.number, message.header, message.body, channel.frame_max)
        session.out_bytes += len(message.body)
        session.bound_output()
    if channel.confirm:
        channel.confirm_published(message, refused)
