"""Fixtures shared by the tests that run the broker as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.broker_process import BrokerProcess


@pytest.fixture
def start_broker(tmp_path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start brokers (``BrokerProcess`` options as keywords), each with its own data dir; all are
    stopped after the test."""
    started: list[BrokerProcess] = []

    def start(**options) -> BrokerProcess:
        process = BrokerProcess(str(tmp_path / f"data-{len(started)}"), **options)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def broker(start_broker) -> BrokerProcess:
    return start_broker()
