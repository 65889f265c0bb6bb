"""The compatibility profile: which RabbitMQ generation's client-visible rules apply where 3.x and
4.x differ. One setting (``compatibility``) picks a profile; settings given explicitly
(``max_message_size``, ``delivery_limit_quorum``) win over the profile's defaults.

=============================  ======================  ======================  =====================
rule                           ``3.13``                ``4.0`` (default)       ``4.3``
=============================  ======================  ======================  =====================
``basic.qos`` ``global=true``  one limit shared by     the same (4.0-4.2       taken as
                               the channel             permit it)              ``global=false``: per
                                                                               consumer (4.3 denies
                                                                               ``global_qos``)
transient non-exclusive        allowed                 allowed (4.0-4.2        a new one: connection
queues                                                 permit them)            closed, 541 (4.3
                                                                               denies them)
``x-death`` a client           the message's history   data: the broker keeps  as 4.0
publishes                      (continued, and read    its own record
                               for cycle detection)
quorum queues' default         none                    20                      20
``x-delivery-limit``
``max_message_size``           128 MiB                 16 MiB                  16 MiB
=============================  ======================  ======================  =====================

The default is ``4.0``: RabbitMQ 4's safer defaults (a delivery limit for poison messages, a
16 MiB message cap, ``x-death`` that a client cannot forge) with the two deprecated features
Celery and kombu still rely on (their event and pidbox queues are transient and not
exclusive; Celery's workers set a channel-wide prefetch with ``global=true`` on 3.3+).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Profile", "profile", "PROFILES", "DEFAULT_PROFILE"]


@dataclass(frozen=True)
class Profile:
    name: str
    global_qos: bool  # basic.qos global=true is channel-wide (else: per consumer, as global=false)
    transient_nonexclusive_queues: bool  # may a queue be declared neither durable nor exclusive?
    client_x_death_is_history: bool  # a published x-death header is the message's death history
    quorum_delivery_limit: int  # x-delivery-limit of quorum queues that set none (-1: none)
    max_message_size: int  # bytes


PROFILES = {
    "3.13": Profile("3.13", global_qos=True, transient_nonexclusive_queues=True, client_x_death_is_history=True,
                    quorum_delivery_limit=-1, max_message_size=128 << 20),
    "4.0": Profile("4.0", global_qos=True, transient_nonexclusive_queues=True, client_x_death_is_history=False,
                   quorum_delivery_limit=20, max_message_size=16 << 20),
    "4.3": Profile("4.3", global_qos=False, transient_nonexclusive_queues=False, client_x_death_is_history=False,
                   quorum_delivery_limit=20, max_message_size=16 << 20),
}
_ALIASES = {"3": "3.13", "4": "4.0", "4.1": "4.0", "4.2": "4.0"}
DEFAULT_PROFILE = "4.0"

# what RabbitMQ 4.3 closes the connection with (541) for a new transient non-exclusive queue
TRANSIENT_NONEXCLUSIVE_REFUSED = ("Feature `transient_nonexcl_queues` is deprecated.\nBy default, this feature "
                                  "is not permitted anymore.\nUse a durable queue, or an exclusive one "
                                  "(amqpbroker: compatibility = \"4.3\").")


def profile(name: str) -> Profile:
    """The profile called ``name`` (or an alias: ``3``, ``4``, ``4.1``, ``4.2``)."""
    key = _ALIASES.get(str(name).strip(), str(name).strip())
    try:
        return PROFILES[key]
    except KeyError:
        raise ValueError(f"compatibility must be one of {', '.join(PROFILES)} (or 3, 4, 4.1, 4.2), "
                         f"not {name!r}") from None
