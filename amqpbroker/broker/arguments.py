"""RabbitMQ's known ``x-`` queue arguments: validation on declare and equivalence on redeclare.

Unknown arguments are kept but neither validated nor compared, as RabbitMQ does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amqpbroker.broker.stream_offsets import parse_duration
from amqpbroker.errors import precondition_failed

__all__ = ["validate_queue_arguments", "max_age_error", "check_queue_equivalence", "check_exchange_equivalence",
           "describe"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _non_negative_int(value: Any) -> str | None:
    if not _is_int(value):
        return f"\"expected integer, got {_amqp_type(value)}\""
    if value < 0:
        return f"{{value_negative,{value}}}"
    return None


def _delivery_limit(value: Any) -> str | None:
    """A number of returns; -1 (any negative) for none, as RabbitMQ 4."""
    return None if _is_int(value) else f"\"expected integer, got {_amqp_type(value)}\""


def _dead_letter_strategy(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return f"{{unacceptable_type,{_amqp_type(value)}}}"
    return None if value in ("at-most-once", "at-least-once") else "invalid_dlx_strategy"


def _leader_locator(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return f"{{unacceptable_type,{_amqp_type(value)}}}"
    return None if value in ("client-local", "balanced", "random", "least-leaders") else "invalid_queue_locator_arg"


def _queue_version(value: Any) -> str | None:
    if not _is_int(value):
        return f"\"expected integer, got {_amqp_type(value)}\""
    return None if value in (1, 2) else f"\"unsupported queue version '{value}'\""


# arguments a queue type does not take (RabbitMQ's 406 "... of queue type rabbit_X_queue");
# x-delivery-limit is taken by classic queues here, on purpose (docs/compatibility.md)
_REFUSED_BY_TYPE = {
    "quorum": ("x-queue-mode", "x-queue-version", "x-max-priority", "x-queue-master-locator", "x-max-age",
               "x-stream-max-segment-size-bytes", "x-initial-cluster-size"),
    "classic": ("x-dead-letter-strategy", "x-quorum-initial-group-size", "x-queue-leader-locator",
                "x-max-age", "x-stream-max-segment-size-bytes", "x-initial-cluster-size"),
}


def _refused(queue_type: str, key: str) -> bool:
    if queue_type == "stream":
        return key not in _STREAM_ARGUMENTS and (key in QUEUE_ARGUMENTS or key.startswith(_EXTENSION_PREFIXES))
    return key in _REFUSED_BY_TYPE.get(queue_type, ())


def refuse_other_types_arguments(name: str, vhost: str, queue_type: str, arguments: dict[str, Any]) -> None:
    """A 406 for the first argument that belongs to another queue type, as RabbitMQ."""
    for key in arguments:
        if _refused(queue_type, key):
            raise precondition_failed(f"invalid arg '{key}' for queue '{name}' in vhost '{vhost}' "
                                      f"of queue type rabbit_{queue_type}_queue")


MAX_EXPIRY = 315_360_000_000  # RabbitMQ's largest TTL / expiry: ten years, in milliseconds


def _ttl(value: Any) -> str | None:
    error = _non_negative_int(value)
    if error is None and value > MAX_EXPIRY:
        return f"{{value_too_large,{value}}}"
    return error


def _expires(value: Any) -> str | None:
    error = _positive_int(value)
    if error is None and value > MAX_EXPIRY:
        return f"{{value_too_large,{value}}}"
    return error


def _positive_int(value: Any) -> str | None:
    error = _non_negative_int(value)
    if error is None and value == 0:
        return "{value_zero,0}"
    return error


def _string(value: Any) -> str | None:
    return None if isinstance(value, (str, bytes)) else f"{{unacceptable_type,{_amqp_type(value)}}}"


def _one_of(invalid: str, *choices: str) -> Callable[[Any], str | None]:
    """A string among ``choices``; ``invalid`` formats RabbitMQ's reason for any other string."""
    def check(value: Any) -> str | None:
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if not isinstance(value, str):
            return f"{{unacceptable_type,{_amqp_type(value)}}}"
        return None if value in choices else invalid.format(value=value)
    return check


