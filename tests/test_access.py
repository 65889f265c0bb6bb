"""Permissions checked where RabbitMQ checks them, on the sans-IO core (no sockets)."""

from __future__ import annotations

import pytest
from pamqp import commands, header as pamqp_header

from amqpbroker.broker.access import Access, Permission, TopicPermission, check_regex
from amqpbroker.broker.broker import Broker
from amqpbroker.errors import AMQPError
from tests.helpers import FakeClient


def _client(permission: Permission | None = None, topics: dict[str, TopicPermission] | None = None,
            vhost: str = "/") -> FakeClient:
    """A broker where guest set up the queues and exchanges, and a connection of user 'app'."""
    broker = Broker()
    if vhost not in broker.vhosts:
        broker.add_vhost(vhost)
        broker.users.permissions[("guest", vhost)] = Permission()
    admin = FakeClient(broker, vhost=vhost)
    admin.open_channel()
    for name in ("work", "other", "logs-q"):
        admin.declare_queue(name)
    admin.send(commands.Exchange.Declare(exchange="events", exchange_type="topic"))
    admin.send(commands.Exchange.Declare(exchange="plain", exchange_type="direct"))
    admin.expect(commands.Exchange.DeclareOk, commands.Exchange.DeclareOk)
    broker.users.add("app", "secret", vhosts=())
    if permission is not None:
        broker.users.permissions[("app", vhost)] = permission
    if topics:
        broker.users.topic_permissions[("app", vhost)] = topics
    client = FakeClient(broker, user="app", password="secret", vhost=vhost)
    client.open_channel()
    return client


def _refused(client: FakeClient, method, text: str) -> None:
    client.send(method)
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_code == 403, close
    assert close.reply_text == f"ACCESS_REFUSED - {text}", close.reply_text


def _allowed(client: FakeClient, method, reply: type) -> None:
    client.send(method)
    client.expect(reply)


def test_a_user_without_a_permission_in_a_vhost_cannot_open_it() -> None:
    broker = Broker()
    broker.users.add("app", "secret", vhosts=())
    client = FakeClient(broker, handshake=False)
    client.feed(pamqp_header.ProtocolHeader().marshal())
    client.send(client.start_ok("app", "secret"), 0)
    client.send(commands.Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=0), 0)
    client.received()
    client.send(commands.Connection.Open(virtual_host="/"), 0)
    (close,) = client.expect(commands.Connection.Close)
    assert close.reply_code == 530
    assert close.reply_text == "NOT_ALLOWED - access to vhost '/' refused for user 'app'"


def test_configure_governs_declare_and_delete() -> None:
    client = _client(Permission(configure="^mine", write=".*", read=".*"))
    _allowed(client, commands.Queue.Declare(queue="mine.q"), commands.Queue.DeclareOk)
    _refused(client, commands.Queue.Declare(queue="yours"),
             "access to queue 'yours' in vhost '/' refused for user 'app'")
    client.open_channel(2)
    client.send(commands.Queue.Delete(queue="work"), 2)
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_code == 403
    client.open_channel(3)
    client.send(commands.Exchange.Declare(exchange="theirs", exchange_type="fanout"), 3)
    assert client.expect(commands.Channel.Close)[0].reply_code == 403


def test_a_server_named_queue_is_checked_under_its_generated_name() -> None:
    client = _client(Permission(configure="^amq\\.gen-", write="", read=""))
    client.send(commands.Queue.Declare(queue="", exclusive=True))
    (ok,) = client.expect(commands.Queue.DeclareOk)
    assert ok.queue.startswith("amq.gen-")
    other = _client(Permission(configure="^x$", write="", read=""))
    other.send(commands.Queue.Declare(queue="", exclusive=True))
    (close,) = other.expect(commands.Channel.Close)
    assert close.reply_code == 403 and "queue 'amq.gen-" in close.reply_text


def test_a_passive_declare_needs_any_one_permission() -> None:
    """RabbitMQ 4.2.7/4.3.1: configure, write or read on the resource will do; none refuses."""
    read_only = _client(Permission(configure="", write="", read="^work$"))
    _allowed(read_only, commands.Queue.Declare(queue="work", passive=True), commands.Queue.DeclareOk)
    _refused(read_only, commands.Queue.Declare(queue="other", passive=True),
             "access to queue 'other' in vhost '/' refused for user 'app'")
    write_only = _client(Permission(configure="", write="^events$", read=""))
    _allowed(write_only, commands.Exchange.Declare(exchange="events", passive=True), commands.Exchange.DeclareOk)


def test_write_governs_publish_and_the_default_exchange_is_amq_default() -> None:
    client = _client(Permission(configure="", write="^plain$", read=".*"))
    client.publish(1, "plain", "k", b"ok")
    client.expect()
    client.publish(1, "", "work", b"no")
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_code == 403
    assert close.reply_text == "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'app'"
    assert client.broker.vhosts["/"].queues["work"].message_count == 0


