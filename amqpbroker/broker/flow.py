"""Publisher flow control: a publisher is read only as fast as the queues it feeds can hand its
messages on, so their consumers are never starved (RabbitMQ's credit flow, in this design).

The transport reads a connection in turns of the event loop: one turn handles at most a slice of
the frames that came in (``Connection.slice_frames``); the rest waits for the next turn, after
every other connection had its own. A consumer's turn is one ack and the deliveries it frees, a
prefetch window's worth; so the slice decides how a publisher's rate compares with its consumers'.

A queue is *behind* when it has consumers, holds more ready messages than ``FLOW_HIGH`` (or pages
out), and its consumers are taking messages (it delivered within ``FLOW_ACTIVE`` seconds); it
stays so until it is down to ``FLOW_LOW`` ready messages in memory. A connection that publishes
into a behind queue is in *flow* (the state the management API shows): each of its turns gets
credit for 3/4 of what those queues delivered since its previous turn (shared among their
publishers in flow), at most the normal slice; with no credit it waits ``FLOW_WAIT`` and then
gets at least ``FLOW_FLOOR`` publishes. So the publisher runs a little slower than its consumers
drain, the queue stays in memory instead of paging, and acks and deliveries get their share of
the loop. A queue without consumers (a backlog being built), or whose consumers delivered
nothing for ``FLOW_ACTIVE`` (stalled), does not slow its publishers: holding them would not make
those consumers any faster. A connection that stopped publishing into a queue is no longer
counted among its publishers at its next turn.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqpbroker.broker.queue import Queue

__all__ = ["PublisherFlow", "SLICE_FRAMES", "FLOW_HIGH", "FLOW_LOW", "FLOW_FLOOR", "FLOW_ACTIVE"]

SLICE_FRAMES = 300  # frames handled per turn of the loop (about 100 publishes)
FRAMES_PER_PUBLISH = 3  # method, header, body: what a publish costs of the slice
FLOW_HIGH = 1000  # ready messages in memory above which a queue with busy consumers is behind
FLOW_LOW = 250  # ... and below which it has caught up
FLOW_WAIT = 0.001  # seconds a publisher without credit waits before it looks again
FLOW_FLOOR = 2  # publishes a publisher in flow gets after such a wait, whatever was delivered
FLOW_SHARE = 0.75  # of a queue's deliveries, as credit for its publishers: the backlog drains
FLOW_ACTIVE = 0.1  # seconds: a queue that delivered nothing for this long does not hold publishers
FLOW_SHOWN = 1.0  # seconds a connection shows as in flow after its last throttled turn


class PublisherFlow:
    """One connection's view of the behind queues it publishes into, and its credit per turn."""

    __slots__ = ("queues", "published", "throttled_at")

    def __init__(self) -> None:
        self.queues: dict[Queue, int] = {}  # behind queue -> its deliveries at our last turn
        self.published: set[Queue] = set()  # behind queues published into since our last turn
        self.throttled_at = 0.0  # monotonic time of the last turn that was cut short

    def published_into(self, queue: Queue) -> None:
        """A publish went into ``queue``, which is behind (the caller checked ``flow_on``)."""
        if queue not in self.published and queue.consumers:
            self.published.add(queue)
            if queue not in self.queues:
                self.queues[queue] = queue.delivered
                queue.flow_publishers += 1

    @property
    def in_flow(self) -> bool:
        """Was a turn of this connection cut short for its queues lately?"""
        return bool(self.throttled_at) and time.monotonic() - self.throttled_at < FLOW_SHOWN

    def frames_for_turn(self, waited: bool = False) -> int:
        """How many frames the next turn may handle: 0 when the queues it is held for delivered
        nothing since its last turn (the transport waits ``FLOW_WAIT`` and asks again with
        ``waited``, which gets at least ``FLOW_FLOOR`` publishes)."""
        queues = self.queues
        if not queues:
            return SLICE_FRAMES
        now = time.monotonic()
        published = self.published
        credit = SLICE_FRAMES // FRAMES_PER_PUBLISH
        for queue, seen in list(queues.items()):
            if (queue not in published or not queue.flow_on or queue.deleted or not queue.consumers
                    or now - queue.dispatched_at > FLOW_ACTIVE):
                self._forget(queue)  # it no longer holds this publisher
                continue
            credit = min(credit, int((queue.delivered - seen) * FLOW_SHARE / max(queue.flow_publishers, 1)))
        if not queues:
            self.published = set()
            return SLICE_FRAMES
        if credit <= 0 and not waited:
            self.throttled_at = now
            return 0  # not a turn: what was delivered and published is counted at the next one
        for queue in queues:
            queues[queue] = queue.delivered
        self.published = set()
        if credit >= SLICE_FRAMES // FRAMES_PER_PUBLISH:
            return SLICE_FRAMES
        self.throttled_at = now
        return max(credit, FLOW_FLOOR) * FRAMES_PER_PUBLISH

    def _forget(self, queue: Queue) -> None:
        del self.queues[queue]
        queue.flow_publishers -= 1

    def release(self) -> None:
        """The connection is gone: it holds no place among any queue's publishers."""
        self.published.clear()
        for queue in list(self.queues):
            self._forget(queue)
