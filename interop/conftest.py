"""Interop tests run against any broker: ``AMQP_URL`` when set, else an amqpbroker we start."""

from __future__ import annotations

import os
import uuid

import pytest


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

