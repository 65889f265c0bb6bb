"""Users, vhosts and permissions through the management API, enforced over AMQP (pika), and
kept across a kill -9: a broker subprocess with its management API."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pika
import pika.exceptions
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess
from tests.test_management import call

DATA = Path(__file__).parent / "data"


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port())


def _connect(broker: BrokerProcess, user: str, password: str, vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.port, vhost, pika.PlainCredentials(user, password)))


def _add_app_user(broker: BrokerProcess, vhost: str = "/", **permission: str) -> None:
    assert call(broker, "PUT", "/api/users/app", {"password": "s3cret", "tags": ""})[0] == 201
    path = f"/api/permissions/{vhost.replace('/', '%2F')}/app"
    assert call(broker, "PUT", path, {"configure": "", "write": "", "read": "", **permission})[0] == 201


def test_users_are_created_replaced_listed_and_deleted(managed) -> None:
    assert call(managed, "PUT", "/api/users/ops", {"password": "pw", "tags": "monitoring,management"})[0] == 201
    assert call(managed, "PUT", "/api/users/ops", {"password": "pw2", "tags": ["monitoring"]})[0] == 204
    status, user = call(managed, "GET", "/api/users/ops")
    assert status == 200 and user["tags"] == ["monitoring"]
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    salted = base64.b64decode(user["password_hash"])
    assert salted[4:] == hashlib.sha256(salted[:4] + b"pw2").digest()  # RabbitMQ's scheme
    assert call(managed, "GET", "/api/whoami", user="ops", password="pw2")[0] == 200
    assert call(managed, "GET", "/api/whoami", user="ops", password="pw")[0] == 401
    assert call(managed, "DELETE", "/api/users/ops")[0] == 204
    assert call(managed, "GET", "/api/users/ops")[0] == 404
    assert call(managed, "DELETE", "/api/users/ops")[0] == 404


def test_a_user_given_by_password_hash_logs_in_with_that_password(managed) -> None:
    salt = b"\x01\x02\x03\x04"
    password_hash = base64.b64encode(salt + hashlib.sha256(salt + b"imported").digest()).decode()
    assert call(managed, "PUT", "/api/users/moved", {"password_hash": password_hash, "tags": "administrator"})[0] == 201
    assert call(managed, "GET", "/api/whoami", user="moved", password="imported")[0] == 200
    status, body = call(managed, "PUT", "/api/users/bad", {"password_hash": "not base64!", "tags": ""})
    assert status == 400


def test_only_administrators_change_users(managed) -> None:
    call(managed, "PUT", "/api/users/watcher", {"password": "pw", "tags": "monitoring"})
    status, _ = call(managed, "PUT", "/api/users/x", {"password": "pw", "tags": ""}, user="watcher", password="pw")
    assert status == 401


def test_permissions_are_enforced_on_amqp_connections(managed) -> None:
    with managed.connect() as admin:
        admin.channel().queue_declare("owned")
    _add_app_user(managed, configure="^app\\.", write="^$", read="^owned$")
    with _connect(managed, "app", "s3cret") as connection:
        channel = connection.channel()
        channel.queue_declare("app.mine")
        channel.basic_get("owned")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish("", "owned", b"x")
            channel.queue_declare("after", passive=True)  # (the publish's close arrives by then)
        assert refused.value.reply_code == 403
        assert "access to exchange 'amq.default' in vhost '/' refused for user 'app'" in refused.value.reply_text
    status, permission = call(managed, "GET", "/api/permissions/%2F/app")
    assert status == 200 and permission["configure"] == "^app\\."


def test_a_permission_change_applies_to_open_connections(managed) -> None:
    _add_app_user(managed, configure=".*", write=".*", read=".*")
    with _connect(managed, "app", "s3cret") as connection:
        channel = connection.channel()
        channel.queue_declare("live")
        assert call(managed, "PUT", "/api/permissions/%2F/app", {"configure": "", "write": "", "read": ""})[0] == 204
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare("live2")
        assert refused.value.reply_code == 403


def test_a_vhost_isolates_its_queues_and_needs_a_permission(managed) -> None:
    assert call(managed, "PUT", "/api/vhosts/tenant-a", {"description": "team a"})[0] == 201
    assert call(managed, "PUT", "/api/vhosts/tenant-a", {"description": "team A"})[0] == 204
    status, vhost = call(managed, "GET", "/api/vhosts/tenant-a")
    assert status == 200 and vhost["description"] == "team A"
    with _connect(managed, "guest", "guest", "tenant-a") as connection:  # its creator may use it
        channel = connection.channel()
        channel.queue_declare("shared-name")
        channel.basic_publish("", "shared-name", b"in a")
        channel.exchange_declare("amq.topic", "topic", passive=True, durable=True)  # predeclared
    with managed.connect() as connection:
        assert connection.channel().queue_declare("shared-name").method.message_count == 0
    _add_app_user(managed, configure=".*", write=".*", read=".*")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="530.*access to vhost 'tenant-a' refused"):
        _connect(managed, "app", "s3cret", "tenant-a")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="530"):
        _connect(managed, "guest", "guest", "no-such-vhost")


def test_deleting_a_vhost_closes_its_connections_with_320_and_removes_everything(managed) -> None:
    call(managed, "PUT", "/api/vhosts/doomed", {})
    connection = _connect(managed, "guest", "guest", "doomed")
    channel = connection.channel()
    channel.queue_declare("durable-q", durable=True)
    channel.basic_publish("", "durable-q", b"x", pika.BasicProperties(delivery_mode=2))
    assert call(managed, "DELETE", "/api/vhosts/doomed")[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(time_limit=2)
        connection.process_data_events(time_limit=2)
    assert closed.value.reply_code == 320
    assert call(managed, "GET", "/api/vhosts/doomed")[0] == 404
    assert call(managed, "GET", "/api/queues/doomed")[0] == 404
    managed.restart(crash=True)
    assert call(managed, "GET", "/api/vhosts/doomed")[0] == 404
    call(managed, "PUT", "/api/vhosts/doomed", {})  # a new one of the same name starts empty
    assert call(managed, "GET", "/api/queues/doomed")[1] == []


def test_users_vhosts_and_permissions_survive_kill_9(managed) -> None:
    call(managed, "PUT", "/api/vhosts/kept", {"description": "survives"})
    _add_app_user(managed, "kept", configure="^c", write="^w", read="^r")
    call(managed, "PUT", "/api/topic-permissions/kept/app", {"exchange": "amq.topic", "write": "^a", "read": ".*"})
    with _connect(managed, "guest", "guest", "kept") as connection:
        connection.channel().queue_declare("kept-q", durable=True)
    assert call(managed, "PUT", "/api/users/root", {"password": "r00t", "tags": "administrator"})[0] == 201
    assert call(managed, "DELETE", "/api/users/guest", user="root", password="r00t")[0] == 204
    call(managed, "PUT", "/api/permissions/kept/root", {"configure": ".*", "write": ".*", "read": ".*"},
         user="root", password="r00t")
    managed.restart(crash=True)
    assert call(managed, "GET", "/api/whoami")[0] == 401  # guest stays deleted: defaults only on a first start
    status, vhost = call(managed, "GET", "/api/vhosts/kept", user="root", password="r00t")
    assert status == 200 and vhost["description"] == "survives"
    status, permission = call(managed, "GET", "/api/permissions/kept/app", user="root", password="r00t")
    assert (permission["configure"], permission["write"], permission["read"]) == ("^c", "^w", "^r")
    status, topics = call(managed, "GET", "/api/topic-permissions/kept/app", user="root", password="r00t")
    assert topics == [{"user": "app", "vhost": "kept", "exchange": "amq.topic", "write": "^a", "read": ".*"}]
    status, queues = call(managed, "GET", "/api/queues/kept", user="root", password="r00t")
    assert [queue["name"] for queue in queues] == ["kept-q"]  # entities of a vhost other than /
    with _connect(managed, "app", "s3cret", "kept") as connection:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            connection.channel().queue_declare("not-c")
        assert refused.value.reply_code == 403


def test_bad_permission_requests_are_400_or_404(managed) -> None:
    call(managed, "PUT", "/api/users/app", {"password": "pw", "tags": ""})
    assert call(managed, "PUT", "/api/permissions/%2F/app", {"configure": "(", "write": "", "read": ""})[0] == 400
    assert call(managed, "PUT", "/api/permissions/%2F/app", {"configure": ".*"})[0] == 400
    assert call(managed, "PUT", "/api/permissions/%2F/nobody", {"configure": "", "write": "", "read": ""})[0] == 404
    assert call(managed, "PUT", "/api/permissions/no-vhost/app", {"configure": "", "write": "", "read": ""})[0] == 404
    assert call(managed, "DELETE", "/api/permissions/%2F/app")[0] == 404


def test_a_definitions_file_exported_by_rabbitmq_loads_and_its_users_log_in(managed) -> None:
    """tests/data/rabbitmq-3.10.8-definitions.json is GET /api/definitions of the reference
    RabbitMQ 3.10.8 after creating user 'moved-user' (password 'moved-pw'), vhost 'exported',
    their permission, a topic permission and a durable queue."""
    with open(DATA / "rabbitmq-3.10.8-definitions.json") as file:
        definitions = json.load(file)
    assert call(managed, "POST", "/api/definitions", definitions)[0] == 204
    assert call(managed, "POST", "/api/definitions", definitions)[0] == 204  # idempotent
    assert call(managed, "GET", "/api/whoami", user="moved-user", password="moved-pw")[0] == 200
    status, permission = call(managed, "GET", "/api/permissions/exported/moved-user")
    assert permission["configure"] == "^mv\\."
    status, topics = call(managed, "GET", "/api/topic-permissions/exported/moved-user")
    assert topics[0]["exchange"] == "amq.topic" and topics[0]["write"] == "^mv\\."
    assert [queue["name"] for queue in call(managed, "GET", "/api/queues/exported")[1]] == ["mv.q"]
    with _connect(managed, "moved-user", "moved-pw", "exported") as connection:
        channel = connection.channel()
        channel.queue_declare("mv.mine")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("not-mine")


def test_our_definitions_load_into_a_fresh_broker(managed, start_broker) -> None:
    call(managed, "PUT", "/api/vhosts/team", {"description": "the team"})
    _add_app_user(managed, "team", configure="^t", write="^t", read="^t")
    status, exported = call(managed, "GET", "/api/definitions")
    fresh = start_broker(management_port=free_port())
    assert call(fresh, "POST", "/api/definitions", exported)[0] == 204
    assert call(fresh, "GET", "/api/vhosts/team")[1]["description"] == "the team"
    with _connect(fresh, "app", "s3cret", "team") as connection:
        connection.channel().queue_declare("t.q")


def test_a_bad_definitions_entry_is_a_400_naming_it(managed) -> None:
    status, body = call(managed, "POST", "/api/definitions",
                        {"users": [{"name": "x", "password_hash": "abc", "hashing_algorithm": "rabbit_password_hashing_md5"}]})
    assert status == 400 and "unsupported hashing_algorithm" in body["reason"] and "'x'" in body["reason"]
    status, body = call(managed, "POST", "/api/definitions", {"permissions": [{"user": "nobody", "vhost": "/",
                                                                               "configure": "", "write": "", "read": ""}]})
    assert status == 400 and "nobody" in body["reason"]


def test_limits_are_set_listed_kept_across_kill_9_and_exported(managed, start_broker) -> None:
    call(managed, "PUT", "/api/vhosts/limited", {})
    call(managed, "PUT", "/api/users/app", {"password": "pw", "tags": ""})
    assert call(managed, "PUT", "/api/vhost-limits/limited/max-queues", {"value": 3})[0] == 204
    assert call(managed, "PUT", "/api/user-limits/app/max-channels", {"value": 5})[0] == 204
    assert call(managed, "PUT", "/api/vhost-limits/limited/max-bananas", {"value": 1})[0] == 400
    assert call(managed, "PUT", "/api/user-limits/app/max-channels", {"value": "5"})[0] == 400
    managed.restart(crash=True)
    assert call(managed, "GET", "/api/vhost-limits")[1] == [{"vhost": "limited", "value": {"max-queues": 3}}]
    assert call(managed, "GET", "/api/user-limits/app")[1] == [{"user": "app", "value": {"max-channels": 5}}]
    status, exported = call(managed, "GET", "/api/definitions")
    fresh = start_broker(management_port=free_port())
    assert call(fresh, "POST", "/api/definitions", exported)[0] == 204
    assert call(fresh, "GET", "/api/vhost-limits/limited")[1] == [{"vhost": "limited", "value": {"max-queues": 3}}]
    assert call(fresh, "GET", "/api/users/app")[1]["limits"] == {"max-channels": 5}
    assert call(managed, "DELETE", "/api/vhost-limits/limited/max-queues")[0] == 204
    assert call(managed, "DELETE", "/api/vhost-limits/limited/max-queues")[0] == 404
    assert call(managed, "GET", "/api/vhost-limits")[1] == []


def test_load_definitions_at_start_imports_rabbitmq_s_file_every_start(start_broker) -> None:
    broker = start_broker(management_port=free_port(),
                          env={"AMQPBROKER_LOAD_DEFINITIONS": str(DATA / "rabbitmq-3.10.8-definitions.json")})
    assert call(broker, "GET", "/api/whoami", user="moved-user", password="moved-pw")[0] == 200
    broker.restart()  # imported again: idempotent
    assert [queue["name"] for queue in call(broker, "GET", "/api/queues/exported")[1]] == ["mv.q"]


def test_a_bad_definitions_file_stops_start_up_naming_the_entry(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"permissions": [{"user": "nobody", "vhost": "/", "configure": "", "write": "",
                                                "read": ""}]}))
    result = subprocess.run([sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(free_port()),
                             "--data-dir", str(tmp_path / "d"), "--management-port", "0", "--prometheus-port", "0"],
                            env={"AMQPBROKER_LOAD_DEFINITIONS": str(bad), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot load definitions" in result.stderr and "nobody" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_vhost_is_configurable(start_broker) -> None:
    broker = start_broker(management_port=free_port(), env={"AMQPBROKER_DEFAULT_VHOST": "prod"})
    with _connect(broker, "guest", "guest", "prod") as connection:
        connection.channel()
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        _connect(broker, "guest", "guest", "/")


def test_policies_survive_kill_9_and_apply_to_recovered_queues(managed) -> None:
    with managed.connect() as connection:
        channel = connection.channel()
        channel.queue_declare("capped", durable=True)
    assert call(managed, "PUT", "/api/policies/%2F/cap", {"pattern": "^capped$", "definition": {"max-length": 2},
                                                          "apply-to": "queues"})[0] == 201
    assert call(managed, "PUT", "/api/operator-policies/%2F/ttl-cap", {"pattern": ".*",
                                                                        "definition": {"message-ttl": 60000}})[0] == 201
    assert call(managed, "PUT", "/api/operator-policies/%2F/bad", {"pattern": ".*",
                                                                    "definition": {"overflow": "reject-publish"}})[0] == 400
    managed.restart(crash=True)
    status, queue = call(managed, "GET", "/api/queues/%2F/capped")
    assert (queue["policy"], queue["operator_policy"]) == ("cap", "ttl-cap")
    assert queue["effective_policy_definition"] == {"max-length": 2, "message-ttl": 60000}
    with managed.connect() as connection:
        channel = connection.channel()
        for _ in range(5):
            channel.basic_publish("", "capped", b"x", pika.BasicProperties(delivery_mode=2))
        assert channel.queue_declare("capped", passive=True).method.message_count == 2
    status, exported = call(managed, "GET", "/api/definitions")
    assert [policy["name"] for policy in exported["policies"]] == ["cap"]
    assert call(managed, "DELETE", "/api/policies/%2F/cap")[0] == 204
    assert call(managed, "GET", "/api/queues/%2F/capped")[1]["policy"] is None


def test_per_vhost_definitions_and_api_auth(managed, start_broker) -> None:
    call(managed, "PUT", "/api/vhosts/src", {})
    call(managed, "PUT", "/api/queues/src/q1", {"durable": True})
    call(managed, "PUT", "/api/policies/src/p1", {"pattern": "^q", "definition": {"max-length": 9}})
    status, exported = call(managed, "GET", "/api/definitions/src")
    assert status == 200 and [queue["name"] for queue in exported["queues"]] == ["q1"]
    assert "vhost" not in exported["queues"][0] and "users" not in exported
    call(managed, "PUT", "/api/vhosts/dst", {})
    assert call(managed, "POST", "/api/definitions/dst", exported)[0] == 204
    assert call(managed, "GET", "/api/queues/dst/q1")[1]["policy"] == "p1"
    assert call(managed, "GET", "/api/auth", password="not needed")[1] == {
        "enable_uaa": False, "uaa_client_id": "", "uaa_location": ""}


def test_the_http_api_checks_topic_permissions_on_publish_and_bind(managed) -> None:
    call(managed, "PUT", "/api/users/pub", {"password": "pw", "tags": "management"})
    call(managed, "PUT", "/api/permissions/%2F/pub", {"configure": ".*", "write": ".*", "read": ".*"})
    call(managed, "PUT", "/api/topic-permissions/%2F/pub", {"exchange": "amq.topic", "write": "^ok\\.", "read": "^ok\\."})
    call(managed, "PUT", "/api/queues/%2F/tq", {})
    publish = {"routing_key": "no.key", "payload": "x", "payload_encoding": "string", "properties": {}}
    assert call(managed, "POST", "/api/exchanges/%2F/amq.topic/publish", publish, user="pub", password="pw")[0] == 401
    publish["routing_key"] = "ok.key"
    assert call(managed, "POST", "/api/exchanges/%2F/amq.topic/publish", publish, user="pub", password="pw")[0] == 200
    assert call(managed, "POST", "/api/bindings/%2F/e/amq.topic/q/tq", {"routing_key": "no.#"},
                user="pub", password="pw")[0] == 401
    assert call(managed, "POST", "/api/bindings/%2F/e/amq.topic/q/tq", {"routing_key": "ok.#"},
                user="pub", password="pw")[0] == 201


def test_a_management_user_s_overview_counts_its_vhosts_only(managed) -> None:
    call(managed, "PUT", "/api/vhosts/mine", {})
    call(managed, "PUT", "/api/queues/%2F/not-theirs", {})
    call(managed, "PUT", "/api/queues/mine/theirs", {})
    call(managed, "PUT", "/api/users/viewer", {"password": "pw", "tags": "management"})
    call(managed, "PUT", "/api/permissions/mine/viewer", {"configure": ".*", "write": ".*", "read": ".*"})
    status, overview = call(managed, "GET", "/api/overview", user="viewer", password="pw")
    assert status == 200 and overview["object_totals"]["queues"] == 1
    assert call(managed, "GET", "/api/overview")[1]["object_totals"]["queues"] == 2
