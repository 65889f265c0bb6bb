"""Markers for interop tests of behaviour amqpbroker does not have yet."""

from __future__ import annotations

import os

import pytest


def pending_on_amqpbroker(issue: str, feature: str) -> pytest.MarkDecorator:
    """Mark a test of behaviour amqpbroker does not have yet (it still runs against RabbitMQ).

    Strict: once the feature lands the test passes, the xfail turns into a failure, and the
    marker must go.
    """
    return pytest.mark.xfail(not os.environ.get("AMQP_URL"), strict=True,
                             reason=f"{feature}: comes with issue {issue}")
