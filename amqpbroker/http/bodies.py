"""Request bodies: a JSON object, read with a size bound and checked field by field.

Each accessor takes the parsed body, a key and a default, and answers RabbitMQ's 400
(``{"error": "bad_request", "reason": ...}``) for a value of the wrong type, so that no handler
meets a ``str`` where it wanted a ``bool`` and ends in a 500. Message properties for an HTTP publish
are checked the same way and built into pamqp's ``Basic.Properties``.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from pamqp import commands
from starlette.requests import Request

from amqpbroker.codec.tables import TableError, encode_table
from amqpbroker.errors import precondition_failed
from amqpbroker.http.errors import HTTPError, bad_request, refused
from amqpbroker.http.views import json_value

__all__ = ["MAX_BODY_BYTES", "json_object", "flag", "text", "table", "integer", "arguments", "choice", "name_of",
           "amqp_properties", "properties_view"]

MAX_BODY_BYTES = 20 << 20  # RabbitMQ's default HTTP API body limit (management.http.max_body_size)
NOT_JSON = "not_json"  # RabbitMQ's reason for a body that is not a JSON object

_STRING_PROPERTIES = {  # the API's name -> pamqp's attribute
    "content_type": "content_type", "content_encoding": "content_encoding", "correlation_id": "correlation_id",
    "reply_to": "reply_to", "expiration": "expiration", "message_id": "message_id", "type": "message_type",
    "user_id": "user_id", "app_id": "app_id", "cluster_id": "cluster_id",
}
_SHOWN_PROPERTIES = (*_STRING_PROPERTIES.items(), ("delivery_mode", "delivery_mode"),
                     ("priority", "priority"), ("timestamp", "timestamp"))


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (``{}`` when empty). Strings must be valid Unicode (no lone
    surrogates from ``\\ud800`` escapes), so that everything in it can be encoded as UTF-8 later."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise HTTPError(413, "bad_request", f"request body larger than {MAX_BODY_BYTES} bytes")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
        json.dumps(body, ensure_ascii=False).encode()  # refuses lone surrogates
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise bad_request(NOT_JSON) from None
    if not isinstance(body, dict):
        raise bad_request(NOT_JSON)
    return body


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean; ``"true"``/``"false"`` are taken too, as RabbitMQ takes them."""
    value = body.get(key, default)
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise bad_request(f"{key} must be true or false, not {_shown(value)}")


def text(body: dict[str, Any], key: str, default: str) -> str:
    """A string; a number is taken as its decimal text, as RabbitMQ takes it."""
    value = body.get(key, default)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise bad_request(f"{key} must be a string, not {_shown(value)}")


def table(body: dict[str, Any], key: str) -> dict[str, Any]:
    """An object (arguments, headers); missing or null is an empty one."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{key} must be an object, not {_shown(value)}")
    return value


def integer(body: dict[str, Any], key: str, default: int | None, *, low: int | None = 0,
            high: int | None = None) -> int | None:
    """An integer (not a bool), within ``low`` and ``high`` where they are given; a string of
    digits is taken too, as RabbitMQ takes it (rabbitmqadmin sends ``"count": "1"``)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low)
            or (high is not None and value > high)):
        bounds = "".join((f" from {low}" if low is not None else "", f" to {high}" if high is not None else ""))
        raise bad_request(f"{key} must be an integer{bounds}, not {_shown(value)}")
    return value


def arguments(body: dict[str, Any], key: str = "arguments") -> dict[str, Any]:
    """Optional arguments: an object holding only what a field table carries (integers within
    64 bits, nesting within the codec's bound), as the broker stores and sends them as one."""
    value = dict(table(body, key))
    try:
        encode_table(value)
    except TableError as exc:
        raise bad_request(f"{key}: {exc}") from None
    return value


def choice(body: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = body.get(key, default)
    if value not in allowed:
        raise bad_request(f"{key} must be one of {', '.join(allowed)}, not {_shown(value)}")
    return value


def name_of(kind: str, name: str) -> str:
    """A queue or exchange name from a path or a body: at most 255 bytes, as AMQP can carry."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > 255:
        raise bad_request(f"{kind} should be less than 255 bytes, actually was {size}")
    return name


def _shown(value: Any) -> str:
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return shown if len(shown) <= 64 else shown[:61] + "..."


# ------------------------------------------------------------------ message properties

def amqp_properties(given: Any) -> commands.Basic.Properties:
    """The ``properties`` of an HTTP publish, checked: strings, octets (``delivery_mode`` 1 or
    2, ``priority``), a ``timestamp`` in seconds and a ``headers`` object; unknown names are
    ignored, as RabbitMQ ignores them."""
    if not isinstance(given, dict):
        raise bad_request(f"properties must be an object, not {_shown(given)}")
    properties = commands.Basic.Properties()
    for key, attribute in _STRING_PROPERTIES.items():
        value = given.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"property {key} must be a string, not {_shown(value)}")
        setattr(properties, attribute, value)
    properties.priority = integer(given, "priority", None, high=255)
    properties.delivery_mode = integer(given, "delivery_mode", None, high=255)
    if properties.delivery_mode not in (None, 1, 2):  # as RabbitMQ's channel refuses it
        raise refused(precondition_failed(f"invalid message: {{delivery_mode_unknown,{properties.delivery_mode}}}"))
    seconds = integer(given, "timestamp", None, high=(1 << 64) - 1)
    if seconds is not None:
        properties.timestamp = _timestamp(seconds)
    if given.get("headers") is not None:
        properties.headers = table(given, "headers")
    return properties


def _timestamp(seconds: int) -> Any:
    try:
        return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return seconds  # beyond what datetime holds: encoded as the number


def properties_view(properties: commands.Basic.Properties) -> dict[str, Any]:
    """A message's properties as ``/get`` shows them (timestamps in seconds)."""
    out = {}
    for key, attribute in _SHOWN_PROPERTIES:
        value = getattr(properties, attribute, None)
        if value is not None:
            out[key] = json_value(value)
    if properties.headers:
        out["headers"] = json_value(properties.headers)
    return out