def test_publish_is_refused_before_the_exchange_is_looked_up() -> None:
    """RabbitMQ checks write first: a user without it learns nothing about which exchanges exist."""
    client = _client(Permission(configure="", write="", read=""))
    client.publish(1, "no-such-exchange", "k", b"x")
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_code == 403


def test_read_governs_consume_get_and_purge() -> None:
    client = _client(Permission(configure="", write="", read="^work$"))
    _allowed(client, commands.Basic.Get(queue="work"), commands.Basic.GetEmpty)
    _refused(client, commands.Basic.Consume(queue="other"),
             "access to queue 'other' in vhost '/' refused for user 'app'")
    client.open_channel(2)
    client.send(commands.Basic.Get(queue="other"), 2)
    assert client.expect(commands.Channel.Close)[0].reply_code == 403
    client.open_channel(3)
    client.send(commands.Queue.Purge(queue="other"), 3)
    assert client.expect(commands.Channel.Close)[0].reply_code == 403


def test_a_binding_needs_write_on_the_destination_and_read_on_the_source() -> None:
    client = _client(Permission(configure="", write="^work$", read="^plain$"))
    _allowed(client, commands.Queue.Bind(queue="work", exchange="plain", routing_key="k"), commands.Queue.BindOk)
    _refused(client, commands.Queue.Bind(queue="other", exchange="plain", routing_key="k"),
             "access to queue 'other' in vhost '/' refused for user 'app'")
    client.open_channel(2)
    client.send(commands.Queue.Bind(queue="work", exchange="events", routing_key="k"), 2)
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_text.endswith("access to exchange 'events' in vhost '/' refused for user 'app'")


def test_topic_permissions_govern_routing_keys_on_topic_exchanges() -> None:
    topics = {"events": TopicPermission("events", write="^{username}\\.", read="^logs\\.")}
    client = _client(Permission(), topics)
    client.publish(1, "events", "app.created", b"ok")
    client.expect()
    _allowed(client, commands.Queue.Bind(queue="logs-q", exchange="events", routing_key="logs.#"),
             commands.Queue.BindOk)
    client.publish(1, "events", "other.created", b"no")
    (close,) = client.expect(commands.Channel.Close)
    assert close.reply_text == ("ACCESS_REFUSED - access to topic 'other.created' in exchange 'events' "
                                "in vhost '/' refused for user 'app'")
    client.open_channel(2)
    client.send(commands.Queue.Bind(queue="logs-q", exchange="events", routing_key="audit.#"), 2)
    assert client.expect(commands.Channel.Close)[0].reply_code == 403
    # a direct exchange and a topic exchange without a topic permission are not concerned
    client.open_channel(3)
    client.publish(3, "plain", "anything", b"ok")
    client.publish(3, "amq.topic", "anything", b"ok")
    client.expect()


def test_an_empty_permission_matches_nothing_and_regexes_are_unanchored() -> None:
    access = Access("u", "/", Permission(configure="", write="ork", read="^work$"))
    with pytest.raises(AMQPError):
        access.check("configure", "queue", "work")
    access.check("write", "queue", "network")  # found anywhere in the name, as re:run
    with pytest.raises(AMQPError):
        access.check("read", "queue", "network")


def test_a_changed_permission_applies_to_the_next_check() -> None:
    access = Access("u", "/", Permission())
    access.check_publish("x")
    assert "x" in access.writable
    access.permission = Permission(write="")
    access.forget()
    with pytest.raises(AMQPError):
        access.check_publish("x")


def test_invalid_regexes_are_reported() -> None:
    assert check_regex("^ok$") is None
    assert "invalid regular expression" in check_regex("(")


def test_a_damaged_access_record_is_skipped_and_named_and_the_rest_restored(tmp_path, caplog) -> None:
    import json

    from amqpbroker.broker.recovery import restore
    from amqpbroker.store.rocks import RocksStore

    store = RocksStore(str(tmp_path / "db"))
    store.write([("meta", "v", "/", b'{"name": "/"}'),
                 ("meta", "u", "ok", json.dumps({"name": "ok", "password_hash": "", "tags": []}).encode()),
                 ("meta", "p", "/\0ok", b'{"user": "ok"}'),  # fields missing
                 ("meta", "y", "/\0bad", b'{"vhost": "/", "name": "bad", "pattern": "(", "definition": {}}'),
                 ("meta", "u", "garbled", b"not json")])
    broker = Broker()
    try:
        restore(broker, store)
    finally:
        store.close()
    assert set(broker.users.users) == {"ok"}
    assert broker.users.permissions == {} and broker.vhosts["/"].policies == {}
    assert "skipped an unusable access record (p)" in caplog.text
    assert "skipped an unusable access record (y)" in caplog.text
