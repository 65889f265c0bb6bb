"""Interop tests run against any broker: ``AMQP_URL`` when set, else an amqpbroker we start."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

import pytest

from interop.support import Cleanup, connect


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("AMQP_URL")
    if url:
        return url
    return request.getfixturevalue("amqp_broker")


@pytest.fixture(scope="session")
def management_url(request: pytest.FixtureRequest) -> str:
    """The management API of the broker under test (``http://user:pass@host:port``):
    ``MANAGEMENT_URL`` when set; with ``AMQP_URL``, the AMQP port + 10000 (5682 -> 15682, as
    RabbitMQ's defaults); else the one of the amqpbroker we start."""
    url = os.environ.get("MANAGEMENT_URL")
    if url:
        return url.rstrip("/")
    amqp = os.environ.get("AMQP_URL")
    if amqp:
        parsed = urlsplit(amqp)
        return f"http://{parsed.username or 'guest'}:{parsed.password or 'guest'}@{parsed.hostname}:{(parsed.port or 5672) + 10000}"
    base = request.getfixturevalue("amqp_broker_with_management")[1]
    return base.replace("http://", "http://guest:guest@")


@pytest.fixture
def unique() -> str:
    """A name prefix no other test uses, so suites can share one broker."""
    return f"t-{uuid.uuid4().hex[:12]}"



@pytest.fixture
def cleanup(amqp_url: str):
    """Register queue and exchange names; they are deleted after the test."""
    registry = Cleanup()
    yield registry
    registry.run(amqp_url)


@pytest.fixture
def conn(amqp_url: str):
    connection = connect(amqp_url)
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture
def ch(conn):
    return conn.channel()
