"""Helpers the interop tests share: pika connections with short timeouts, name cleanup, draining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest

__all__ = ["Cleanup", "channel_error", "connect", "drain", "exists", "params"]


def params(url: str) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = 5
    parameters.stack_timeout = 10
    parameters.blocked_connection_timeout = 10
    return parameters


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(params(url))


class Cleanup:
    """Names a test created, deleted after it (queues first, then exchanges)."""

    def __init__(self) -> None:
        self.exchanges: list[str] = []
        self.queues: list[str] = []

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def run(self, url: str) -> None:
        if not (self.exchanges or self.queues):
            return
        with connect(url) as connection:
            for name in self.queues:
                channel = connection.channel()
                try:
                    channel.queue_delete(name)
                except pika.exceptions.ChannelClosedByBroker:
                    pass  # exclusive queue of a connection that is already gone
            channel = connection.channel()
            for name in self.exchanges:
                channel.exchange_delete(name)


def channel_error(channel: Any, action: Callable[[], Any]) -> pika.exceptions.ChannelClosedByBroker:
    """The channel error ``action`` provokes (a round trip makes sure asynchronous methods got theirs)."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        action()
        channel.basic_qos(prefetch_count=0)
    return info.value


def drain(channel: Any, queue: str) -> list[bytes]:
    """Every message in ``queue`` now, through basic.get with autoack."""
    out = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def exists(url: str, queue: str) -> bool:
    with connect(url) as connection:
        try:
            connection.channel().queue_declare(queue, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return False
