"""Users, virtual hosts and permissions: the one way they change.

The management API, the definitions import and recovery all go through these functions, which
check the request, change the broker and journal the durable record (``("meta", kind, key,
value)``, JSON values in RabbitMQ's definitions shape) in one step. Live sessions see a
permission change at their next check.

Records: kind ``u`` (key: user name), ``v`` (vhost name), ``p`` (vhost NUL user), ``k`` (vhost
NUL user NUL exchange), ``y``/``o`` (vhost NUL policy name), ``g`` (a global parameter's name,
:mod:`amqpbroker.broker.parameters`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqpbroker.broker.access import Permission, TopicPermission, check_regex
from amqpbroker.broker.auth import User, hash_password
from amqpbroker.broker.policies import APPLY_TO, Policy, PolicyError, check_pattern, validate_definition
from amqpbroker.errors import ReplyCode

if TYPE_CHECKING:
    from amqpbroker.broker.broker import Broker

__all__ = ["TenancyError", "HASHING_ALGORITHM", "put_user", "delete_user", "put_vhost", "delete_vhost",
           "set_permission", "clear_permission", "set_topic_permission", "clear_topic_permission",
           "restore_metadata", "metadata_records", "import_definitions"]

log = logging.getLogger("amqpbroker.tenancy")

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
USER, VHOST, PERMISSION, TOPIC_PERMISSION, POLICY, OPERATOR_POLICY = "u", "v", "p", "k", "y", "o"
GLOBAL_PARAMETER = "g"  # (broker/parameters.py)
VHOST_DELETED_TEXT = "vhost '{}' is deleted"


class TenancyError(Exception):
    """A request that cannot be applied (unknown user or vhost, a bad regex or hash): the API's 400
    or 404, the definitions import's message."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing  # the API answers 404


def _record(broker: Broker, kind: str, key: str, value: dict[str, Any] | None) -> None:
    if value is None:
        broker.journal.definition(("meta-", kind, key))
    else:
        broker.journal.definition(("meta", kind, key, json.dumps(value, sort_keys=True).encode()))


# ------------------------------------------------------------ users

def user_record(user: User) -> dict[str, Any]:
    return {"name": user.name, "password_hash": base64.b64encode(user.password_hash).decode(),
            "hashing_algorithm": HASHING_ALGORITHM, "tags": list(user.tags), "limits": dict(user.limits)}


def vhost_record(vhost: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"name": vhost.name, "description": vhost.description, "tags": list(vhost.tags),
                              "limits": dict(vhost.limits)}
    if vhost.default_queue_type:
        record["default_queue_type"] = vhost.default_queue_type
    return record


def decode_password_hash(text: str) -> bytes:
    """A definitions file's ``password_hash`` (base64 of salt + SHA-256; empty: no password)."""
    try:
        value = base64.b64decode(text, validate=True)
    except ValueError:
        raise TenancyError("password_hash is not base64") from None
    if value and len(value) != 36:
        raise TenancyError("password_hash is not a salted SHA-256 hash (rabbit_password_hashing_sha256)")
    return value


def parse_tags(tags: Any) -> tuple[str, ...]:
    """Tags as RabbitMQ takes them: a comma-separated string or a list."""
    if isinstance(tags, str):
        items = tags.split(",")
    elif isinstance(tags, list) and all(isinstance(tag, str) for tag in tags):
        items = tags
    else:
        raise TenancyError("tags must be a string or a list of strings")
    return tuple(dict.fromkeys(tag.strip() for tag in items if tag.strip()))


def put_user(broker: Broker, name: str, *, password: str | None = None, password_hash: bytes | None = None,
             tags: tuple[str, ...] = (), limits: dict[str, int] | None = None) -> User:
    """Create or replace a user. Without a password or hash the user cannot log in with a
    password (RabbitMQ's passwordless users); an existing user keeps its hash if neither is given."""
    if not name:
        raise TenancyError("user name must not be empty")
    users = broker.users
    existing = users.users.get(name)
    if password is not None:
        stored = hash_password(password)
    elif password_hash is not None:
        stored = password_hash
    else:
        stored = existing.password_hash if existing is not None else b""
    if limits is None:
        limits = dict(existing.limits) if existing is not None else {}
    user = User(name, stored, tags, limits)
    users.users[name] = user
    _record(broker, USER, name, user_record(user))
    return user


