"""Policies and operator policies: settings applied to queues and exchanges by name pattern.

Per vhost, each policy has a name, a pattern (a regular expression searched in the entity's
name, as RabbitMQ's ``re:run``), what it applies to (``queues``, ``classic_queues``,
``quorum_queues``, ``streams``, ``exchanges``, ``all``), a priority and a definition. An entity
gets the highest-priority policy that matches it (ties: the first name in order), and
separately the highest-priority operator policy.

Where a queue argument, a policy and an operator policy set the same key, RabbitMQ's rules
apply (``rabbit_queue_type_util:args_policy_lookup``): for the numeric limits (message-ttl,
expires, max-length, max-length-bytes, delivery-limit, consumer-timeout) the lowest value
wins, so an operator policy caps; for the rest (overflow, dead-letter-exchange,
dead-letter-routing-key, dead-letter-strategy, alternate-exchange) the queue argument wins over
the policy.
``queue-mode`` is accepted and ignored (every classic queue pages here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from amqpbroker.broker.arguments import max_age_error
from amqpbroker.broker.retry import RETRY_TYPES

__all__ = ["Policy", "PolicyError", "validate_definition", "effective", "APPLY_TO", "QUEUE_KEYS"]

APPLY_TO = ("queues", "classic_queues", "quorum_queues", "streams", "exchanges", "all")
_NUMERIC = ("message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit", "consumer-timeout",
            "delayed-retry-min", "delayed-retry-max", "delayed-retry-multiplier", "stream-max-segment-size-bytes")
_TEXT = ("dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange", "queue-mode", "delayed-retry-type")
_OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")
DEAD_LETTER_STRATEGIES = ("at-most-once", "at-least-once")
OPERATOR_KEYS = ("expires", "message-ttl", "max-length", "max-length-bytes", "delivery-limit", "consumer-timeout")
# a policy key -> the queue argument it stands for
QUEUE_KEYS = {"message-ttl": "x-message-ttl", "expires": "x-expires", "max-length": "x-max-length",
              "max-length-bytes": "x-max-length-bytes", "overflow": "x-overflow",
              "dead-letter-exchange": "x-dead-letter-exchange",
              "dead-letter-routing-key": "x-dead-letter-routing-key",
              "dead-letter-strategy": "x-dead-letter-strategy", "delivery-limit": "x-delivery-limit",
              "consumer-timeout": "x-consumer-timeout", "delayed-retry-min": "x-delayed-retry-min",
              "delayed-retry-max": "x-delayed-retry-max", "delayed-retry-multiplier": "x-delayed-retry-multiplier",
              "delayed-retry-type": "x-delayed-retry-type", "max-age": "x-max-age",
              "stream-max-segment-size-bytes": "x-stream-max-segment-size-bytes"}
_MINIMUM = {"x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-delivery-limit",
            "x-consumer-timeout"}


class PolicyError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    definition: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    apply_to: str = "all"

    def applies(self, kind: str, name: str, queue_type: str = "classic") -> bool:
        if kind == "exchange":
            if self.apply_to not in ("exchanges", "all"):
                return False
        elif self.apply_to == "exchanges" or (self.apply_to == "classic_queues" and queue_type != "classic") \
                or (self.apply_to == "quorum_queues" and queue_type != "quorum") \
                or (self.apply_to == "streams" and queue_type != "stream"):
            return False
        return re.search(self.pattern, name) is not None

    def view(self) -> dict[str, Any]:
        return {"vhost": self.vhost, "name": self.name, "pattern": self.pattern, "apply-to": self.apply_to,
                "definition": dict(self.definition), "priority": self.priority}


def validate_definition(definition: Any, *, operator: bool = False) -> dict[str, Any]:
    """The definition, checked key by key as RabbitMQ validates it (400 otherwise)."""
    if not isinstance(definition, dict) or not definition:
        raise PolicyError("definition must be a non-empty object")
    for key, value in definition.items():
        if operator and key not in OPERATOR_KEYS:
            raise PolicyError(f"{key} is not allowed in an operator policy (allowed: {', '.join(OPERATOR_KEYS)})")
        if key in _NUMERIC:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError(f"{key} must be a non-negative integer, not {value!r}")
        elif key == "overflow":
            if value not in _OVERFLOW:
                raise PolicyError(f"overflow must be one of {', '.join(_OVERFLOW)}")
        elif key == "dead-letter-strategy":
            if value not in DEAD_LETTER_STRATEGIES:
                raise PolicyError(f"dead-letter-strategy must be one of {', '.join(DEAD_LETTER_STRATEGIES)}")
        elif key == "delayed-retry-type":
            if value not in RETRY_TYPES:
                raise PolicyError(f"delayed-retry-type must be one of {', '.join(RETRY_TYPES)}")
        elif key == "max-age":
            if max_age_error(value) is not None:
                raise PolicyError(f"max-age must be a number and a unit (Y, M, D, h, m or s), such as 7D, not {value!r}")
        elif key in _TEXT:
            if not isinstance(value, str):
                raise PolicyError(f"{key} must be a string")
        else:
            raise PolicyError(f"{key} is not a policy key this broker knows")
    return dict(definition)


def check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str):
        raise PolicyError("pattern must be a string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise PolicyError(f"invalid pattern {pattern!r}: {exc}") from None
    return pattern


def choose(policies: dict[str, Policy], kind: str, name: str, queue_type: str = "classic") -> Policy | None:
    """The highest-priority policy applying to the entity (ties: the first name)."""
    best = None
    for policy_name in sorted(policies):
        policy = policies[policy_name]
        if policy.applies(kind, name, queue_type) and (best is None or policy.priority > best.priority):
            best = policy
    return best


def effective(arguments: dict[str, Any], policy: Policy | None, operator: Policy | None) -> dict[str, Any]:
    """A queue's arguments with its policies merged in (RabbitMQ's precedence, module docstring)."""
    merged = dict(arguments)
    for source in (policy, operator):  # the policy first: its text keys yield to arguments only
        if source is None:
            continue
        for key, value in source.definition.items():
            argument = QUEUE_KEYS.get(key)
            if argument is None:
                continue
            if argument not in merged:
                merged[argument] = value
            elif argument in _MINIMUM:
                merged[argument] = min(merged[argument], value)
    return merged


def effective_definition(policy: Policy | None, operator: Policy | None) -> dict[str, Any]:
    """What the API shows as ``effective_policy_definition``: the policy's keys, capped by the
    operator policy's numeric ones."""
    definition = dict(policy.definition) if policy is not None else {}
    if operator is not None:
        for key, value in operator.definition.items():
            definition[key] = min(definition[key], value) if key in definition else value
    return definition
