"""Users, their permissions, and SASL mechanisms (PLAIN, AMQPLAIN).

Passwords are kept as RabbitMQ keeps them: a 4-byte salt followed by SHA-256(salt + password).
Users named in ``loopback_users`` (guest, by default) may log in only from a loopback address. A user may
open a virtual host when it has a permission there (:mod:`amqpbroker.broker.access`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass, field

from pamqp import decode

from amqpbroker.broker.access import Access, Permission, TopicPermission
from amqpbroker.errors import ConnectionError, ReplyCode
from amqpbroker.protocol.connection import AuthenticationFailed

__all__ = ["User", "UserDatabase", "hash_password", "parse_response", "is_loopback_address"]


def is_loopback_address(address: str) -> bool:
    """Is this peer address loopback (IPv4-mapped IPv6 and zone ids included)? Loopback-only
    users (guest) may log in only from such an address, over AMQP and HTTP alike."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def hash_password(password: str, salt: bytes | None = None) -> bytes:
    salt = os.urandom(4) if salt is None else salt
    return salt + hashlib.sha256(salt + password.encode()).digest()


def password_matches(password_hash: bytes, password: str) -> bool:
    return hmac.compare_digest(hash_password(password, password_hash[:4]), password_hash)


_NO_USER_HASH = hash_password("", b"\x00\x00\x00\x00")


@dataclass
class User:
    name: str
    password_hash: bytes
    tags: tuple[str, ...] = ()
    limits: dict[str, int] = field(default_factory=dict)  # "max-connections", "max-channels"


def parse_response(mechanism: str, response: bytes) -> tuple[str, str]:
    """``(username, password)`` from a SASL response; a malformed one fails the login."""
    if mechanism == "PLAIN":
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise AuthenticationFailed("malformed PLAIN response")
        return parts[1].decode(errors="replace"), parts[2].decode(errors="replace")
    if mechanism == "AMQPLAIN":
        # a field table without its length prefix
        try:
            _, table = decode.field_table(len(response).to_bytes(4, "big") + response)
        except (ValueError, TypeError) as exc:
            raise AuthenticationFailed(f"malformed AMQPLAIN response: {exc}") from None
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if login is None or password is None:
            raise AuthenticationFailed("AMQPLAIN response without LOGIN and PASSWORD")
        as_text = (lambda v: v.decode(errors="replace") if isinstance(v, bytes) else str(v))
        return as_text(login), as_text(password)
    raise ConnectionError(ReplyCode.COMMAND_INVALID, f"unknown authentication mechanism '{mechanism}'",
                          10, 11)


def shown(name: str) -> str:
    """A user name a client sent, fit for a log line: quoted and escaped (no forged lines), at
    most 64 characters of it."""
    return repr(name[:64]) + ("..." if len(name) > 64 else "")


class UserDatabase:
    """Users, and their permissions per virtual host (``(user, vhost)`` keys)."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.loopback_users: set[str] = set()  # who may log in from loopback addresses only
        self.permissions: dict[tuple[str, str], Permission] = {}
        self.topic_permissions: dict[tuple[str, str], dict[str, TopicPermission]] = {}

    def add(self, name: str, password: str, *, tags: tuple[str, ...] = (), vhosts: tuple[str, ...] = ("/",)) -> User:
        """A user with its password, and full permissions on ``vhosts`` (tests and defaults)."""
        user = User(name, hash_password(password), tags)
        self.users[name] = user
        for vhost in vhosts:
            self.permissions[(name, vhost)] = Permission()
        return user

    def vhosts_of(self, name: str) -> list[str]:
        """The virtual hosts ``name`` may open."""
        return sorted(vhost for user, vhost in self.permissions if user == name)

    def access(self, user: str, vhost: str) -> Access:
        return Access(user, vhost, self.permissions.get((user, vhost)),
                      dict(self.topic_permissions.get((user, vhost), {})))

    def authenticate(self, mechanism: str, response: bytes, *, from_loopback: bool) -> User:
        name, password = parse_response(mechanism, response)
        return self.check(name, password, from_loopback=from_loopback)

    def external(self, name: str | None, *, from_loopback: bool) -> User:
        """SASL EXTERNAL: the user a verified client certificate names must exist."""
        if name is None:
            raise AuthenticationFailed("EXTERNAL login without a verified client certificate naming a user")
        user = self.users.get(name)
        if user is None:
            raise AuthenticationFailed(f"EXTERNAL login: no user {shown(name)} (from the client certificate)")
        if name in self.loopback_users and not from_loopback:
            raise AuthenticationFailed(f"user {shown(name)} can only connect via localhost")
        return user

    def may_impersonate(self, name: str) -> bool:
        """May the user publish with another user's ``user_id`` (RabbitMQ's ``impersonator`` tag)?"""
        user = self.users.get(name)
        return user is not None and "impersonator" in user.tags

    def check(self, name: str, password: str, *, from_loopback: bool) -> User:
        """The user, if the password is right and it may log in from there (AMQP and HTTP)."""
        user = self.users.get(name)
        # an unknown name costs the same hash as a wrong password (no enumeration by timing)
        if not password_matches(user.password_hash if user is not None else _NO_USER_HASH, password) or user is None:
            raise AuthenticationFailed(f"invalid credentials for user {shown(name)}")
        if name in self.loopback_users and not from_loopback:
            raise AuthenticationFailed(f"user {shown(name)} can only connect via localhost")
        return user