def delete_user(broker: Broker, name: str) -> None:
    users = broker.users
    if name not in users.users:
        raise TenancyError(f"no user '{name}'", missing=True)
    del users.users[name]
    _record(broker, USER, name, None)
    for user, vhost in [key for key in users.permissions if key[0] == name]:
        clear_permission(broker, user, vhost)
    for user, vhost in [key for key in users.topic_permissions if key[0] == name]:
        clear_topic_permission(broker, user, vhost)


# ------------------------------------------------------------ virtual hosts

def put_vhost(broker: Broker, name: str, *, description: str = "", tags: tuple[str, ...] = (),
              default_queue_type: str | None = None, limits: dict[str, int] | None = None) -> Any:
    """Create a virtual host (with its ``amq.*`` exchanges), or update its description and tags."""
    if not name:
        raise TenancyError("vhost name must not be empty")
    if default_queue_type in ("", "undefined"):  # (RabbitMQ 3.12/3.13 export "undefined" for none)
        default_queue_type = None
    if default_queue_type not in (None, "classic", "quorum"):
        raise TenancyError(f"default_queue_type {default_queue_type!r} is not supported: classic or quorum "
                           f"(streams are not implemented yet)")
    vhost = broker.vhosts.get(name) or broker.add_vhost(name)
    vhost.description = description
    vhost.tags = tags
    vhost.default_queue_type = default_queue_type
    if limits is not None:
        vhost.limits = dict(limits)
    _record(broker, VHOST, name, vhost_record(vhost))
    return vhost


def delete_vhost(broker: Broker, name: str) -> None:
    """Close its connections (320), delete its queues (and their messages) and exchanges, and
    the permissions on it, as RabbitMQ does."""
    vhost = broker.vhosts.get(name)
    if vhost is None:
        raise TenancyError(f"no vhost '{name}'", missing=True)
    for session in [session for session in broker.sessions if session.vhost is vhost]:
        session.close(ReplyCode.CONNECTION_FORCED, VHOST_DELETED_TEXT.format(name))
        session.vhost_deleted()
    vhost.delete_everything()
    for kind, held_policies in ((POLICY, vhost.policies), (OPERATOR_POLICY, vhost.operator_policies)):
        for policy_name in held_policies:
            _record(broker, kind, f"{name}\0{policy_name}", None)
    del broker.vhosts[name]
    users = broker.users
    for user, vhost_name in [key for key in users.permissions if key[1] == name]:
        clear_permission(broker, user, vhost_name)
    for user, vhost_name in [key for key in users.topic_permissions if key[1] == name]:
        clear_topic_permission(broker, user, vhost_name)
    _record(broker, VHOST, name, None)
    log.info("deleted vhost '%s'", name)


# ------------------------------------------------------------ limits

VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")


