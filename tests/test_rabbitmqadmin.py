"""Debian's ``rabbitmqadmin`` (v1, shipped with the rabbitmq-server package), unchanged, against
amqpbroker's management API: declare users, vhosts, permissions, policies, queues, exchanges and
bindings, publish and get, list everything, export and import definitions. ``.ci/run`` extracts
the script from Debian's package when it is not installed; without it this test is skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess

_TOOL = (os.environ.get("RABBITMQADMIN") or shutil.which("rabbitmqadmin")
         or next((str(path) for path in [Path(__file__).parent.parent / ".ci" / "tools" / "rabbitmqadmin"]
                  if path.exists()), None))

pytestmark = pytest.mark.skipif(_TOOL is None, reason="no rabbitmqadmin (Debian's rabbitmq-server package; "
                                                      ".ci/run extracts it)")


@pytest.fixture
def admin(start_broker):
    broker: BrokerProcess = start_broker(management_port=free_port())

    def run(*args: str, vhost: str | None = None) -> str:
        command = ["python3", _TOOL, "-H", "127.0.0.1", "-P", str(broker.management_port), "-u", "guest",
                   "-p", "guest", *(["-V", vhost] if vhost else []), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "***" not in result.stderr, (command, result.stdout, result.stderr)
        return result.stdout
    return run


def test_rabbitmqadmin_declares_publishes_gets_and_lists(admin, tmp_path) -> None:
    admin("declare", "vhost", "name=adm")
    admin("declare", "user", "name=admu", "password=pw", "tags=monitoring")
    admin("declare", "permission", "vhost=adm", "user=admu", "configure=.*", "write=.*", "read=.*")
    admin("declare", "queue", "name=q1", "durable=true", vhost="adm")
    admin("declare", "exchange", "name=e1", "type=fanout", vhost="adm")
    admin("declare", "binding", "source=e1", "destination=q1", vhost="adm")
    admin("declare", "policy", "name=cap", "pattern=^q", 'definition={"max-length":5}', "apply-to=queues",
          vhost="adm")
    assert "Message published" in admin("publish", "exchange=e1", "routing_key=x", "payload=hello", vhost="adm")
    got = json.loads(admin("-f", "raw_json", "get", "queue=q1", "ackmode=ack_requeue_false", vhost="adm"))
    assert got[0]["payload"] == "hello"
    queues = json.loads(admin("-f", "raw_json", "list", "queues", "name", "policy", vhost="adm"))
    assert queues == [{"name": "q1", "policy": "cap"}]
    users = json.loads(admin("-f", "raw_json", "list", "users"))
    assert {user["name"] for user in users} == {"guest", "admu"}
    assert "admu" in admin("list", "permissions")
    assert "cap" in admin("list", "policies", vhost="adm")
    assert "e1" in admin("list", "bindings", vhost="adm")
    path = tmp_path / "definitions.json"
    admin("export", str(path))
    admin("import", str(path))
    admin("delete", "queue", "name=q1", vhost="adm")
    admin("delete", "vhost", "name=adm")
    admin("delete", "user", "name=admu")
    assert "adm" not in admin("-f", "raw_json", "list", "vhosts")


def test_rabbitmqadmin_manages_parameters_and_deletes_one_binding(admin) -> None:
    admin("declare", "parameter", "component=vhost-limits", "name=limits", 'value={"max-queues": 9}')
    listed = json.loads(admin("-f", "raw_json", "list", "parameters"))
    assert listed == [{"value": {"max-queues": 9}, "vhost": "/", "component": "vhost-limits", "name": "limits"}]
    admin("delete", "parameter", "component=vhost-limits", "name=limits")
    assert json.loads(admin("-f", "raw_json", "list", "parameters")) == []
    admin("declare", "queue", "name=bq")
    admin("declare", "exchange", "name=bx", "type=direct")
    admin("declare", "binding", "source=bx", "destination=bq", "routing_key=one/way")
    admin("declare", "binding", "source=bx", "destination=bq", "routing_key=other")
    bindings = json.loads(admin("-f", "raw_json", "list", "bindings", "source", "routing_key", "properties_key"))
    key = next(each["properties_key"] for each in bindings if each["routing_key"] == "one/way")
    admin("delete", "binding", "source=bx", "destination_type=queue", "destination=bq", f"properties_key={key}")
    left = json.loads(admin("-f", "raw_json", "list", "bindings", "source", "routing_key"))
    assert [each["routing_key"] for each in left if each["source"] == "bx"] == ["other"]
