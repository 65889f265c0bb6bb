"""Configuration: defaults, then a TOML file, then ``AMQPBROKER_*`` environment variables, then
command-line flags; the result is one frozen :class:`Config` that components receive."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqpbroker.broker.compatibility import profile

__all__ = ["Config", "default_data_dir", "load_config"]


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "amqpbroker")


@dataclass(frozen=True)
class Config:
    host: str | None = None  # None: every interface, IPv4 and IPv6
    port: int = 5672
    data_dir: str = dataclasses.field(default_factory=default_data_dir)
    heartbeat: int = 60
    frame_max: int = 131072
    channel_max: int = 2047
    # which RabbitMQ generation's rules apply where 3.x and 4.x differ: "3.13", "4.0" or "4.3"
    # (broker/compatibility.py); it sets the defaults of the two settings that say "profile"
    compatibility: str = "4.0"
    max_message_size: int | None = None  # bytes (profile: 16 MiB, 3.13: 128 MiB); larger gets 406
    disk_free_limit: int = 50_000_000  # bytes free in the data dir below which publishers are blocked
    connection_max: int = 0  # connections in all (0: no limit)
    connection_max_per_user: int = 0  # connections of one user (0: no limit)
    consumer_max_per_channel: int = 0  # (0: no limit)
    queue_max_per_vhost: int = 0  # (0: no limit)
    # ms a consumer's delivery may stay unacknowledged before the consumer is cancelled (0: no
    # limit; RabbitMQ's default is 30 minutes: broker/consumer_timeouts.py says why not here)
    consumer_timeout: int = 0
    # x-delivery-limit for queues that set none (negative: no limit): after that many returns a
    # message is dead-lettered (reason delivery_limit) or dropped; RabbitMQ 4 gives quorum queues 20
    delivery_limit_classic: int = -1
    delivery_limit_quorum: int | None = None  # (profile: 20, 3.13: none)
    default_user: str = "guest"
    default_password: str = "guest"
    default_vhost: str = "/"  # the vhost made on the first start (the default user may use it)
    load_definitions: str = ""  # a definitions file (RabbitMQ's JSON) imported at every start
    # who may log in from loopback addresses only: user names, comma-separated ("none" or
    # "false": nobody; "true": the default user), as RabbitMQ's loopback_users (default guest)
    loopback_users: str = "guest"
    log_level: str = "info"
    shutdown_timeout: float = 5.0
    queue_window_messages: int = 2048  # ready messages a queue keeps in memory before paging out
    queue_window_bytes: int = 8 << 20  # ... or this many body bytes, whichever comes first
    memory_high_watermark: float = 0.4  # <= 1: of total memory; > 1: bytes; 0: no memory alarm
    prometheus_port: int = 15692  # /metrics, as rabbitmq_prometheus; 0: off
    prometheus_host: str | None = None  # None: every interface
    management_port: int = 15672  # the management HTTP API, as rabbitmq_management; 0: off
    management_host: str | None = "127.0.0.1"
    # host names browsers may reach the management API by, besides IP addresses, localhost and
    # this machine's name (comma-separated; "*": any): a guard against DNS rebinding
    management_allowed_hosts: str = ""
    # AMQPS: a TLS listener on tls_port once a certificate and key are given (server/tls.py)
    tls_port: int = 5671
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_cafile: str = ""  # CAs client certificates are checked against
    tls_verify_peer: bool = False  # ask clients for a certificate (checked against tls_cafile)
    tls_fail_if_no_peer_cert: bool = False  # ... and refuse those without one
    tls_versions: str = "tlsv1.2,tlsv1.3"
    tls_ciphers: str = ""  # an OpenSSL cipher string for TLS 1.2 (empty: Python's defaults)
    tls_cert_login_from: str = "common_name"  # EXTERNAL logins: common_name or subject_alternative_name
    management_tls: bool = False  # the management API over HTTPS (tls_certfile, tls_keyfile)
    prometheus_tls: bool = False  # /metrics over HTTPS (tls_certfile, tls_keyfile)

    def loopback_user_names(self) -> tuple[str, ...]:
        value = self.loopback_users.strip()
        if value.lower() in ("", "none", "false", "no", "off", "0"):
            return ()
        if value.lower() in ("true", "yes", "on", "1"):
            return (self.default_user,)
        return tuple(name.strip() for name in value.split(",") if name.strip())


_FIELDS = {field.name: field for field in dataclasses.fields(Config)}
_OPTIONAL_INTS = ("max_message_size", "delivery_limit_quorum")  # None: the profile's default


def _coerce(name: str, value: Any) -> Any:
    if value is None:
        return None
    kind = type(getattr(Config(), name))
    if name in ("host", "prometheus_host", "management_host"):
        return str(value) or None
    if name in _OPTIONAL_INTS:
        return int(value) if str(value).strip() != "" else None
    if kind is bool:
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if kind in (int, float):
        return kind(value)
    return str(value)


def load_config(file: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> Config:
    """Merge the four sources; unknown keys in the file are an error, unset flags are skipped."""
    values: dict[str, Any] = {}
    if file:
        with open(file, "rb") as handle:
            for key, value in tomllib.load(handle).items():
                key = key.replace("-", "_")
                if key not in _FIELDS:
                    raise ValueError(f"{file}: unknown setting {key!r}")
                values[key] = _coerce(key, value)
    env = os.environ if env is None else env
    if "AMQPBROKER_DEFAULT_PASS" in env and "AMQPBROKER_DEFAULT_PASSWORD" not in env:
        values["default_password"] = env["AMQPBROKER_DEFAULT_PASS"]  # as RabbitMQ's image: RABBITMQ_DEFAULT_PASS
    for name in _FIELDS:
        raw = env.get(f"AMQPBROKER_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw)
    for name, value in flags.items():
        if value is not None:
            values[name] = _coerce(name, value)
    config = Config(**values)
    profile(config.compatibility)  # (a ValueError naming the choices)
    return config
