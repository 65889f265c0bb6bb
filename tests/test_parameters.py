"""Runtime parameters, global parameters and the cluster name through the management API (as
RabbitMQ serves them), kept across a kill -9, in definitions both ways; and one binding by its
``properties_key`` (what ``rabbitmqadmin delete binding`` uses)."""

from __future__ import annotations

import urllib.request

import pika
import pytest

from amqpbroker.broker.broker import Broker
from amqpbroker.broker.recovery import restore
from amqpbroker.store.rocks import RocksStore
from amqpbroker.testing import free_port
from tests.broker_process import BrokerProcess
from tests.test_management import call


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port(), prometheus_port=free_port())


def _user(broker: BrokerProcess, name: str, tags: str) -> None:
    assert call(broker, "PUT", f"/api/users/{name}", {"password": "pw", "tags": tags})[0] == 201
    assert call(broker, "PUT", f"/api/permissions/%2F/{name}", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201


def test_vhost_limits_are_the_runtime_parameter_rabbitmq_stores_them_as(managed) -> None:
    path = "/api/parameters/vhost-limits/%2F/limits"
    assert call(managed, "GET", "/api/parameters")[1] == []
    assert call(managed, "PUT", path, {"value": {"max-queues": 7}})[0] == 201
    assert call(managed, "PUT", path, {"value": {"max-queues": 8, "max-connections": 2}})[0] == 204
    assert call(managed, "GET", "/api/vhost-limits/%2F")[1] == [{"vhost": "/", "value": {"max-queues": 8,
                                                                                          "max-connections": 2}}]
    expected = {"value": {"max-queues": 8, "max-connections": 2}, "vhost": "/", "component": "vhost-limits",
                "name": "limits"}
    assert call(managed, "GET", path) == (200, expected)
    assert call(managed, "GET", "/api/parameters/vhost-limits")[1] == [expected]
    assert call(managed, "GET", "/api/parameters/shovel")[1] == []
    assert call(managed, "DELETE", path)[0] == 204
    assert call(managed, "GET", path)[0] == 404
    assert call(managed, "DELETE", path)[0] == 404
    assert call(managed, "GET", "/api/vhost-limits")[1] == []


def test_a_component_amqpbroker_does_not_have_is_refused_as_rabbitmq_without_the_plugin(managed) -> None:
    status, body = call(managed, "PUT", "/api/parameters/federation-upstream/%2F/up", {"value": {"uri": "amqp://x"}})
    assert status == 400 and body["reason"] == "Validation failed\n\ncomponent federation-upstream not found\n"
    assert call(managed, "PUT", "/api/parameters/vhost-limits/%2F/other", {"value": {"max-queues": 1}})[0] == 400
    assert call(managed, "PUT", "/api/parameters/vhost-limits/%2F/limits", {"value": {"max-bananas": 1}})[0] == 400
    assert call(managed, "PUT", "/api/parameters/vhost-limits/%2F/limits", {"nothing": 1})[0] == 400
    assert call(managed, "PUT", "/api/parameters/vhost-limits/nowhere/limits", {"value": {}})[0] == 404
    assert call(managed, "GET", "/api/parameters")[1] == []


def test_parameters_need_policymaker_and_global_ones_administrator(managed) -> None:
    _user(managed, "pm", "policymaker")
    _user(managed, "mon", "monitoring")
    path = "/api/parameters/vhost-limits/%2F/limits"
    assert call(managed, "PUT", path, {"value": {"max-queues": 5}}, user="pm", password="pw")[0] == 201
    assert call(managed, "GET", "/api/parameters", user="mon", password="pw")[0] == 401
    assert call(managed, "GET", "/api/global-parameters", user="pm", password="pw")[0] == 401
    assert call(managed, "PUT", "/api/global-parameters/x", {"value": 1}, user="pm", password="pw")[0] == 401
    assert call(managed, "GET", "/api/cluster-name", user="mon", password="pw")[0] == 200
    assert call(managed, "PUT", "/api/cluster-name", {"name": "no"}, user="mon", password="pw")[0] == 401


def test_global_parameters_and_the_cluster_name_are_kept_across_kill_9(managed) -> None:
    status, initial = call(managed, "GET", "/api/global-parameters")
    assert status == 200 and [each["name"] for each in initial] == ["internal_cluster_id"]
    cluster_id = initial[0]["value"]
    assert cluster_id.startswith("rabbitmq-cluster-id-")
    assert call(managed, "GET", "/api/cluster-name")[1] == {"name": "amqpbroker@localhost"}
    assert call(managed, "PUT", "/api/global-parameters/app_setting", {"value": {"nested": [1, "two"]}})[0] == 201
    assert call(managed, "PUT", "/api/global-parameters/app_setting", {"value": 3})[0] == 204
    assert call(managed, "PUT", "/api/cluster-name", {"name": "orders-prod"})[0] == 204
    assert call(managed, "PUT", "/api/global-parameters/cluster_name", {"value": ""})[0] == 400
    assert call(managed, "PUT", "/api/global-parameters/cluster_name", {"value": 5})[0] == 400
    managed.restart(crash=True)
    assert call(managed, "GET", "/api/global-parameters/app_setting")[1] == {"value": 3, "name": "app_setting"}
    assert call(managed, "GET", "/api/global-parameters/internal_cluster_id")[1]["value"] == cluster_id
    # the one name everything reports: the overview, connection.start, Prometheus' identity
    assert call(managed, "GET", "/api/overview")[1]["cluster_name"] == "orders-prod"
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{managed.port}/"))
    try:
        assert connection._impl.server_properties["cluster_name"] == "orders-prod"
    finally:
        connection.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{managed.prometheus_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert ('rabbitmq_identity_info{rabbitmq_cluster="orders-prod",rabbitmq_endpoint="metrics",'
            'rabbitmq_node="amqpbroker@localhost"} 1.0' in metrics)
    assert call(managed, "DELETE", "/api/global-parameters/cluster_name")[0] == 204
    assert call(managed, "DELETE", "/api/global-parameters/cluster_name")[0] == 404
    assert call(managed, "GET", "/api/cluster-name")[1] == {"name": "amqpbroker@localhost"}


def test_definitions_carry_parameters_both_ways_and_a_missing_component_is_named(managed, start_broker) -> None:
    call(managed, "PUT", "/api/global-parameters/app_setting", {"value": "kept"})
    call(managed, "PUT", "/api/parameters/vhost-limits/%2F/limits", {"value": {"max-connections": 50}})
    exported = call(managed, "GET", "/api/definitions")[1]
    assert {"name": "app_setting", "value": "kept"} in exported["global_parameters"]
    assert exported["parameters"] == [{"value": {"max-connections": 50}, "vhost": "/",
                                       "component": "vhost-limits", "name": "limits"}]
    fresh = start_broker(management_port=free_port())
    assert call(fresh, "POST", "/api/definitions", exported)[0] == 204
    assert call(fresh, "GET", "/api/global-parameters/app_setting")[1]["value"] == "kept"
    assert call(fresh, "GET", "/api/vhost-limits/%2F")[1] == [{"vhost": "/", "value": {"max-connections": 50}}]
    federated = {"parameters": [{"value": {"uri": "amqp://upstream"}, "vhost": "/",
                                 "component": "federation-upstream", "name": "up"}]}
    status, body = call(fresh, "POST", "/api/definitions", federated)
    assert status == 400 and "federation-upstream" in body["reason"] and "not found" in body["reason"]


def test_a_store_from_before_global_parameters_keeps_the_id_it_is_given(tmp_path) -> None:
    path = str(tmp_path / "db")
    store = RocksStore(path)
    try:
        store.write([("meta", "v", "/", b'{"name": "/"}')])  # users and vhosts, no global parameters
        first = Broker()
        restore(first, store)
        second = Broker()
        restore(second, store)
    finally:
        store.close()
    assert first.global_parameters["internal_cluster_id"] == second.global_parameters["internal_cluster_id"]


def test_one_binding_is_read_and_deleted_by_its_properties_key(managed) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{managed.port}/"))
    try:
        channel = connection.channel()
        channel.exchange_declare("props-x", "headers")
        channel.queue_declare("props-q")
        channel.queue_bind("props-q", "props-x", "a/b")
        channel.queue_bind("props-q", "props-x", "a/b", arguments={"x-match": "all", "k": 1})
        channel.queue_bind("props-q", "props-x", "a/b", arguments={"x-match": "any", "k": 1})
        listed = call(managed, "GET", "/api/bindings/%2F/e/props-x/q/props-q")[1]
        keys = [each["properties_key"] for each in listed]
        assert len(set(keys)) == 3 and "a%2Fb" in keys
        quote = lambda key: urllib.request.quote(key, safe="")  # noqa: E731  (as rabbitmqadmin does)
        with_arguments = next(each for each in listed if each["arguments"].get("x-match") == "any")
        one = call(managed, "GET", f"/api/bindings/%2F/e/props-x/q/props-q/{quote(with_arguments['properties_key'])}")
        assert one == (200, with_arguments)
        _user(managed, "reader", "management")
        call(managed, "PUT", "/api/permissions/%2F/reader", {"configure": "", "write": "", "read": ".*"})
        path = f"/api/bindings/%2F/e/props-x/q/props-q/{quote('a%2Fb')}"
        assert call(managed, "DELETE", path, user="reader", password="pw")[0] == 401  # no write on the queue
        assert call(managed, "DELETE", path)[0] == 204
        assert call(managed, "DELETE", path)[0] == 404
        left = call(managed, "GET", "/api/bindings/%2F/e/props-x/q/props-q")[1]
        assert sorted(each["arguments"]["x-match"] for each in left) == ["all", "any"]
        assert call(managed, "GET", "/api/bindings/%2F/e/nowhere/q/props-q/a")[0] == 404
    finally:
        connection.close()


def test_a_vhost_s_default_queue_type_applies_to_durable_shared_queues_and_is_exported(managed, start_broker) -> None:
    assert call(managed, "PUT", "/api/vhosts/dqt", {"default_queue_type": "quorum"})[0] == 201
    assert call(managed, "PUT", "/api/vhosts/bad", {"default_queue_type": "stream"})[0] == 400
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{managed.port}/dqt"))
    try:
        channel = connection.channel()
        channel.queue_declare("dqt-durable", durable=True)
        channel.queue_declare("dqt-durable", durable=True)  # redeclared the same way: equivalent
        channel.queue_declare("dqt-transient")
        channel.queue_declare("dqt-exclusive", exclusive=True)
        channel.queue_declare("dqt-classic", durable=True, arguments={"x-queue-type": "classic"})
        types = {queue["name"]: queue["type"] for queue in call(managed, "GET", "/api/queues/dqt")[1]}
    finally:
        connection.close()
    assert types == {"dqt-durable": "quorum", "dqt-transient": "classic", "dqt-exclusive": "classic",
                     "dqt-classic": "classic"}
    exported = call(managed, "GET", "/api/definitions")[1]
    [entry] = [vhost for vhost in exported["vhosts"] if vhost["name"] == "dqt"]
    assert entry["default_queue_type"] == "quorum" and entry["metadata"]["default_queue_type"] == "quorum"
    fresh = start_broker(management_port=free_port())
    assert call(fresh, "POST", "/api/definitions", exported)[0] == 204
    assert call(fresh, "GET", "/api/vhosts/dqt")[1]["default_queue_type"] == "quorum"


def test_default_queue_type_edge_cases(managed, start_broker, tmp_path) -> None:
    # a classic queue made before the vhost got a default type stays classic through definitions
    call(managed, "PUT", "/api/vhosts/later", {})
    call(managed, "PUT", "/api/queues/later/old-classic", {"durable": True})
    call(managed, "PUT", "/api/vhosts/later", {"default_queue_type": "quorum"})
    exported = call(managed, "GET", "/api/definitions")[1]
    assert {"name": "old-classic", "type": "classic"}.items() <= next(
        queue for queue in exported["queues"] if queue["name"] == "old-classic").items()
    fresh = start_broker(management_port=free_port())
    assert call(fresh, "POST", "/api/definitions", exported)[0] == 204
    assert call(fresh, "GET", "/api/queues/later/old-classic")[1]["type"] == "classic"
    # RabbitMQ 3.12/3.13 export "undefined" for a vhost without one
    assert call(fresh, "POST", "/api/definitions", {"vhosts": [{"name": "v313", "default_queue_type": "undefined"}]})[0] == 204
    assert call(fresh, "GET", "/api/vhosts/v313")[1]["default_queue_type"] == "classic"
    # limits given as 0 or text are refused, not taken for "none"
    status, _ = call(fresh, "PUT", "/api/parameters/vhost-limits/v313/limits", {"value": 0})
    assert status == 400


def test_a_stored_vhost_with_an_unsupported_default_type_is_kept_without_it(tmp_path, caplog) -> None:
    path = str(tmp_path / "db")
    store = RocksStore(path)
    try:
        store.write([("meta", "v", "/", b'{"name": "/"}'),
                     ("meta", "v", "events", b'{"name": "events", "description": "kept", "default_queue_type": "stream"}')])
        broker = Broker()
        restore(broker, store)
    finally:
        store.close()
    assert broker.vhosts["events"].description == "kept" and broker.vhosts["events"].default_queue_type is None
    assert "not supported" in caplog.text


def test_a_binding_with_an_empty_routing_key_is_named_by_a_tilde(managed) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{managed.port}/"))
    try:
        channel = connection.channel()
        channel.exchange_declare("fan", "fanout")
        channel.queue_declare("fan-q")
        channel.queue_bind("fan-q", "fan", routing_key="")
        [binding] = call(managed, "GET", "/api/bindings/%2F/e/fan/q/fan-q")[1]
        assert binding["properties_key"] == "~"  # as RabbitMQ
        assert call(managed, "GET", "/api/bindings/%2F/e/fan/q/fan-q/~")[1]["destination"] == "fan-q"
        assert call(managed, "GET", "/api/bindings/%2F/e/fan/e/fan-q/~")[0] == 404  # a queue's, not an exchange's
        assert call(managed, "DELETE", "/api/bindings/%2F/e/fan/q/fan-q/~")[0] == 204
        assert call(managed, "GET", "/api/bindings/%2F/e/fan/q/fan-q")[1] == []
    finally:
        connection.close()
