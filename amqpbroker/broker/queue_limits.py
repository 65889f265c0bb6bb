"""A queue's limits in length and in time: the part of :class:`~amqpbroker.broker.queue.Queue` that
carries out its options, its timed work, and the at-least-once dead-letter hold.

Options (``x-`` arguments and policies, :class:`~amqpbroker.broker.queue_options.QueueOptions`)
and messages with a per-message TTL take a separate, slower path (``_admit`` on the way in,
``Queue._dispatch_general`` on the way out): length limits with their overflow behaviour
(``drop-head``, ``reject-publish``, ``reject-publish-dlx``), expiry (expired messages are never
delivered; they are dropped, or dead-lettered, when they reach the head, and a queue TTL drops
them from the head as time passes, through :meth:`LimitsMixin.tick`), queue expiry
(``x-expires``), and dead-lettering through the host (the vhost). With
``x-dead-letter-strategy: at-least-once`` a dead-lettered message stays held
(``dead_letter_hold``, dead_letter_hold.py) until every target took it, tried again at each
tick; held messages count towards the length limits, as RabbitMQ counts them.

:class:`LimitsMixin` holds no state of its own (``__slots__ = ()``): it works on the Queue's
``options``, ``retry``, ``delivery_limit``, ``type``, ``host``, ``expiring``, ``last_used``,
``dead_letter_hold``, ``dedup``, ``ready``, ``ready_bytes``, ``paged``, ``paged_bytes``,
``retrying``, ``consumers``, ``queue_id``, ``journal`` and ``deleted``, and calls its
``get``, ``discard``, ``_forget``, ``_update_dispatch``, ``_want_page`` (queue_paging.py),
``_delivery_limit`` and ``_release_due`` (queue_redelivery.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amqpbroker.broker.dead_letter import EXPIRED, MAXLEN
from amqpbroker.broker.dead_letter_hold import DeadLetterHold, HeldDeadLetter
from amqpbroker.broker.message import Message
from amqpbroker.broker.queue_options import DROP_HEAD, REJECT_PUBLISH_DLX, QueueOptions
from amqpbroker.broker.retry import RetryPolicy

if TYPE_CHECKING:
    from amqpbroker.broker.queue import Entry

__all__ = ["LimitsMixin"]

_TTL_GRACE = 0.001  # seconds: RabbitMQ's TTLs are in milliseconds


class LimitsMixin:
    """Options, length limits, TTLs, queue expiry, the timer and the dead-letter hold (see the
    module's docstring); mixed into ``Queue``."""

    __slots__ = ()

    # ---------------------------------------------------------------- options

    def apply_arguments(self, arguments: dict[str, Any]) -> None:
        """Its policies changed: its options are now its own arguments merged with theirs
        (``policies.effective``), from the next message on; a lowered length limit drops (or
        dead-letters) the excess at once, as RabbitMQ applies a policy to a live queue."""
        self.options = options = QueueOptions.from_arguments(arguments)
        self.retry = RetryPolicy.of(arguments)
        self.delivery_limit = self._delivery_limit(arguments)
        self._options_changed()
        if options is not None:
            if options.message_ttl is not None:
                self._drop_expired_head(self.host.clock())
            if options.limited:
                self._drop_over_limits()

    def _options_changed(self) -> None:
        """A TTL makes it check heads for expiry, a TTL or ``x-expires`` makes it timed; the
        at-least-once dead-letter strategy gives it a hold (its end releases what it held)."""
        options = self.options
        if options is not None:
            if options.message_ttl is not None:
                self.expiring = True
            if options.message_ttl is not None or options.expires is not None:
                self.host.timed.add(self)
        at_least_once = options is not None and options.dead_letter_at_least_once and self.type.dead_letters_at_least_once
        if at_least_once and self.dead_letter_hold is None:
            self.dead_letter_hold = DeadLetterHold()
        elif not at_least_once and self.dead_letter_hold is not None:
            hold, self.dead_letter_hold = self.dead_letter_hold, None
            for held in hold.take_all():  # dead-lettered at most once now, as RabbitMQ does
                self._release_held(held)
                if options is not None and options.dead_letter_exchange is not None:
                    self.host.dead_letter(self, [held.entry[1]], held.reason)
                self._forget(held.entry)
        self._update_dispatch()

    # ---------------------------------------------------------------- length limits

    def _admit(self, message: Message) -> bool | None:
        """Before a queue with options (or a message with a TTL) takes a message: note its
        arrival for TTLs; False when a length limit refuses it (``reject-publish``), None when it
        is a duplicate."""
        options = self.options
        dedup = self.dedup
        if dedup is not None and dedup.is_duplicate(message.headers, self.host.clock(), remember=False):
            return None
        if message.arrived is None:
            message.arrived = self.host.clock()
        if message.ttl is not None:
            self._holds_ttl()
        if options is not None and options.limited and options.overflow != DROP_HEAD and self._full(message):
            if options.overflow == REJECT_PUBLISH_DLX:
                self.host.dead_letter(self, [message], MAXLEN)
            return False  # refused: its value is not remembered, so the publisher may try again
        if dedup is not None:
            dedup.remember(message.headers, self.host.clock())
        return True

    def _drop_over_limits(self) -> None:
        """``drop-head``: drop (or dead-letter) the oldest messages while a length limit is
        broken. Only in-memory ones: when the head is still on disk the queue stays over its limit
        until the page read under way brings it back (``paged_in`` calls this again)."""
        while self.message_count and self._over_limits():
            entry = self.get()
            if entry is None:
                return
            self.discard(entry, reason=MAXLEN)

    def _full(self, message: Message) -> bool:
        """Would one more message break a length limit? (Messages backing off or held for
        dead-lettering count, as RabbitMQ counts them.)"""
        options = self.options
        hold = self.dead_letter_hold
        if options.max_length is not None and (self.message_count + len(self.retrying)
                                               + (len(hold) if hold is not None else 0)) >= options.max_length:
            return True
        return (options.max_length_bytes is not None
                and self._limited_bytes() + len(message.body) > options.max_length_bytes)

    def _over_limits(self) -> bool:
        options = self.options
        hold = self.dead_letter_hold
        if options.max_length is not None and (self.message_count + len(self.retrying)
                                               + (len(hold) if hold is not None else 0)) > options.max_length:
            return True
        return options.max_length_bytes is not None and self._limited_bytes() > options.max_length_bytes

    def _limited_bytes(self) -> int:
        hold = self.dead_letter_hold
        return self.ready_bytes + self.paged_bytes + (hold.bytes if hold is not None else 0)

    # ---------------------------------------------------------------- expiry and the timer

    def _holds_ttl(self) -> None:
        """A message with its own TTL is here: check heads for expiry from now on."""
        if not self.expiring:
            self.expiring = True
            self.host.timed.add(self)
            self._update_dispatch()

    def expires_at(self, message: Message) -> float | None:
        """When ``message`` expires in this queue (the lower of the queue's and its own TTL)."""
        ttl = self.options.message_ttl if self.options is not None else None
        if message.ttl is not None:
            ttl = message.ttl if ttl is None else min(ttl, message.ttl)
        if ttl is None or message.arrived is None:
            return None
        return message.arrived + ttl

    def _expired(self, message: Message, now: float) -> bool:
        expiry = self.expires_at(message)
        # a TTL of 0 still lets a message go to a consumer that is ready in the same batch
        return expiry is not None and now > expiry + _TTL_GRACE

    def _drop_expired_head(self, now: float) -> None:
        """Expire messages at the head of the in-memory part (a queue TTL expires them in order;
        others wait there). Paged-out ones are looked at when their page comes in."""
        ready = self.ready
        while ready and self._expired(ready[0][1], now):
            entry = ready.popleft()
            self.ready_bytes -= len(entry[1].body)
            self.discard(entry, reason=EXPIRED)

    def tick(self, now: float) -> bool:
        """Timed work: expire messages from the head, and tell whether the queue itself expired
        (``x-expires``: no consumers and no use for that long)."""
        if self.expiring:
            self._drop_expired_head(now)
            if self.paged:
                self._want_page()
        if self.retrying:
            self._release_due(now)
        hold = self.dead_letter_hold
        if hold is not None and hold.due(now):
            self._settle_held(now)
        expires = self.options.expires if self.options is not None else None
        return expires is not None and not self.consumers and now - self.last_used >= expires

    def _untime_if_idle(self) -> None:
        """Leave the vhost's timer once there is no timed work (expiry, backoff, held messages)."""
        if (not self.retrying and not self.expiring and not self.dead_letter_hold
                and (self.options is None or self.options.expires is None)):
            self.host.timed.discard(self)

    # ---------------------------------------------------------------- the dead-letter hold

    def _settle_held(self, now: float) -> None:
        """Dead-letter held messages, in order, until one still cannot go (``dead_letter_hold``);
        those that went are forgotten in this batch, those newly held are stored as held."""
        hold = self.dead_letter_hold
        host = self.host
        for held in hold.settle(lambda held: host.dead_letter_once(self, held.entry[1], held.reason, held.taken), now):
            self._release_held(held)
            self._forget(held.entry)
        if not hold and not (self.options is not None and self.options.dead_letter_at_least_once
                             and self.type.dead_letters_at_least_once):
            self.dead_letter_hold = None  # what recovery held, gone after a strategy change
        if hold:
            if self.queue_id is not None:
                for held in reversed(hold.held):
                    if held.stored:
                        break
                    if held.entry[1].message_id is not None:
                        self.journal.hold_dead_letter(self, held.entry, held.reason)
                        held.stored = True
            host.timed.add(self)
        else:
            self._untime_if_idle()

    def _release_held(self, held: HeldDeadLetter) -> None:
        if held.stored and not self.deleted:
            self.journal.release_dead_letter(self, held.entry)

    def restore_held(self, held: list[tuple[Entry, str]]) -> None:
        """Recovery: entries the store held for dead-lettering at least once, in order; tried
        from the first tick on (when every queue is back), even if the queue's strategy changed."""
        if self.dead_letter_hold is None:
            self.dead_letter_hold = DeadLetterHold()  # (dropped once empty: _settle_held)
        hold = self.dead_letter_hold
        now = self.host.clock()
        for entry, reason in held:
            hold.add(entry, reason, now).stored = True
        if hold:
            self.host.timed.add(self)
