"""Redelivery backoff: a message that comes back to its queue waits before it is delivered again.

Queue arguments (and policy keys without the ``x-``), as LavinMQ's automatic retries and
RabbitMQ 4.3's delayed retries name them:

``x-delayed-retry-min``         ms before the first retry; setting it turns the backoff on
``x-delayed-retry-max``         the longest single wait (ms; default: no cap but 2^32-1 ms)
``x-delayed-retry-multiplier``  the shape: absent, linear (min x n); 1, constant; 2 or more,
                                exponential (min x multiplier^(n-1)); n = the message's
                                delivery count after this return
``x-delayed-retry-type``        which returns wait: ``failed`` (rejected or nacked with requeue;
                                the default), ``returned`` (its channel or connection closed,
                                its consumer timed out, ``basic.recover``), or ``all``

With the backoff on and no ``x-delivery-limit``, the queue's limit is 20 (as LavinMQ), so a
message that never succeeds ends in the dead-letter exchange instead of retrying for ever.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RetryPolicy", "retry_error", "RETRY_TYPES", "DEFAULT_RETRY_LIMIT"]

RETRY_TYPES = ("failed", "returned", "all")
DEFAULT_RETRY_LIMIT = 20
_LONGEST_MS = 2 ** 32 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def retry_error(arguments: dict[str, Any]) -> str | None:
    """What is wrong with a queue's backoff arguments (the reason of a 406), or None."""
    for key in ("x-delayed-retry-min", "x-delayed-retry-max", "x-delayed-retry-multiplier"):
        value = arguments.get(key)
        if value is not None and (not _is_int(value) or value < 1):
            return f"{key} must be a positive integer"
    kind = arguments.get("x-delayed-retry-type")
    if kind is not None and _text(kind) not in RETRY_TYPES:
        return f"x-delayed-retry-type must be one of {', '.join(RETRY_TYPES)}"
    if arguments.get("x-delayed-retry-min") is None and any(
            key in arguments for key in ("x-delayed-retry-max", "x-delayed-retry-multiplier", "x-delayed-retry-type")):
        return "x-delayed-retry-min is needed to turn the backoff on"
    return None


class RetryPolicy:
    __slots__ = ("minimum", "maximum", "multiplier", "kind")

    def __init__(self, minimum: int, maximum: int | None, multiplier: int | None, kind: str) -> None:
        self.minimum, self.maximum, self.multiplier, self.kind = minimum, maximum, multiplier, kind

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> RetryPolicy | None:
        """The policy the (effective) arguments ask for; None when the backoff is off."""
        minimum = arguments.get("x-delayed-retry-min")
        if not _is_int(minimum) or minimum < 1 or retry_error(arguments) is not None:
            return None
        return cls(minimum, arguments.get("x-delayed-retry-max"), arguments.get("x-delayed-retry-multiplier"),
                   _text(arguments.get("x-delayed-retry-type", "failed")))

    def applies(self, failed: bool) -> bool:
        """Does a return of this kind wait (``failed``: rejected or nacked with requeue)?"""
        return self.kind == "all" or (self.kind == "failed") == failed

    def delay(self, count: int) -> float:
        """Seconds to wait after the ``count``-th return."""
        count = max(count, 1)
        if self.multiplier is None:
            wait = self.minimum * count
        elif self.multiplier == 1:
            wait = self.minimum
        else:
            wait = self.minimum * self.multiplier ** min(count - 1, 64)
        return min(wait, self.maximum or _LONGEST_MS, _LONGEST_MS) / 1000

    def view(self) -> dict[str, Any]:
        return {"type": self.kind, "min": self.minimum, "max": self.maximum, "multiplier": self.multiplier}