def max_age_error(value: Any) -> str | None:
    """RabbitMQ's reason for refusing an ``x-max-age`` (also the ``max-age`` policy key), None if valid."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return f"{{unacceptable_type,{_amqp_type(value)}}}"
    return None if parse_duration(value) is not None else "invalid_max_age"


def _max_priority(value: Any) -> str | None:
    error = _non_negative_int(value)
    if error is None and value > 255:
        return f"{{max_value_exceeded,{value}}}"
    return error


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{{unacceptable_type,{_amqp_type(value)}}}"


QUEUE_ARGUMENTS: dict[str, Callable[[Any], str | None]] = {
    "x-expires": _expires,
    "x-message-ttl": _ttl,
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-max-length": _non_negative_int,
    "x-max-length-bytes": _non_negative_int,
    "x-max-in-memory-length": _non_negative_int,
    "x-max-in-memory-bytes": _non_negative_int,
    "x-max-priority": _max_priority,
    "x-overflow": _one_of("invalid_overflow", "drop-head", "reject-publish", "reject-publish-dlx"),
    "x-queue-mode": _one_of("unsupported queue mode '{value}'", "default", "lazy"),
    "x-queue-type": _one_of("unsupported queue type '{value}'", "classic", "quorum", "stream"),
    "x-single-active-consumer": _boolean,
    "x-delivery-limit": _delivery_limit,
    "x-dead-letter-strategy": _dead_letter_strategy,
    "x-queue-leader-locator": _leader_locator,
    "x-queue-version": _queue_version,
    "x-consumer-timeout": _non_negative_int,
    "x-queue-master-locator": _string,
    "x-quorum-initial-group-size": _positive_int,
    "x-max-age": max_age_error,
    "x-stream-max-segment-size-bytes": _non_negative_int,
    "x-stream-filter-size-bytes": _non_negative_int,
    "x-initial-cluster-size": _positive_int,
}
# what a stream takes, as RabbitMQ's rabbit_stream_queue (every other known argument is refused)
_STREAM_ARGUMENTS = frozenset(("x-queue-type", "x-max-length-bytes", "x-max-age", "x-stream-max-segment-size-bytes",
                               "x-stream-filter-size-bytes", "x-initial-cluster-size", "x-queue-leader-locator"))
# this broker's own queue arguments (deduplication.py, retry.py): not for streams either
_EXTENSION_PREFIXES = ("x-message-deduplication", "x-cache-", "x-deduplication-header", "x-delayed-retry")


def _amqp_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if _is_int(value):
        return "signedint" if -(2 ** 31) <= value < 2 ** 31 else "long"
    if isinstance(value, (str, bytes)):
        return "longstr"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "void"
    return type(value).__name__


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def validate_queue_arguments(name: str, vhost: str, arguments: dict[str, Any]) -> None:
    for key, value in arguments.items():
        check = QUEUE_ARGUMENTS.get(key)
        if check is None:
            continue
        error = check(value)
        if error is not None:
            raise precondition_failed(
                f"invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {error}")
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise precondition_failed(
            f"invalid arg 'x-dead-letter-routing-key' for queue '{name}' in vhost '{vhost}': "
            f"routing_key_but_no_dlx_defined")


def _inequivalent(kind: str, name: str, vhost: str, key: str, received: Any, current: Any) -> None:
    if received is None and current is None:
        return
    if received is not None and current is not None and received == current:
        return
    received_text = ("none" if received is None
                     else f"the value '{describe(received)}' of type '{_amqp_type(received)}'")
    current_text = ("none" if current is None
                    else f"the value '{describe(current)}' of type '{_amqp_type(current)}'")
    raise precondition_failed(f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{vhost}': "
                              f"received {received_text} but current is {current_text}")


def check_flag(kind: str, name: str, vhost: str, key: str, received: Any, current: Any) -> None:
    if received != current:
        raise precondition_failed(f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{vhost}': "
                                  f"received '{describe(received)}' but current is '{describe(current)}'")


def check_queue_equivalence(name: str, vhost: str, received: dict[str, Any], current: dict[str, Any]) -> None:
    for key in QUEUE_ARGUMENTS:
        if key == "x-queue-type":
            # classic is the default: an absent type equals an explicit 'classic'
            r, c = received.get(key, "classic"), current.get(key, "classic")
            _inequivalent("queue", name, vhost, key, r, c)
            continue
        _inequivalent("queue", name, vhost, key, received.get(key), current.get(key))


def check_exchange_equivalence(name: str, vhost: str, received: dict[str, Any], current: dict[str, Any]) -> None:
    key = "alternate-exchange"
    _inequivalent("exchange", name, vhost, key, received.get(key), current.get(key))
