"""Policies and operator policies through the management API, against any broker (the reference
RabbitMQ too): applied to existing and new queues at once, with RabbitMQ's precedence."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pika
import pytest

from interop.support import params
from interop.test_permissions import Admin


@pytest.fixture
def admin(management_url: str) -> Admin:
    return Admin(management_url)


@pytest.fixture
def policies(admin: Admin) -> Iterator[list[tuple[str, str]]]:
    """Policies a test set, cleared after it: (kind, name) with kind "policies" or "operator-policies"."""
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in made:
        admin.call("DELETE", f"/api/{kind}/%2F/{name}")


def _set(admin: Admin, made, kind: str, name: str, pattern: str, definition: dict, priority: int = 0,
         apply_to: str = "queues") -> None:
    made.append((kind, name))
    status = admin.call("PUT", f"/api/{kind}/%2F/{name}", {"pattern": pattern, "definition": definition,
                                                           "priority": priority, "apply-to": apply_to})
    assert status in (201, 204), status


def _queue(admin: Admin, name: str) -> dict:
    request = urllib.request.Request(admin.base + f"/api/queues/%2F/{name}")
    request.add_header("Authorization", admin.auth)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _count(channel, name: str) -> int:
    return channel.queue_declare(name, passive=True).method.message_count


def _eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not applied in time"
        time.sleep(0.05)


def test_a_policy_applies_to_an_existing_queue_at_once(amqp_url, admin, policies, cleanup, unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    with pika.BlockingConnection(params(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        for index in range(5):
            channel.basic_publish("", queue, f"m{index}".encode())
        _eventually(lambda: _count(channel, queue) == 5)
        _set(admin, policies, "policies", f"{unique}-cap", f"^{unique}-q$", {"max-length": 2})
        _eventually(lambda: _count(channel, queue) == 2)
        assert channel.basic_get(queue, auto_ack=True)[2] == b"m3"  # drop-head: the oldest went
        # (RabbitMQ shows a queue's policy once its statistics are next emitted: seconds)
        _eventually(lambda: _queue(admin, queue).get("policy") == f"{unique}-cap", 15)
        assert _queue(admin, queue)["effective_policy_definition"] == {"max-length": 2}


def test_the_lower_limit_wins_and_an_operator_policy_caps(amqp_url, admin, policies, cleanup, unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    with pika.BlockingConnection(params(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, arguments={"x-max-length": 10})
        _set(admin, policies, "policies", f"{unique}-p", f"^{unique}-", {"max-length": 4})
        for index in range(8):
            channel.basic_publish("", queue, b"x")
        _eventually(lambda: _count(channel, queue) == 4)  # min(argument 10, policy 4)
        _set(admin, policies, "operator-policies", f"{unique}-op", f"^{unique}-", {"max-length": 3})
        _eventually(lambda: _count(channel, queue) == 3)  # the operator policy caps it
        _eventually(lambda: _queue(admin, queue).get("operator_policy") == f"{unique}-op", 15)
        _eventually(lambda: _queue(admin, queue).get("effective_policy_definition") == {"max-length": 3}, 15)


def test_the_highest_priority_policy_applies_and_dead_letters(amqp_url, admin, policies, cleanup, unique) -> None:
    queue, dead = cleanup.queue(f"{unique}-q"), cleanup.queue(f"{unique}-dead")
    with pika.BlockingConnection(params(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_declare(dead)
        channel.queue_declare(queue)
        _set(admin, policies, "policies", f"{unique}-low", f"^{unique}-q", {"max-length": 1}, priority=1)
        _set(admin, policies, "policies", f"{unique}-high", f"^{unique}-q",
             {"dead-letter-exchange": "", "dead-letter-routing-key": dead}, priority=5)
        _eventually(lambda: _queue(admin, queue).get("policy") == f"{unique}-high", 15)
        channel.basic_publish("", queue, b"rejected")
        method, _, body = channel.basic_get(queue)
        channel.basic_reject(method.delivery_tag, requeue=False)
        _eventually(lambda: _count(channel, dead) == 1)
        assert channel.basic_get(dead, auto_ack=True)[2] == b"rejected"


def test_a_bad_policy_is_a_400(admin, policies, unique) -> None:
    policies.append(("policies", f"{unique}-bad"))
    assert admin.call("PUT", f"/api/policies/%2F/{unique}-bad",
                      {"pattern": ".*", "definition": {"max-length": "ten"}}) == 400
    assert admin.call("PUT", f"/api/policies/%2F/{unique}-bad",
                      {"pattern": ".*", "definition": {"no-such-key": 1}}) == 400
