"""Users, vhosts and permissions, set through the management API and enforced over AMQP, against
any broker (the reference RabbitMQ too: ``AMQP_URL=... pytest interop/test_permissions.py``).

Each test makes its own user (and vhost where it needs one) and deletes them afterwards."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pika
import pika.exceptions
import pytest

from interop.support import Management, params


Admin = Management


@pytest.fixture
def admin(management_url: str) -> Admin:
    return Admin(management_url)


@pytest.fixture
def tenant(admin: Admin, unique: str) -> Iterator[dict[str, str]]:
    """A user (and a vhost named after it) that the test may set permissions for; both deleted."""
    names = {"user": f"{unique}-user", "password": "s3cret", "vhost": f"{unique}-vhost"}
    assert admin.call("PUT", f"/api/users/{names['user']}", {"password": names["password"], "tags": ""}) in (201, 204)
    yield names
    admin.call("DELETE", f"/api/users/{names['user']}")
    admin.call("DELETE", f"/api/vhosts/{quote(names['vhost'], safe='')}")


def _permit(admin: Admin, tenant: dict[str, str], vhost: str = "/", *, configure: str = "", write: str = "",
            read: str = "") -> None:
    path = f"/api/permissions/{quote(vhost, safe='')}/{tenant['user']}"
    assert admin.call("PUT", path, {"configure": configure, "write": write, "read": read}) in (201, 204)


def _connect(amqp_url: str, tenant: dict[str, str], vhost: str = "/") -> pika.BlockingConnection:
    parameters = params(amqp_url)
    parameters.credentials = pika.PlainCredentials(tenant["user"], tenant["password"])
    parameters.virtual_host = vhost
    return pika.BlockingConnection(parameters)


def _refused(action) -> pika.exceptions.ChannelClosedByBroker:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        action()
    assert info.value.reply_code == 403, info.value
    return info.value


def test_without_write_a_publish_closes_the_channel_with_403(amqp_url, admin, tenant, cleanup, unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    with pika.BlockingConnection(params(amqp_url)) as setup:
        setup.channel().queue_declare(queue)
    _permit(admin, tenant, configure=".*", read=".*")
    with _connect(amqp_url, tenant) as connection:
        channel = connection.channel()
        channel.basic_publish("", queue, b"refused")
        error = _refused(lambda: channel.queue_declare(queue, passive=True))
        assert "access to exchange 'amq.default' in vhost '/' refused for user" in error.reply_text
    with pika.BlockingConnection(params(amqp_url)) as check:
        assert check.channel().queue_declare(queue, passive=True).method.message_count == 0


def test_without_read_consume_and_get_are_refused(amqp_url, admin, tenant, cleanup, unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    with pika.BlockingConnection(params(amqp_url)) as setup:
        setup.channel().queue_declare(queue)
    _permit(admin, tenant, configure=".*", write=".*")
    with _connect(amqp_url, tenant) as connection:
        error = _refused(lambda: connection.channel().basic_get(queue))
        assert f"access to queue '{queue}' in vhost '/' refused for user '{tenant['user']}'" in error.reply_text
        channel = connection.channel()
        _refused(lambda: channel.basic_consume(queue, lambda *args: None))


def test_without_configure_declare_and_delete_are_refused(amqp_url, admin, tenant, cleanup, unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    with pika.BlockingConnection(params(amqp_url)) as setup:
        setup.channel().queue_declare(queue)
    _permit(admin, tenant, configure=f"^{unique}-mine", write=".*", read=".*")
    with _connect(amqp_url, tenant) as connection:
        channel = connection.channel()
        cleanup.queue(f"{unique}-mine")
        channel.queue_declare(f"{unique}-mine")
        _refused(lambda: channel.queue_declare(f"{unique}-other"))
        _refused(lambda: connection.channel().queue_delete(queue))
        _refused(lambda: connection.channel().exchange_declare(f"{unique}-x", "fanout"))
        # a passive declare with read permission only (RabbitMQ 3.x checks none, 4.3 any one)
        connection.channel().queue_declare(queue, passive=True)


def test_bindings_need_write_on_the_queue_and_read_on_the_exchange(amqp_url, admin, tenant, cleanup,
                                                                     unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    exchange = cleanup.exchange(f"{unique}-x")
    with pika.BlockingConnection(params(amqp_url)) as setup:
        channel = setup.channel()
        channel.queue_declare(queue)
        channel.exchange_declare(exchange, "direct")
    _permit(admin, tenant, write=f"^{unique}-q$", read="^$")
    with _connect(amqp_url, tenant) as connection:
        error = _refused(lambda: connection.channel().queue_bind(queue, exchange, "k"))
        assert f"access to exchange '{exchange}' in vhost '/' refused" in error.reply_text
    _permit(admin, tenant, write="^$", read=".*")
    with _connect(amqp_url, tenant) as connection:
        error = _refused(lambda: connection.channel().queue_bind(queue, exchange, "k"))
        assert f"access to queue '{queue}' in vhost '/' refused" in error.reply_text
    _permit(admin, tenant, write=f"^{unique}-q$", read=".*")
    with _connect(amqp_url, tenant) as connection:
        connection.channel().queue_bind(queue, exchange, "k")


def test_topic_permissions_refuse_a_routing_key(amqp_url, admin, tenant, cleanup, unique) -> None:
    exchange = cleanup.exchange(f"{unique}-topic")
    with pika.BlockingConnection(params(amqp_url)) as setup:
        setup.channel().exchange_declare(exchange, "topic")
    _permit(admin, tenant, configure=".*", write=".*", read=".*")
    path = f"/api/topic-permissions/%2F/{tenant['user']}"
    assert admin.call("PUT", path, {"exchange": exchange, "write": "^allowed\\.", "read": ".*"}) in (201, 204)
    with _connect(amqp_url, tenant) as connection:
        channel = connection.channel()
        channel.basic_publish(exchange, "allowed.key", b"ok")
        channel.queue_declare("", exclusive=True)  # a round trip: no close came for the publish
        channel.basic_publish(exchange, "other.key", b"no")
        error = _refused(lambda: channel.queue_declare("", exclusive=True))
        assert f"access to topic 'other.key' in exchange '{exchange}' in vhost '/' refused" in error.reply_text


def test_vhosts_isolate_and_need_a_permission(amqp_url, admin, tenant, unique) -> None:
    vhost = tenant["vhost"]
    assert admin.call("PUT", f"/api/vhosts/{quote(vhost, safe='')}", {}) in (201, 204)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="530"):
        _connect(amqp_url, tenant, vhost)
    _permit(admin, tenant, vhost, configure=".*", write=".*", read=".*")
    _permit(admin, tenant, "/", configure=".*", write=".*", read=".*")
    name = f"{unique}-same-name"
    with _connect(amqp_url, tenant, vhost) as inside, _connect(amqp_url, tenant, "/") as outside:
        inside_channel, outside_channel = inside.channel(), outside.channel()
        inside_channel.queue_declare(name)
        outside_channel.queue_declare(name)
        inside_channel.basic_publish("", name, b"inside")
        inside_channel.queue_declare(name, passive=True)
        assert outside_channel.queue_declare(name, passive=True).method.message_count == 0
        assert inside_channel.queue_declare(name, passive=True).method.message_count == 1
        outside_channel.queue_delete(name)


def test_deleting_a_vhost_closes_its_connections_with_320(amqp_url, admin, tenant) -> None:
    vhost = tenant["vhost"]
    assert admin.call("PUT", f"/api/vhosts/{quote(vhost, safe='')}", {}) in (201, 204)
    _permit(admin, tenant, vhost, configure=".*", write=".*", read=".*")
    connection = _connect(amqp_url, tenant, vhost)
    connection.channel().queue_declare("doomed", durable=True)
    assert admin.call("DELETE", f"/api/vhosts/{quote(vhost, safe='')}") == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(20):
            connection.process_data_events(time_limit=0.5)
    assert closed.value.reply_code == 320


def test_a_user_without_any_permission_cannot_open_the_vhost(amqp_url, tenant) -> None:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="530"):
        _connect(amqp_url, tenant, "/")


def _limit(admin: Admin, path: str, value: int) -> None:
    assert admin.call("PUT", path, {"value": value}) in (201, 204)


def test_vhost_limits_refuse_connections_and_queues(amqp_url, admin, tenant) -> None:
    vhost = tenant["vhost"]
    assert admin.call("PUT", f"/api/vhosts/{quote(vhost, safe='')}", {}) in (201, 204)
    _permit(admin, tenant, vhost, configure=".*", write=".*", read=".*")
    _limit(admin, f"/api/vhost-limits/{quote(vhost, safe='')}/max-connections", 1)
    _limit(admin, f"/api/vhost-limits/{quote(vhost, safe='')}/max-queues", 1)
    with _connect(amqp_url, tenant, vhost) as connection:
        with pytest.raises((pika.exceptions.ProbableAccessDeniedError,
                            pika.exceptions.ConnectionClosedByBroker)) as refused:
            _connect(amqp_url, tenant, vhost)
        assert "530" in str(refused.value) and "connection limit (1) is reached" in str(refused.value)
        channel = connection.channel()
        channel.queue_declare("first")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as full:
            channel.queue_declare("second")
        assert full.value.reply_code == 406
        assert f"cannot declare queue 'second': queue limit in vhost '{vhost}' (1) is reached" in full.value.reply_text
    assert admin.call("DELETE", f"/api/vhost-limits/{quote(vhost, safe='')}/max-connections") == 204
    with _connect(amqp_url, tenant, vhost), _connect(amqp_url, tenant, vhost):
        pass


def test_user_limits_refuse_connections_and_channels(amqp_url, admin, tenant) -> None:
    _permit(admin, tenant, configure=".*", write=".*", read=".*")
    _limit(admin, f"/api/user-limits/{tenant['user']}/max-connections", 1)
    _limit(admin, f"/api/user-limits/{tenant['user']}/max-channels", 2)
    with _connect(amqp_url, tenant) as connection:
        with pytest.raises((pika.exceptions.ProbableAccessDeniedError,
                            pika.exceptions.ConnectionClosedByBroker)) as refused:
            _connect(amqp_url, tenant)
        assert "530" in str(refused.value)
        connection.channel()
        connection.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.channel()
        assert closed.value.reply_code == 530
        assert "maximum allowed user limit of (2)" in closed.value.reply_text


def test_a_management_user_sees_its_vhosts_and_changes_what_its_permissions_allow(management_url, admin, tenant,
                                                                                unique) -> None:
    """Over the HTTP API, as over AMQP: RabbitMQ checks the API user's permissions, and a user
    tagged management sees only the vhosts it has a permission on."""
    assert admin.call("PUT", f"/api/users/{tenant['user']}", {"password": tenant["password"],
                                                              "tags": "management"}) == 204
    _permit(admin, tenant, configure=f"^{unique}-mine", write=".*", read=".*")
    hidden = tenant["vhost"]
    assert admin.call("PUT", f"/api/vhosts/{quote(hidden, safe='')}", {}) in (201, 204)
    assert admin.call("PUT", f"/api/queues/{quote(hidden, safe='')}/{unique}-hq", {}) in (201, 204)
    parsed = urlsplit(management_url)
    own = Admin(f"http://{tenant['user']}:{tenant['password']}@{parsed.hostname}:{parsed.port}")
    try:
        assert own.call("PUT", f"/api/queues/%2F/{unique}-other", {}) == 401
        assert own.call("PUT", f"/api/queues/%2F/{unique}-mine", {}) in (201, 204)
        assert own.call("GET", f"/api/queues/{quote(hidden, safe='')}/{unique}-hq") == 401
        request = urllib.request.Request(own.base + "/api/vhosts")
        request.add_header("Authorization", own.auth)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert [vhost["name"] for vhost in json.loads(response.read())] == ["/"]
        assert own.call("DELETE", f"/api/queues/%2F/{unique}-mine") == 204
    finally:
        admin.call("DELETE", f"/api/queues/%2F/{unique}-mine")


def test_only_an_impersonator_publishes_with_another_user_id(amqp_url, admin, tenant, cleanup, unique) -> None:
    queue = cleanup.queue(f"{unique}-q")
    _permit(admin, tenant, configure=".*", write=".*", read=".*")
    forged = pika.BasicProperties(user_id="someone-else")
    with _connect(amqp_url, tenant) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        channel.basic_publish("", queue, b"forged", forged)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(queue, passive=True)
        assert refused.value.reply_code == 406 and "user_id property set to 'someone-else'" in refused.value.reply_text
    assert admin.call("PUT", f"/api/users/{tenant['user']}",
                      {"password": tenant["password"], "tags": "impersonator"}) == 204
    with _connect(amqp_url, tenant) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, b"on behalf", forged)
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"on behalf" and properties.user_id == "someone-else"
