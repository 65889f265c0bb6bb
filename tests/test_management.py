"""The management HTTP API through real HTTP, against a broker subprocess: RabbitMQ's paths,
Basic auth with tags, JSON shapes that tools read."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pika
import pytest

from amqpbroker.testing import free_port
from tests.broker_process import PERSISTENT, BrokerProcess, channel_of


@pytest.fixture
def managed(start_broker) -> BrokerProcess:
    return start_broker(management_port=free_port())


def call(broker: BrokerProcess, method: str, path: str, body: Any = None, *,
         user: str = "guest", password: str = "guest") -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{broker.management_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            data = response.read()
            return response.status, json.loads(data) if data else None
    except urllib.error.HTTPError as error:
        data = error.read()
        return error.code, json.loads(data) if data else None


def test_login_is_http_basic_with_a_management_tag(managed) -> None:
    assert call(managed, "GET", "/api/whoami") == (200, {"name": "guest", "tags": ["administrator"]})
    status, body = call(managed, "GET", "/api/whoami", password="wrong")
    assert status == 401 and body["error"] == "not_authorised"


def test_overview_counts_objects_and_messages(managed) -> None:
    with channel_of(managed) as ch:
        ch.queue_declare("ov", durable=True)
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish("", "ov", b"x", PERSISTENT)
        status, overview = call(managed, "GET", "/api/overview")
    assert status == 200
    assert overview["object_totals"]["connections"] == 1
    assert overview["object_totals"]["queues"] == 1
    assert overview["queue_totals"]["messages_ready"] == 3
    assert overview["message_stats"]["publish"] == 3
    assert {"protocol": "amqp", "port": managed.port} == {key: value for key, value in overview["listeners"][0].items()
                                                          if key in ("protocol", "port")}


def test_queues_are_listed_declared_read_purged_and_deleted(managed) -> None:
    assert call(managed, "PUT", "/api/queues/%2F/made-by-http", {"durable": True, "arguments": {"x-max-length": 10}})[0] == 201
    with channel_of(managed) as ch:
        ch.confirm_delivery()
        for index in range(4):
            ch.basic_publish("", "made-by-http", f"m{index}".encode(), PERSISTENT)
        ch.basic_get("made-by-http")  # one unacked while we look
        status, queue = call(managed, "GET", "/api/queues/%2F/made-by-http")
        assert status == 200
        assert (queue["messages_ready"], queue["messages_unacknowledged"], queue["messages"]) == (3, 1, 4)
        assert queue["durable"] is True and queue["arguments"] == {"x-max-length": 10}
    status, got = call(managed, "POST", "/api/queues/%2F/made-by-http/get",
                       {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert status == 200
    # the unacked one came back (redelivered) at the head when its channel closed
    assert [item["payload"] for item in got] == ["m0", "m1"]
    assert got[0]["redelivered"] is True and got[0]["properties"]["delivery_mode"] == 2
    assert call(managed, "GET", "/api/queues/%2F/made-by-http")[1]["messages_ready"] == 4  # requeued
    assert call(managed, "DELETE", "/api/queues/%2F/made-by-http/contents")[0] == 204
    assert call(managed, "GET", "/api/queues/%2F/made-by-http")[1]["messages_ready"] == 0
    names = [queue["name"] for queue in call(managed, "GET", "/api/queues")[1]]
    assert names == ["made-by-http"]
    assert call(managed, "DELETE", "/api/queues/%2F/made-by-http")[0] == 204
    assert call(managed, "GET", "/api/queues/%2F/made-by-http")[0] == 404


def test_exchanges_bindings_and_publish(managed) -> None:
    assert call(managed, "PUT", "/api/exchanges/%2F/orders", {"type": "topic", "durable": True})[0] == 201
    assert call(managed, "PUT", "/api/queues/%2F/new-orders", {"durable": False})[0] == 201
    assert call(managed, "POST", "/api/bindings/%2F/e/orders/q/new-orders", {"routing_key": "order.new"})[0] == 201
    (binding,) = call(managed, "GET", "/api/bindings/%2F/e/orders/q/new-orders")[1]
    assert (binding["source"], binding["destination"], binding["routing_key"]) == ("orders", "new-orders", "order.new")
    assert call(managed, "POST", "/api/exchanges/%2F/orders/publish",
                {"routing_key": "order.new", "payload": "hello", "payload_encoding": "string",
                 "properties": {"headers": {"k": "v"}}}) == (200, {"routed": True})
    assert call(managed, "POST", "/api/exchanges/%2F/orders/publish",
                {"routing_key": "order.old", "payload": "", "payload_encoding": "string", "properties": {}}) \
        == (200, {"routed": False})
    with channel_of(managed) as ch:
        method, properties, body = ch.basic_get("new-orders", auto_ack=True)
        assert body == b"hello" and properties.headers == {"k": "v"}
    exchange = call(managed, "GET", "/api/exchanges/%2F/orders")[1]
    assert (exchange["type"], exchange["durable"]) == ("topic", True)
    status, body = call(managed, "PUT", "/api/exchanges/%2F/orders", {"type": "direct", "durable": True})
    assert status == 400 and "inequivalent" in body["reason"]


def test_connections_channels_consumers_and_closing_a_connection(managed) -> None:
    parameters = pika.URLParameters(managed.url)
    parameters.client_properties = {"connection_name": "http-test"}
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.queue_declare("watched")
    channel.basic_consume("watched", lambda *args: None)
    (view,) = call(managed, "GET", "/api/connections")[1]
    assert view["user_provided_name"] == "http-test" and view["user"] == "guest" and view["channels"] == 1
    (channel_view,) = call(managed, "GET", "/api/channels")[1]
    assert channel_view["consumer_count"] == 1
    (consumer,) = call(managed, "GET", "/api/consumers")[1]
    assert consumer["queue"]["name"] == "watched"
    name = urllib.request.quote(view["name"], safe="")
    assert call(managed, "DELETE", f"/api/connections/{name}")[0] == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        connection.process_data_events(time_limit=2)
        connection.process_data_events(time_limit=2)
    assert closed.value.reply_code == 320
    time.sleep(0.1)
    assert call(managed, "GET", "/api/connections")[1] == []


def test_definitions_export_and_import(managed) -> None:
    call(managed, "PUT", "/api/exchanges/%2F/defs-x", {"type": "fanout", "durable": True})
    call(managed, "PUT", "/api/queues/%2F/defs-q", {"durable": True})
    call(managed, "POST", "/api/bindings/%2F/e/defs-x/q/defs-q", {"routing_key": ""})
    status, definitions = call(managed, "GET", "/api/definitions")
    assert status == 200
    assert [queue["name"] for queue in definitions["queues"]] == ["defs-q"]
    assert [exchange["name"] for exchange in definitions["exchanges"]] == ["defs-x"]
    assert [(b["source"], b["destination"]) for b in definitions["bindings"]] == [("defs-x", "defs-q")]
    call(managed, "DELETE", "/api/queues/%2F/defs-q")
    call(managed, "DELETE", "/api/exchanges/%2F/defs-x")
    assert call(managed, "POST", "/api/definitions", definitions)[0] == 204
    assert call(managed, "GET", "/api/bindings/%2F/e/defs-x/q/defs-q")[1][0]["destination"] == "defs-q"


def test_health_and_aliveness(managed) -> None:
    assert call(managed, "GET", "/api/health/checks/alarms") == (200, {"status": "ok"})
    assert call(managed, "GET", "/api/aliveness-test/%2F") == (200, {"status": "ok"})
    assert call(managed, "GET", "/api/aliveness-test/nope")[0] == 404


def test_lists_take_columns_sort_and_pages(managed) -> None:
    for name in ("b-queue", "a-queue", "c-queue"):
        call(managed, "PUT", f"/api/queues/%2F/{name}", {"durable": False})
    status, names = call(managed, "GET", "/api/queues?columns=name,vhost&sort=name&sort_reverse=true")
    assert names == [{"name": "c-queue", "vhost": "/"}, {"name": "b-queue", "vhost": "/"},
                     {"name": "a-queue", "vhost": "/"}]
    status, page = call(managed, "GET", "/api/queues?page=2&page_size=2&name=queue&sort=name&columns=name")
    assert (page["page"], page["page_count"], page["total_count"], page["items"]) == (2, 2, 3, [{"name": "c-queue"}])


def test_ten_thousand_queues_are_listed_without_stalling_amqp(managed) -> None:
    """The AMQP side keeps answering while the API lists 10 000 queues (RabbitMQ's weak spot)."""
    with channel_of(managed) as ch:
        for index in range(10_000):
            ch.queue_declare(f"many-{index}", arguments={"x-queue-mode": "default"})
        started = time.monotonic()
        status, queues = call(managed, "GET", "/api/queues")
        listed = time.monotonic() - started
        assert status == 200 and len(queues) == 10_000
        ping_started = time.monotonic()
        ch.queue_declare("many-0", passive=True, arguments={})
        assert time.monotonic() - ping_started < 1.0
    print(f"listing 10 000 queues took {listed * 1000:.0f} ms")


def test_queues_show_their_queueing_figures(managed) -> None:
    with channel_of(managed) as ch:
        ch.queue_declare("measured")
        ch.confirm_delivery()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # about 200 msg/s for 2.5 s, consumed by basic.get
            for _ in range(10):
                ch.basic_publish("", "measured", b"x")
            for _ in range(10):
                method, _, _ = ch.basic_get("measured")
                ch.basic_ack(method.delivery_tag)
            time.sleep(0.05)
        figures = call(managed, "GET", "/api/queues/%2F/measured")[1]["queueing"]
    assert figures is not None and figures["window_seconds"] >= 1
    assert figures["arrival_rate"] > 10
    assert figures["mean_in_system"] >= 0
    stats = call(managed, "GET", "/api/queues/%2F/measured")[1]["message_stats"]
    assert stats["publish"] > 100 and stats["publish_details"]["rate"] > 10
    assert stats["ack"] > 100 and stats["ack_details"]["rate"] > 10
    overview = call(managed, "GET", "/api/overview")[1]["message_stats"]
    assert overview["publish_details"]["rate"] > 10 and overview["ack_details"]["rate"] > 10


def test_a_publisher_outrunning_its_consumer_shows_as_flow(managed) -> None:
    """The uncapped generator against a manual-ack consumer: the publishing connection is read
    less and shows state ``flow`` (as RabbitMQ's credit flow)."""
    import threading

    from interop.bench.runner import RunOptions, run_workload

    results: list[dict] = []
    run = threading.Thread(target=lambda: results.append(run_workload(
        managed.url, "throughput-ack", RunOptions(duration=4.0, warmup=1.0, max_inflight=10**12))))
    run.start()
    states: set[str] = set()
    try:
        deadline = time.monotonic() + 30
        while run.is_alive() and time.monotonic() < deadline:
            states.update(connection["state"] for connection in call(managed, "GET", "/api/connections")[1])
            time.sleep(0.2)
    finally:
        run.join(30)
    assert results and results[0]["consumed_rate"] > 0
    assert "flow" in states, states


def test_a_trailing_slash_is_ignored_as_rabbitmq_does_never_redirected(managed) -> None:
    """``/api/queues/`` is ``/api/queues`` (Flower asks for it); a redirect would make HTTP
    clients drop the credentials given in the URL. As RabbitMQ 3.10, checked against it."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def status(path: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{managed.management_port}{path}")
        request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        try:
            with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
    assert [status(path) for path in ("/api/queues/", "/api/overview/", "/api/queues/%2F/", "/api/whoami/")] == [200] * 4
    assert [status(path) for path in ("/api/queues//", "/api/queues/%2F/nosuch/")] == [404, 404]


def test_the_web_ui_and_its_icon_need_no_login(managed) -> None:
    for path, kind in (("/", "text/html"), ("/favicon.ico", "image/x-icon")):
        with urllib.request.urlopen(f"http://127.0.0.1:{managed.management_port}{path}", timeout=5) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith(kind)
            body = response.read()
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file (one PNG image inside)


def test_the_overview_gives_rate_and_length_samples_of_the_last_minutes(managed) -> None:
    """RabbitMQ's msg_rates_age/_incr and lengths_age/_incr: counters and queue lengths sampled by
    the broker once a second for five minutes, newest first (the web UI's charts)."""
    with pika.BlockingConnection(pika.URLParameters(managed.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("sampled")
        for _ in range(3):
            for _ in range(10):
                channel.basic_publish("", "sampled", b"m")
            connection.sleep(1.2)
    overview = call(managed, "GET", "/api/overview?msg_rates_age=60&msg_rates_incr=1&lengths_age=60&lengths_incr=1")[1]
    published = overview["message_stats"]["publish_details"]["samples"]
    assert published[0]["sample"] == 30 and published[-1]["sample"] < 30
    assert [sample["timestamp"] for sample in published] == sorted((s["timestamp"] for s in published), reverse=True)
    assert overview["queue_totals"]["messages_ready_details"]["samples"][0]["sample"] == 30
    plain = call(managed, "GET", "/api/overview?msg_rates_age=x&msg_rates_incr=5")[1]
    assert "samples" not in plain["message_stats"]["publish_details"] and "rate" in plain["message_stats"]["publish_details"]
