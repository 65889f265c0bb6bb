"""Broker-wide counters for metrics (rabbitmq_prometheus's global counters and more).

Live channels count their own messages (``published``, ``next_tag`` for deliveries,
``acknowledged``, ``confirmed_through``, ``redelivered``, ``auto_delivered``, ``received_bytes``,
``size_counts``); a closing channel adds them here, so the hot path only ever bumps a plain
attribute of its channel. What is rare (gets, opens and closes, queue declares) is counted here
directly.
"""

from __future__ import annotations

from typing import Any

from amqpbroker.broker.channel import SIZE_TOTAL

__all__ = ["MessageTotals"]

# counted by channels: (name here, the channel's attribute)
_FROM_CHANNELS = (("received", "published"), ("delivered", "next_tag"), ("acknowledged", "acknowledged"),
                  ("confirmed", "confirmed_through"), ("redelivered", "redelivered"),
                  ("consume_auto_ack", "auto_delivered"), ("received_bytes", "received_bytes"))


class MessageTotals:
    __slots__ = ("received", "delivered", "acknowledged", "confirmed", "unroutable_dropped",
                 "unroutable_returned", "connections_opened", "channels_opened", "redelivered",
                 "consume_auto_ack", "get_auto_ack", "get_manual_ack", "get_empty", "received_confirm",
                 "received_bytes", "connections_closed", "channels_closed", "queues_declared",
                 "queues_created", "queues_deleted", "size_counts")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        self.size_counts = [0] * SIZE_TOTAL  # published messages per size bucket

    def add_closed_channel(self, channel: Any) -> None:
        for name, attribute in _FROM_CHANNELS:
            setattr(self, name, getattr(self, name) + getattr(channel, attribute))
        if channel.confirm:
            self.received_confirm += channel.published
        self.size_counts = [mine + theirs for mine, theirs in zip(self.size_counts, channel.size_counts[:SIZE_TOTAL])]
        self.channels_closed += 1

    def count_unroutable(self, returned: bool) -> None:
        if returned:
            self.unroutable_returned += 1
        else:
            self.unroutable_dropped += 1

    def including(self, sessions: Any) -> dict[str, Any]:
        """Every counter, the live channels of ``sessions`` included (``size_counts``: a list)."""
        totals: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        sizes = list(self.size_counts)
        for session in sessions:
            for channel in session.channels.values():
                for name, attribute in _FROM_CHANNELS:
                    totals[name] += getattr(channel, attribute)
                if channel.confirm:
                    totals["received_confirm"] += channel.published
                for index, count in enumerate(channel.size_counts[:SIZE_TOTAL]):
                    sizes[index] += count
        totals["size_counts"] = sizes
        return totals
