"""Fixtures shared by the tests that run the broker as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker_process import BrokerProcess


@pytest.fixture
def broker(tmp_path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(str(tmp_path / "data"))
    process.start()
    try:
        yield process
    finally:
        process.stop()
