"""Interop tests run against any broker: ``AMQP_URL`` when set, else an amqpbroker we start."""

from __future__ import annotations

import os
import uuid

import pytest

from interop.support import Cleanup, connect


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("AMQP_URL")
    if url:
        return url
    return request.getfixturevalue("amqp_broker")


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
