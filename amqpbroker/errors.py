"""AMQP exceptions as values: each carries its reply code, text and the method that caused it.

The broker raises them anywhere in the protocol or domain code; exactly one place
(:meth:`amqpbroker.protocol.connection.Connection`'s error handling) turns them into
``channel.close`` or ``connection.close`` frames.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

__all__ = [
    "AMQPError", "ChannelError", "ConnectionError", "ReplyCode",
    "cut_to_bytes", "log_internal_error", "not_found", "precondition_failed", "access_refused", "resource_locked",
]


class ReplyCode:
    """AMQP 0-9-1 reply codes (spec section 1.2 and RabbitMQ's use of them)."""

    REPLY_SUCCESS = 200
    CONTENT_TOO_LARGE = 311
    NO_ROUTE = 312
    NO_CONSUMERS = 313
    CONNECTION_FORCED = 320
    INVALID_PATH = 402
    ACCESS_REFUSED = 403
    NOT_FOUND = 404
    RESOURCE_LOCKED = 405
    PRECONDITION_FAILED = 406
    FRAME_ERROR = 501
    SYNTAX_ERROR = 502
    COMMAND_INVALID = 503
    CHANNEL_ERROR = 504
    UNEXPECTED_FRAME = 505
    RESOURCE_ERROR = 506
    NOT_ALLOWED = 530
    NOT_IMPLEMENTED = 540
    INTERNAL_ERROR = 541

    NAMES = {
        200: "REPLY_SUCCESS", 311: "CONTENT_TOO_LARGE", 312: "NO_ROUTE", 313: "NO_CONSUMERS",
        320: "CONNECTION_FORCED", 402: "INVALID_PATH", 403: "ACCESS_REFUSED", 404: "NOT_FOUND",
        405: "RESOURCE_LOCKED", 406: "PRECONDITION_FAILED", 501: "FRAME_ERROR",
        502: "SYNTAX_ERROR", 503: "COMMAND_INVALID", 504: "CHANNEL_ERROR",
        505: "UNEXPECTED_FRAME", 506: "RESOURCE_ERROR", 530: "NOT_ALLOWED",
        540: "NOT_IMPLEMENTED", 541: "INTERNAL_ERROR",
    }


class AMQPError(Exception):
    """An error the peer is told about; ``text`` is prefixed with the code's name, as RabbitMQ does."""

    def __init__(self, reply_code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        name = ReplyCode.NAMES.get(reply_code, "ERROR")
        self.reply_code = reply_code
        self.reply_text = cut_to_bytes(f"{name} - {text}", 255)
        self.class_id = class_id
        self.method_id = method_id
        super().__init__(self.reply_text)

    def for_method(self, class_id: int, method_id: int) -> AMQPError:
        """Attach the offending method, unless one was set where the error was raised."""
        if not self.class_id:
            self.class_id, self.method_id = class_id, method_id
        return self


class ChannelError(AMQPError):
    """A soft error: the channel is closed, the connection and its other channels go on."""


class ConnectionError(AMQPError):  # noqa: A001 - the AMQP name; never the builtin
    """A hard error: the whole connection is closed."""


def cut_to_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (a shortstr), never inside a character."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def not_found(what: str) -> ChannelError:
    return ChannelError(ReplyCode.NOT_FOUND, what)


def precondition_failed(what: str) -> ChannelError:
    return ChannelError(ReplyCode.PRECONDITION_FAILED, what)


def access_refused(what: str) -> ChannelError:
    return ChannelError(ReplyCode.ACCESS_REFUSED, what)


def resource_locked(what: str) -> ChannelError:
    return ChannelError(ReplyCode.RESOURCE_LOCKED, what)


_TRACEBACK_LINES = 12  # of an internal error's traceback in the log: enough to find it, never 200 KB


def log_internal_error(logger: logging.Logger, where: str, exc: BaseException) -> None:
    """Log an unexpected exception (a bug of ours, or input we failed to refuse) in a bounded
    size: the last frames of its traceback and a message cut to 500 characters, so hostile input
    (a table nested thousands deep) cannot grow the log by megabytes."""
    frames = traceback.format_tb(exc.__traceback__, limit=-_TRACEBACK_LINES)
    message = cut_to_bytes(f"{type(exc).__name__}: {exc}", 500)
    logger.error("internal error in %s: %s\n%s", where, message, "".join(frames).rstrip())


class LogRate:
    """One log line per key every ``seconds`` at most (a warning that could repeat per message)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._last: dict[Any, float] = {}

    def allow(self, key: Any) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        if len(self._last) >= 10_000:  # (bounded: forgetting only allows an extra line)
            self._last.clear()
        self._last[key] = now
        return True

