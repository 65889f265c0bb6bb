"""Helpers the interop tests share: pika connections with short timeouts, name cleanup, draining,
the management API."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

__all__ = ["Cleanup", "Management", "channel_error", "connect", "drain", "exists", "params"]


class Management:
    """The management API of the broker under test (``http://user:pass@host:port``), JSON bodies."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.base = f"http://{parsed.hostname}:{parsed.port}"
        self.auth = "Basic " + base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The status and the decoded JSON answer (an error's text as it came)."""
        request = urllib.request.Request(self.base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        request.add_header("Authorization", self.auth)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                data = response.read()
                return response.status, json.loads(data) if data else None
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def call(self, method: str, path: str, body: Any = None) -> int:
        return self.request(method, path, body)[0]


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
