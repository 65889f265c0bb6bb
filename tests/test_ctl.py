"""``amqpbroker ctl`` against a running broker: rabbitmqctl's commands, columns, formats, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pika
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess
from tests.test_management import call


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port())


def ctl(broker: BrokerProcess, *args: str, user: str = "guest", password: str = "guest") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqpbroker", "ctl", "--url",
                           f"http://127.0.0.1:{broker.management_port}", "-u", user, "--password", password, *args],
                          capture_output=True, text=True, timeout=30)


def test_users_vhosts_and_permissions_are_managed_as_with_rabbitmqctl(managed) -> None:
    assert ctl(managed, "add_vhost", "orders").returncode == 0
    assert ctl(managed, "add_user", "app", "pw1").returncode == 0
    assert ctl(managed, "set_user_tags", "app", "monitoring").returncode == 0
    assert ctl(managed, "change_password", "app", "pw2").returncode == 0
    assert ctl(managed, "set_permissions", "-p", "orders", "app", "^o\\.", ".*", ".*").returncode == 0
    assert ctl(managed, "set_topic_permissions", "-p", "orders", "app", "amq.topic", "^o\\.", ".*").returncode == 0
    listed = ctl(managed, "list_permissions", "-p", "orders").stdout.splitlines()
    assert listed[0] == "user\tconfigure\twrite\tread"
    assert "app\t^o\\.\t.*\t.*" in listed
    users = json.loads(ctl(managed, "--formatter", "json", "list_users").stdout)
    assert {"name": "app", "tags": ["monitoring"]} in users
    assert call(managed, "GET", "/api/whoami", user="app", password="pw2")[0] == 200
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", managed.port, "orders",
                                                           pika.PlainCredentials("app", "pw2"))) as connection:
        connection.channel().queue_declare("o.q")
        rows = ctl(managed, "list_queues", "-p", "orders", "name", "messages", "consumers").stdout.splitlines()
        assert rows == ["name\tmessages\tconsumers", "o.q\t0\t0"]
        assert "app" in ctl(managed, "list_connections", "user").stdout
    assert ctl(managed, "set_vhost_limits", "-p", "orders", '{"max-queues": 5}').returncode == 0
    assert "max-queues" in ctl(managed, "list_vhost_limits", "-p", "orders").stdout
    assert ctl(managed, "delete_queue", "-p", "orders", "o.q").returncode == 0
    assert ctl(managed, "clear_permissions", "-p", "orders", "app").returncode == 0
    assert ctl(managed, "delete_user", "app").returncode == 0
    assert ctl(managed, "delete_vhost", "orders").returncode == 0
    assert "orders" not in ctl(managed, "list_vhosts").stdout


def test_definitions_are_exported_and_imported(managed, start_broker, tmp_path) -> None:
    ctl(managed, "add_vhost", "kept")
    path = tmp_path / "definitions.json"
    assert ctl(managed, "export_definitions", str(path)).returncode == 0
    fresh = start_broker(management_port=free_port())
    assert ctl(fresh, "import_definitions", str(path)).returncode == 0
    assert "kept" in ctl(fresh, "list_vhosts").stdout


def test_exit_codes_say_what_went_wrong(managed) -> None:
    assert ctl(managed, "delete_user", "nobody").returncode == 65
    assert "404" in ctl(managed, "delete_user", "nobody").stderr
    assert ctl(managed, "list_users", password="wrong").returncode == 77
    assert ctl(managed, "no_such_command").returncode == 64
    assert ctl(managed, "add_user", "only-a-name").returncode == 64
    down = subprocess.run([sys.executable, "-m", "amqpbroker", "ctl", "--url", f"http://127.0.0.1:{free_port()}",
                           "status"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 69 and "cannot reach" in down.stderr
    status = ctl(managed, "status")
    assert status.returncode == 0 and "amqpbroker" in status.stdout


def test_policies_are_set_and_cleared_as_with_rabbitmqctl(managed) -> None:
    result = ctl(managed, "set_policy", "--priority", "2", "--apply-to", "queues", "cap", "^c\\.", '{"max-length": 7}')
    assert result.returncode == 0, result.stderr
    assert ctl(managed, "set_operator_policy", "ttl", ".*", '{"message-ttl": 1000}').returncode == 0
    rows = ctl(managed, "list_policies", "name", "priority", "apply-to").stdout.splitlines()
    assert rows == ["name\tpriority\tapply-to", "cap\t2\tqueues"]
    assert "ttl" in ctl(managed, "list_operator_policies").stdout
    assert ctl(managed, "set_policy", "bad", ".*", "not json").returncode == 64
    assert ctl(managed, "clear_policy", "cap").returncode == 0
    assert ctl(managed, "clear_operator_policy", "ttl").returncode == 0
    assert ctl(managed, "list_policies").stdout.splitlines() == ["name\tpattern\tapply-to\tdefinition\tpriority"]


def test_parameters_limits_and_the_cluster_name_as_with_rabbitmqctl(managed) -> None:
    assert ctl(managed, "set_vhost_limits", '{"max-queues": 5, "max-connections": 9}').returncode == 0
    assert ctl(managed, "set_vhost_limits", '{"max-queues": 6}').returncode == 0  # the whole set, as rabbitmqctl
    assert call(managed, "GET", "/api/vhost-limits/%2F")[1] == [{"vhost": "/", "value": {"max-queues": 6}}]
    rows = json.loads(ctl(managed, "--formatter", "json", "list_parameters").stdout)
    assert rows == [{"component": "vhost-limits", "name": "limits", "value": {"max-queues": 6}}]
    refused = ctl(managed, "set_parameter", "shovel", "s1", '{"src-uri": "amqp://"}')
    assert refused.returncode == 65 and "component shovel not found" in refused.stderr
    assert ctl(managed, "set_parameter", "vhost-limits", "limits", "not json").returncode == 64
    assert ctl(managed, "clear_parameter", "vhost-limits", "limits").returncode == 0
    assert call(managed, "GET", "/api/vhost-limits")[1] == []
    assert ctl(managed, "set_global_parameter", "app_mode", '"blue"').returncode == 0
    assert "app_mode\tblue" in ctl(managed, "list_global_parameters").stdout.splitlines()
    assert ctl(managed, "clear_global_parameter", "app_mode").returncode == 0
    assert ctl(managed, "clear_global_parameter", "app_mode").returncode == 65
    assert ctl(managed, "set_cluster_name", "orders-prod").returncode == 0
    assert call(managed, "GET", "/api/overview")[1]["cluster_name"] == "orders-prod"
    ctl(managed, "add_user", "app", "pw")
    assert ctl(managed, "set_user_limits", "app", '{"max-channels": 3}').returncode == 0
    assert ctl(managed, "set_user_limits", "app", '{"max-connections": 2}').returncode == 0  # merged, as there
    assert call(managed, "GET", "/api/users/app")[1]["limits"] == {"max-channels": 3, "max-connections": 2}
    assert ctl(managed, "clear_user_limits", "app", "all").returncode == 0
    assert call(managed, "GET", "/api/users/app")[1]["limits"] == {}


def test_queues_and_connections_are_purged_deleted_and_closed(managed) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{managed.port}/"))
    channel = connection.channel()
    channel.queue_declare("ctl-q")
    channel.confirm_delivery()
    for _ in range(3):
        channel.basic_publish("", "ctl-q", b"m")
    assert ctl(managed, "purge_queue", "ctl-q").returncode == 0
    assert call(managed, "GET", "/api/queues/%2F/ctl-q")[1]["messages"] == 0
    assert ctl(managed, "delete_queue", "ctl-q").returncode == 0
    assert call(managed, "GET", "/api/queues/%2F/ctl-q")[0] == 404
    name = json.loads(ctl(managed, "--formatter", "json", "list_connections", "name").stdout)[0]["name"]
    assert ctl(managed, "close_connection", name, "maintenance").returncode == 0
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(time_limit=5)
        connection.process_data_events(time_limit=5)
    assert closed.value.reply_code == 320 and "maintenance" in closed.value.reply_text
