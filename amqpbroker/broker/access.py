"""Who may do what: permissions per user and virtual host, checked where RabbitMQ checks them.

A permission is three regular expressions (configure, write, read) matched against a resource's
name anywhere in it, as RabbitMQ's ``re:run`` does (``^`` and ``$`` anchor); an empty one matches
nothing. The default exchange is the resource ``amq.default``. Topic permissions (per user, vhost
and exchange: write and read patterns, with ``{username}`` and ``{vhost}`` expanded) are checked
on the routing key of publishes to, and queue bindings from, topic exchanges; an exchange without
one is open to everyone who may use it.

:class:`Access` is one session's view (a user in a vhost): every check of the method table and
the publish path goes through it, and it remembers what it already allowed, so a publish costs a
dictionary lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from amqpbroker.errors import access_refused

__all__ = ["Permission", "TopicPermission", "Access", "resource_name", "CONFIGURE", "WRITE", "READ"]

CONFIGURE, WRITE, READ = "configure", "write", "read"
DEFAULT_EXCHANGE_RESOURCE = "amq.default"


@lru_cache(maxsize=1024)
def _pattern(regex: str) -> re.Pattern[str] | None:
    """The compiled expression (None: an empty one, which matches nothing)."""
    return re.compile(regex) if regex else None


def check_regex(regex: str) -> str | None:
    """None when ``regex`` compiles, else why not (for the API's 400)."""
    try:
        _pattern(regex)
    except re.error as exc:
        return f"invalid regular expression {regex!r}: {exc}"
    return None


def _matches(regex: str, name: str) -> bool:
    pattern = _pattern(regex)
    return pattern is not None and pattern.search(name) is not None


def resource_name(kind: str, name: str) -> str:
    """The name permissions are matched against (the default exchange is ``amq.default``)."""
    return DEFAULT_EXCHANGE_RESOURCE if kind == "exchange" and not name else name


@dataclass(frozen=True, slots=True)
class Permission:
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"

    def allows(self, action: str, name: str) -> bool:
        return _matches(getattr(self, action), name)


@dataclass(frozen=True, slots=True)
class TopicPermission:
    exchange: str
    write: str = ".*"
    read: str = ".*"

    def allows(self, action: str, routing_key: str, user: str, vhost: str) -> bool:
        regex = getattr(self, action).replace("{username}", re.escape(user)).replace("{vhost}", re.escape(vhost))
        return _matches(regex, routing_key)


class Access:
    """A user's rights in one virtual host (``permission`` None: none at all)."""

    __slots__ = ("user", "vhost", "permission", "topic_permissions", "writable", "_allowed")

    def __init__(self, user: str, vhost: str, permission: Permission | None,
                 topic_permissions: dict[str, TopicPermission] | None = None) -> None:
        self.user = user
        self.vhost = vhost
        self.permission = permission
        self.topic_permissions = topic_permissions or {}
        self.writable: set[str] = set()  # exchanges it may publish to (the publish path's test)
        self._allowed: set[tuple[str, str, str]] = set()  # (action, kind, name) checked and allowed

    def check(self, action: str, kind: str, name: str) -> None:
        """403 ACCESS_REFUSED unless the user may ``action`` the ``kind`` named ``name``."""
        key = (action, kind, name)
        if key in self._allowed:
            return
        resource = resource_name(kind, name)
        permission = self.permission
        if permission is None or not permission.allows(action, resource):
            raise access_refused(f"access to {kind} '{resource}' in vhost '{self.vhost}' "
                                 f"refused for user '{self.user}'")
        if len(self._allowed) > 4096:  # names chosen by clients: keep the memory bounded
            self._allowed.clear()
        self._allowed.add(key)

    def check_publish(self, exchange: str) -> None:
        """Write on the exchange (callers test ``exchange in writable`` first)."""
        self.check(WRITE, "exchange", exchange)
        if len(self.writable) > 4096:
            self.writable.clear()
        self.writable.add(exchange)

    def check_any(self, kind: str, name: str) -> None:
        """A passive declare: any of the three permissions will do (RabbitMQ 4.2.7 / 4.3.1)."""
        resource = resource_name(kind, name)
        permission = self.permission
        if permission is None or not any(permission.allows(action, resource) for action in (CONFIGURE, WRITE, READ)):
            raise access_refused(f"access to {kind} '{resource}' in vhost '{self.vhost}' "
                                 f"refused for user '{self.user}'")

    def check_topic(self, action: str, exchange: str, routing_key: str) -> None:
        """A topic exchange's routing key against the user's topic permission for it, if any."""
        topic = self.topic_permissions.get(exchange)
        if topic is not None and not topic.allows(action, routing_key, self.user, self.vhost):
            raise access_refused(f"access to topic '{routing_key}' in exchange '{exchange}' in vhost "
                                 f"'{self.vhost}' refused for user '{self.user}'")

    def forget(self) -> None:
        """The permissions changed: check everything again from now on."""
        self._allowed.clear()
        self.writable.clear()
