"""Publisher confirms: the part of :class:`~amqpbroker.broker.channel.Channel` that numbers a
channel's publishes in confirm mode and sends their acks and nacks.

A publish is confirmed at once, or once the store synced it when it was written durably (the
journal calls :meth:`ConfirmsMixin.confirm_synced`), or nacked when a queue refused it or the
store failed. The settled sequence numbers of a batch go out together at its end
(:meth:`ConfirmsMixin.flush_confirms`): one ``multiple`` ack for a run that continues from the
highest number confirmed so far, single frames otherwise.

:class:`ConfirmsMixin` holds no state of its own (``__slots__ = ()``): it works on the channel's
``publish_seq``, ``confirms_pending``, ``nacks_pending``, ``confirmed_through``,
``settled_ahead``, ``session`` and ``number``, and calls its ``send``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands

if TYPE_CHECKING:
    from amqpbroker.broker.message import Message

__all__ = ["ConfirmsMixin"]


class ConfirmsMixin:
    """The confirm side of a channel (see the module's docstring)."""

    __slots__ = ()

    def confirm_published(self, message: Message, refused: bool = False) -> None:
        """Count a publish in confirm mode: nacked if a queue refused it (full), confirmed once
        the store synced it if it was written (``durable``), else at once."""
        seq = self.publish_seq = self.publish_seq + 1
        if refused:
            self._settle_confirm(seq, ok=False)
            return
        if message.durable:
            journal = self.session.broker.journal
            if journal.failed:
                self._settle_confirm(seq, ok=False)
            else:
                journal.wait_for_sync(self, seq, message)
            return
        self._settle_confirm(seq, ok=True)

    def confirm_synced(self, seq: int, ok: bool) -> None:
        """The store made a publish durable (or failed to); ignored once the channel is gone."""
        if self.session.channels.get(self.number) is self:
            self._settle_confirm(seq, ok)

    def _settle_confirm(self, seq: int, ok: bool) -> None:
        if not self.confirms_pending and not self.nacks_pending:
            self.session.confirming.append(self)
            self.session.mark_output()
        (self.confirms_pending if ok else self.nacks_pending).append(seq)

    def flush_confirms(self) -> None:
        """Send pending publisher acks and nacks: one ``multiple`` ack for a run of sequence numbers
        that continues from the highest one settled so far, single frames otherwise."""
        for seq in self.nacks_pending:
            self.send(commands.Basic.Nack(delivery_tag=seq, multiple=False, requeue=False))
            self._settled(seq)
        self.nacks_pending.clear()
        pending = self.confirms_pending
        if not pending:
            return
        pending.sort()
        start = end = pending[0]
        for seq in pending[1:]:
            if seq != end + 1:
                self._ack_run(start, end)
                start = seq
            end = seq
        self._ack_run(start, end)
        pending.clear()

    def _ack_run(self, start: int, end: int) -> None:
        if start == self.confirmed_through + 1:
            self.send(commands.Basic.Ack(delivery_tag=end, multiple=end != start))
            self.confirmed_through = end
            self._settled(end)
        else:
            for seq in range(start, end + 1):
                self.send(commands.Basic.Ack(delivery_tag=seq, multiple=False))
                self._settled(seq)

    def _settled(self, seq: int) -> None:
        """Track the highest sequence number below which everything is settled."""
        if seq > self.confirmed_through:
            self.settled_ahead.add(seq)
        ahead = self.settled_ahead
        while self.confirmed_through + 1 in ahead:
            self.confirmed_through += 1
            ahead.discard(self.confirmed_through)
