"""Definitions move both ways between the broker under test (``AMQP_URL``'s: the reference
RabbitMQ too) and a fresh amqpbroker: what one exports (``GET /api/definitions``), the other loads
(``POST /api/definitions``), and the moved user logs in with its password and permissions.

Only this test's own entries are moved (unique names), and they are deleted from both afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest

from amqpbroker.testing import free_port, _wait_for_listener, run_broker
from interop.support import Management, params


@pytest.fixture
def fresh() -> Iterator[tuple[str, Management]]:
    """A new amqpbroker with its management API: the other end of each move."""
    port = free_port()
    with run_broker("--management-port", str(port)) as url:
        _wait_for_listener(port, "management API")
        yield url, Management(f"http://guest:guest@127.0.0.1:{port}")


def _create(api: Management, prefix: str) -> None:
    vhost = quote(f"{prefix}-v", safe="")
    assert api.call("PUT", f"/api/vhosts/{vhost}", {"description": "moved"}) in (201, 204)
    assert api.call("PUT", f"/api/users/{prefix}-u", {"password": "m0ved", "tags": "monitoring"}) in (201, 204)
    assert api.call("PUT", f"/api/permissions/{vhost}/{prefix}-u",
                    {"configure": "^app\\.", "write": "^app\\.", "read": "^app\\."}) in (201, 204)
    assert api.call("PUT", f"/api/topic-permissions/{vhost}/{prefix}-u",
                    {"exchange": "amq.topic", "write": "^app\\.", "read": ".*"}) in (201, 204)
    assert api.call("PUT", f"/api/policies/{vhost}/cap", {"pattern": "^app\\.", "definition": {"max-length": 5},
                                                         "apply-to": "queues"}) in (201, 204)
    assert api.call("PUT", f"/api/queues/{vhost}/app.q", {"durable": True}) in (201, 204)
    assert api.call("PUT", f"/api/exchanges/{vhost}/app.x", {"type": "topic", "durable": True}) in (201, 204)
    assert api.call("POST", f"/api/bindings/{vhost}/e/app.x/q/app.q", {"routing_key": "app.#"}) == 201


def _ours(definitions: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The export's entries that belong to this test (its vhost and user)."""
    vhost, user = f"{prefix}-v", f"{prefix}-u"
    mine = lambda key, test: [item for item in definitions.get(key, []) if test(item)]  # noqa: E731
    return {"users": mine("users", lambda item: item["name"] == user),
            "vhosts": mine("vhosts", lambda item: item["name"] == vhost),
            **{key: mine(key, lambda item: item.get("vhost") == vhost)
               for key in ("permissions", "topic_permissions", "policies", "queues", "exchanges", "bindings")}}


def _check_moved(amqp_url: str, api: Management, prefix: str) -> None:
    vhost = f"{prefix}-v"
    status, queue = api.request("GET", f"/api/queues/{quote(vhost, safe='')}/app.q")
    assert status == 200 and queue["durable"]
    status, bindings = api.request("GET", f"/api/bindings/{quote(vhost, safe='')}/e/app.x/q/app.q")
    assert [binding["routing_key"] for binding in bindings] == ["app.#"]
    assert api.request("GET", f"/api/policies/{quote(vhost, safe='')}/cap")[1]["definition"] == {"max-length": 5}
    parameters = params(amqp_url)
    parameters.credentials = pika.PlainCredentials(f"{prefix}-u", "m0ved")
    parameters.virtual_host = vhost
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        channel.queue_declare("app.q", durable=True, passive=True)  # the moved password and permission
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare("other.q")
        assert refused.value.reply_code == 403
    with pika.BlockingConnection(parameters) as connection:  # the moved topic permission
        channel = connection.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish("amq.topic", "other.key", b"x")
        assert refused.value.reply_code == 403


def _delete(api: Management, prefix: str) -> None:
    api.request("DELETE", f"/api/vhosts/{quote(prefix + '-v', safe='')}")
    api.request("DELETE", f"/api/users/{prefix}-u")


def test_definitions_move_both_ways_with_a_fresh_amqpbroker(amqp_url, management_url, fresh, unique) -> None:
    under_test = Management(management_url)
    fresh_url, fresh_api = fresh
    try:
        _create(under_test, f"{unique}-a")
        status, exported = under_test.request("GET", "/api/definitions")
        assert status == 200
        assert fresh_api.call("POST", "/api/definitions", _ours(exported, f"{unique}-a")) in (201, 204)
        _check_moved(fresh_url, fresh_api, f"{unique}-a")

        _create(fresh_api, f"{unique}-b")
        exported = fresh_api.request("GET", "/api/definitions")[1]
        status, body = under_test.request("POST", "/api/definitions", _ours(exported, f"{unique}-b"))
        assert status in (201, 204), body
        _check_moved(amqp_url, under_test, f"{unique}-b")
    finally:
        for prefix in (f"{unique}-a", f"{unique}-b"):
            _delete(under_test, prefix)
