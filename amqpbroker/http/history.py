"""The overview's message rates and, when asked for, their samples: RabbitMQ's
``msg_rates_age``/``msg_rates_incr`` and ``lengths_age``/``lengths_incr`` query parameters
(seconds), answered from the broker's once-a-second totals (``Broker.total_samples``, the last
five minutes). A ``..._details`` object then carries ``samples``: ``{"sample", "timestamp"}``,
newest first, the counter (or length) at that time, as RabbitMQ's management API gives them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from amqpbroker.broker.queueing import RATE_SAMPLES

__all__ = ["Window", "window_of", "details"]

Window = tuple[int, int]  # (age, increment) in seconds


def window_of(query: Mapping[str, str], prefix: str) -> Window | None:
    """``{prefix}_age`` and ``{prefix}_incr`` (``msg_rates`` or ``lengths``), when both are
    whole numbers of seconds (age at most an hour, increment at least one second)."""
    try:
        age, increment = int(query[f"{prefix}_age"]), int(query[f"{prefix}_incr"])
    except (KeyError, ValueError):
        return None
    if not 0 < age <= 3600 or increment < 1:
        return None
    return age, increment


def details(samples: Sequence[tuple[float, dict[str, Any]]], key: str, window: Window | None) -> dict[str, Any]:
    """``{"rate": ...}`` over the last RATE_SAMPLES seconds, with ``samples`` for ``window``."""
    found: dict[str, Any] = {"rate": round(_rate(samples, key), 1)}
    if window is not None:
        age, increment = window
        newest = samples[-1][0] if samples else 0.0
        picked, next_time = [], newest
        for when, totals in reversed(samples):
            if newest - when > age:
                break
            if when <= next_time:
                picked.append({"sample": totals.get(key, 0), "timestamp": int(when * 1000)})
                next_time = when - increment + 0.5  # (samples come about once a second)
        found["samples"] = picked
    return found


def _rate(samples: Sequence[tuple[float, dict[str, Any]]], key: str) -> float:
    if len(samples) < 2:
        return 0.0
    first = samples[max(0, len(samples) - 1 - RATE_SAMPLES)]
    last = samples[-1]
    elapsed = last[0] - first[0]
    return (last[1].get(key, 0) - first[1].get(key, 0)) / elapsed if elapsed > 0 else 0.0
