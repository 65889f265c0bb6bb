"""Logins (sans-IO): an unknown user costs the same work as a wrong password, and what a client
sent as a user name reaches the log quoted and bounded."""

from __future__ import annotations

import logging

import pytest
from pamqp import commands, header as pamqp_header

from amqpbroker.broker import auth
from amqpbroker.broker.auth import UserDatabase
from amqpbroker.broker.broker import Broker
from amqpbroker.protocol.connection import AuthenticationFailed
from tests.helpers import FakeClient


def test_an_unknown_user_costs_the_same_hash_as_a_wrong_password(monkeypatch) -> None:
    users = UserDatabase()
    users.add("known", "right")
    hashed: list[bytes] = []
    real = auth.password_matches
    monkeypatch.setattr(auth, "password_matches", lambda stored, password: hashed.append(stored) or real(stored, password))
    for name in ("known", "unknown"):
        with pytest.raises(AuthenticationFailed) as refused:
            users.check(name, "wrong", from_loopback=True)
        assert "invalid credentials" in str(refused.value)  # the same refusal either way
    assert len(hashed) == 2 and len(hashed[0]) == len(hashed[1]) == 36  # one salted SHA-256 each


def test_a_forged_user_name_is_logged_escaped_and_bounded(caplog) -> None:
    client = FakeClient(Broker(), handshake=False)
    forged = "nobody'\n2026-12-02 INFO amqpbroker connection opened: user 'admin'" + "x" * 500
    caplog.set_level(logging.WARNING)
    client.feed(pamqp_header.ProtocolHeader().marshal())
    client.expect(commands.Connection.Start)
    client.send(client.start_ok(forged, "pw"), 0)
    [line] = [record.getMessage() for record in caplog.records if "login refused" in record.getMessage()]
    assert "\n" not in line and "\\n" in line
    assert len(line) < 200 and line.endswith("...")