def _limit_value(name: str, value: Any, known: tuple[str, ...]) -> int | None:
    """A limit's value as RabbitMQ takes it: an integer; negative means no limit (None)."""
    if name not in known:
        raise TenancyError(f"unknown limit '{name}' (known: {', '.join(known)})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TenancyError(f"limit '{name}' must be an integer, not {value!r}")
    return None if value < 0 else value


def _limited(broker: Broker, kind: str, owner: str) -> tuple[Any, tuple[str, ...], Callable[[], None]]:
    """The vhost or user whose limits change (``kind`` "vhost" or "user"), the limit names it
    takes, and how to journal it afterwards."""
    if kind == "vhost":
        vhost = broker.vhosts.get(owner)
        if vhost is None:
            raise TenancyError(f"no vhost '{owner}'", missing=True)
        return vhost, VHOST_LIMITS, lambda: _record(broker, VHOST, owner, vhost_record(vhost))
    user = broker.users.users.get(owner)
    if user is None:
        raise TenancyError(f"no user '{owner}'", missing=True)
    return user, USER_LIMITS, lambda: _record(broker, USER, owner, user_record(user))


def set_limit(broker: Broker, kind: str, owner: str, name: str, value: Any) -> None:
    """A vhost's or user's limit (a negative value: none)."""
    holder, known, journal = _limited(broker, kind, owner)
    limit = _limit_value(name, value, known)
    if limit is None:
        holder.limits.pop(name, None)
    else:
        holder.limits[name] = limit
    journal()


def replace_vhost_limits(broker: Broker, vhost_name: str, limits: dict[str, int]) -> None:
    """All of a vhost's limits at once (its ``vhost-limits`` runtime parameter)."""
    vhost, _, journal = _limited(broker, "vhost", vhost_name)
    vhost.limits = dict(limits)
    journal()


def clear_limit(broker: Broker, kind: str, owner: str, name: str) -> None:
    holder, _, journal = _limited(broker, kind, owner)
    if name not in holder.limits:
        raise TenancyError(f"no limit '{name}' on {kind} '{owner}'", missing=True)
    del holder.limits[name]
    journal()


# ------------------------------------------------------------ policies

def set_policy(broker: Broker, vhost_name: str, name: str, *, pattern: Any, definition: Any, priority: Any = 0,
               apply_to: Any = "all", operator: bool = False) -> Policy:
    """Create or replace a policy (or operator policy); it applies to existing and new entities
    at once."""
    vhost = broker.vhosts.get(vhost_name)
    if vhost is None:
        raise TenancyError(f"no vhost '{vhost_name}'", missing=True)
    if not name:
        raise TenancyError("policy name must not be empty")
    try:
        check_pattern(pattern)
        checked = validate_definition(definition, operator=operator)
    except PolicyError as exc:
        raise TenancyError(f"policy '{name}': {exc.reason}") from None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TenancyError(f"policy '{name}': priority must be an integer")
    if apply_to not in APPLY_TO:
        raise TenancyError(f"policy '{name}': apply-to must be one of {', '.join(APPLY_TO)}")
    policy = Policy(vhost_name, name, pattern, checked, priority, apply_to)
    (vhost.operator_policies if operator else vhost.policies)[name] = policy
    _record(broker, OPERATOR_POLICY if operator else POLICY, f"{vhost_name}\0{name}", policy.view())
    vhost.apply_policies()
    return policy


def clear_policy(broker: Broker, vhost_name: str, name: str, *, operator: bool = False) -> None:
    vhost = broker.vhosts.get(vhost_name)
    held = (vhost.operator_policies if operator else vhost.policies) if vhost is not None else {}
    if name not in held:
        raise TenancyError(f"no policy '{name}' in vhost '{vhost_name}'", missing=True)
    del held[name]
    _record(broker, OPERATOR_POLICY if operator else POLICY, f"{vhost_name}\0{name}", None)
    vhost.apply_policies()


# ------------------------------------------------------------ permissions

def _check_user_and_vhost(broker: Broker, user: str, vhost: str) -> None:
    if user not in broker.users.users:
        raise TenancyError(f"no user '{user}'")
    if vhost not in broker.vhosts:
        raise TenancyError(f"no vhost '{vhost}'")


def _check_regexes(*regexes: str) -> None:
    for regex in regexes:
        problem = check_regex(regex)
        if problem:
            raise TenancyError(problem)


def set_permission(broker: Broker, user: str, vhost: str, permission: Permission) -> None:
    _check_user_and_vhost(broker, user, vhost)
    _check_regexes(permission.configure, permission.write, permission.read)
    broker.users.permissions[(user, vhost)] = permission
    _record(broker, PERMISSION, f"{vhost}\0{user}",
            {"user": user, "vhost": vhost, "configure": permission.configure, "write": permission.write,
             "read": permission.read})
    broker.access_changed(user, vhost)


def clear_permission(broker: Broker, user: str, vhost: str) -> None:
    if broker.users.permissions.pop((user, vhost), None) is None:
        raise TenancyError(f"no permission for user '{user}' in vhost '{vhost}'", missing=True)
    _record(broker, PERMISSION, f"{vhost}\0{user}", None)
    broker.access_changed(user, vhost)


def set_topic_permission(broker: Broker, user: str, vhost: str, permission: TopicPermission) -> None:
    _check_user_and_vhost(broker, user, vhost)
    _check_regexes(permission.write, permission.read)
    broker.users.topic_permissions.setdefault((user, vhost), {})[permission.exchange] = permission
    _record(broker, TOPIC_PERMISSION, f"{vhost}\0{user}\0{permission.exchange}",
            {"user": user, "vhost": vhost, "exchange": permission.exchange, "write": permission.write,
             "read": permission.read})
    broker.access_changed(user, vhost)


def clear_topic_permission(broker: Broker, user: str, vhost: str, exchange: str | None = None) -> None:
    """One exchange's topic permission, or all of the user's in the vhost (``exchange`` None)."""
    held = broker.users.topic_permissions.get((user, vhost), {})
    names = list(held) if exchange is None else [exchange]
    if exchange is not None and exchange not in held:
        raise TenancyError(f"no topic permission for user '{user}' in vhost '{vhost}' on exchange "
                           f"'{exchange}'", missing=True)
    for name in names:
        del held[name]
        _record(broker, TOPIC_PERMISSION, f"{vhost}\0{user}\0{name}", None)
    if not held:
        broker.users.topic_permissions.pop((user, vhost), None)
    broker.access_changed(user, vhost)


# ------------------------------------------------------------ definitions

def import_definitions(broker: Broker, definitions: dict[str, Any]) -> None:
    """Users, vhosts, permissions and topic permissions of a definitions file (RabbitMQ's JSON,
    3.x or 4.x), in RabbitMQ's order; idempotent. A bad entry raises TenancyError naming it;
    the entries before it stay applied, as with RabbitMQ."""
    def entries(key: str) -> list[dict[str, Any]]:
        items = definitions.get(key) or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise TenancyError(f"{key} must be a list of objects")
        return items

    def text(item: dict[str, Any], key: str, default: str | None = None) -> str:
        value = item.get(key, default)
        if not isinstance(value, str):
            raise TenancyError(f"{key} missing or not a string in {json.dumps(item)[:200]}")
        return value

    for item in entries("users"):
        name = text(item, "name")
        algorithm = item.get("hashing_algorithm", HASHING_ALGORITHM)
        limits = import_limits(item.get("limits"), USER_LIMITS, f"user '{name}'")
        if "password" in item:
            put_user(broker, name, password=text(item, "password"), tags=parse_tags(item.get("tags", "")),
                     limits=limits)
            continue
        if algorithm != HASHING_ALGORITHM:
            raise TenancyError(f"user '{name}': unsupported hashing_algorithm {algorithm!r} "
                               f"(only {HASHING_ALGORITHM})")
        put_user(broker, name, password_hash=decode_password_hash(text(item, "password_hash", "")),
                 tags=parse_tags(item.get("tags", "")), limits=limits)
    for item in entries("vhosts"):
        metadata = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        put_vhost(broker, text(item, "name"),
                  description=str(item.get("description", metadata.get("description", "")) or ""),
                  tags=parse_tags(item.get("tags", metadata.get("tags", []))),
                  default_queue_type=item.get("default_queue_type", metadata.get("default_queue_type")))
    for item in entries("permissions"):
        set_permission(broker, text(item, "user"), text(item, "vhost"),
                       Permission(text(item, "configure"), text(item, "write"), text(item, "read")))
    for item in entries("topic_permissions"):
        set_topic_permission(broker, text(item, "user"), text(item, "vhost"),
                             TopicPermission(text(item, "exchange"), text(item, "write"), text(item, "read")))
    for key, operator in (("policies", False), ("operator_policies", True)):
        for item in entries(key):
            set_policy(broker, text(item, "vhost"), text(item, "name"), pattern=item.get("pattern"),
                       definition=item.get("definition"), priority=item.get("priority", 0),
                       apply_to=item.get("apply-to", "all"), operator=operator)


def import_limits(value: Any, known: tuple[str, ...], owner: str) -> dict[str, int]:
    """A definitions entry's limits (a missing or empty one, or RabbitMQ's ``[]``: none)."""
    if value is None or value == [] or value == {}:
        return {}
    if not isinstance(value, dict):
        raise TenancyError(f"limits of {owner} must be an object")
    limits = {}
    for name, number in value.items():
        try:
            limit = _limit_value(name, number, known)
        except TenancyError as exc:
            raise TenancyError(f"{owner}: {exc.reason}") from None
        if limit is not None:
            limits[name] = limit
    return limits


# ------------------------------------------------------------ recovery

def metadata_records(broker: Broker) -> list[tuple]:
    """Every user, vhost and permission as journal records (the first start writes the defaults)."""
    users = broker.users
    records: list[tuple] = []
    dump = lambda value: json.dumps(value, sort_keys=True).encode()  # noqa: E731
    for user in users.users.values():
        records.append(("meta", USER, user.name, dump(user_record(user))))
    for name, vhost in broker.vhosts.items():
        records.append(("meta", VHOST, name, dump(vhost_record(vhost))))
    for (user, vhost), permission in users.permissions.items():
        records.append(("meta", PERMISSION, f"{vhost}\0{user}", dump(
            {"user": user, "vhost": vhost, "configure": permission.configure, "write": permission.write,
             "read": permission.read})))
    for vhost in broker.vhosts.values():
        for kind, held_policies in ((POLICY, vhost.policies), (OPERATOR_POLICY, vhost.operator_policies)):
            for policy in held_policies.values():
                records.append(("meta", kind, f"{vhost.name}\0{policy.name}", dump(policy.view())))
    for (user, vhost), held in users.topic_permissions.items():
        for exchange, permission in held.items():
            records.append(("meta", TOPIC_PERMISSION, f"{vhost}\0{user}\0{exchange}", dump(
                {"user": user, "vhost": vhost, "exchange": exchange, "write": permission.write,
                 "read": permission.read})))
    for name, value in broker.global_parameters.items():
        records.append(("meta", GLOBAL_PARAMETER, name, dump({"name": name, "value": value})))
    return records


def restore_metadata(broker: Broker, records: list[tuple[str, str, bytes]]) -> bool:
    """Replace the broker's users, vhosts and permissions with the stored ones (journal off).
    Returns False when there are none (a first start: the defaults stay and are to be written)."""
    if not records:
        return False
    decoded: dict[str, list[dict[str, Any]]] = {USER: [], VHOST: [], PERMISSION: [], TOPIC_PERMISSION: [],
                                               POLICY: [], OPERATOR_POLICY: [], GLOBAL_PARAMETER: []}
    for kind, key, value in records:
        try:
            decoded[kind].append(json.loads(value))
        except (KeyError, ValueError) as exc:
            log.error("skipped an unreadable access record %s %r: %s", kind, key, exc)
    users = broker.users
    users.users.clear()
    users.permissions.clear()
    users.topic_permissions.clear()
    stored_vhosts = {item.get("name") for item in decoded[VHOST] if isinstance(item, dict)}
    for name in [name for name in broker.vhosts if name not in stored_vhosts]:
        del broker.vhosts[name]  # (the default "/", deleted by an operator before the restart)

    def vhost(item: dict[str, Any]) -> None:
        queue_type = item.get("default_queue_type")
        if queue_type not in (None, "classic", "quorum"):
            log.warning("vhost '%s': its stored default queue type %r is not supported; it has none now",
                        item["name"], queue_type)
            queue_type = None
        put_vhost(broker, item["name"], description=item.get("description", ""),
                  tags=tuple(item.get("tags", ())), default_queue_type=queue_type,
                  limits=dict(item.get("limits") or {}))

    def user(item: dict[str, Any]) -> None:
        put_user(broker, item["name"], password_hash=base64.b64decode(item.get("password_hash", "")),
                 tags=tuple(item.get("tags", ())), limits=dict(item.get("limits") or {}))

    def permission(item: dict[str, Any]) -> None:
        users.permissions[(item["user"], item["vhost"])] = Permission(item["configure"], item["write"], item["read"])

    def topic_permission(item: dict[str, Any]) -> None:
        users.topic_permissions.setdefault((item["user"], item["vhost"]), {})[item["exchange"]] = \
            TopicPermission(item["exchange"], item["write"], item["read"])

    if decoded[GLOBAL_PARAMETER]:  # (a data directory from before they were stored keeps the new id)
        broker.global_parameters.clear()

    def global_parameter(item: dict[str, Any]) -> None:
        broker.global_parameters[item["name"]] = item["value"]

    def policy(item: dict[str, Any], operator: bool) -> None:
        held_in = broker.vhosts.get(item["vhost"])
        if held_in is not None:  # (applied to the queues as recovery declares them)
            held = held_in.operator_policies if operator else held_in.policies
            held[item["name"]] = Policy(item["vhost"], item["name"], check_pattern(item["pattern"]),
                                        validate_definition(item["definition"], operator=operator),
                                        item.get("priority", 0), item.get("apply-to", "all"))

    appliers = ((VHOST, vhost), (USER, user), (PERMISSION, permission), (TOPIC_PERMISSION, topic_permission),
                (POLICY, lambda item: policy(item, False)), (OPERATOR_POLICY, lambda item: policy(item, True)),
                (GLOBAL_PARAMETER, global_parameter))
    for kind, apply in appliers:
        for item in decoded[kind]:
            try:
                apply(item)
            except (KeyError, TypeError, ValueError, TenancyError, PolicyError) as exc:
                # one damaged record is skipped, named; the broker starts with the rest
                log.error("skipped an unusable access record (%s) %.200r: %r", kind, item, exc)
    return True
