"""What the process knows about itself, for /api/nodes, the web UI and /metrics: filled by the
server (``amqpbroker.server.lifecycle`` samples it once a second, off the event loop), read by
the management API and the metrics collector. Plain data: nothing here does I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["NodeFacts"]


@dataclass
class NodeFacts:
    started_at: float = field(default_factory=time.time)  # wall clock
    resident_bytes: int | None = None  # the process's resident memory (RSS)
    memory_limit: int | None = None  # the memory alarm's watermark, bytes (None: no alarm)
    disk_free: int | None = None  # bytes free for the data directory
    disk_free_limit: int = 0  # the disk alarm's limit, bytes (0: no alarm)
    open_fds: int | None = None
    max_fds: int | None = None  # the soft limit on open files

    def uptime(self, now: float | None = None) -> float:
        return max((time.time() if now is None else now) - self.started_at, 0.0)
