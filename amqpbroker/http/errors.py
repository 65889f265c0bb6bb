"""The management API's error answers, in RabbitMQ's JSON shape: ``{"error": ..., "reason": ...}``."""

from __future__ import annotations

from amqpbroker.errors import AMQPError

__all__ = ["HTTPError", "bad_request", "not_found", "refused"]


class HTTPError(Exception):
    """An answer other than success: the HTTP status and RabbitMQ's ``error`` and ``reason``."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def bad_request(reason: str) -> HTTPError:
    return HTTPError(400, "bad_request", reason)


def not_found() -> HTTPError:
    return HTTPError(404, "Object Not Found", "Not Found")


def refused(exc: AMQPError) -> HTTPError:
    """What RabbitMQ answers when the AMQP channel it uses for a request (``/get``, ``/publish``)
    was closed: 400, with the reply code before the close text."""
    return bad_request(f"{exc.reply_code} {exc.reply_text}")
