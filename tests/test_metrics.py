"""Prometheus metrics: rabbitmq_prometheus's names, read at scrape time, from a real broker."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from amqpbroker.testing import free_port
from tests.broker_process import PERSISTENT, BrokerProcess, channel_of


@pytest.fixture
def metered(start_broker) -> BrokerProcess:
    return start_broker(prometheus_port=free_port())


def scrape(broker: BrokerProcess, path: str = "/metrics") -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.prometheus_port}{path}", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_queue_depths_connections_and_message_counters(metered) -> None:
    with channel_of(metered) as ch:
        ch.queue_declare("orders", durable=True)
        ch.queue_declare("audit")
        ch.confirm_delivery()
        for index in range(5):
            ch.basic_publish("", "orders", f"o{index}".encode(), PERSISTENT)
        ch.basic_publish("", "audit", b"a")
        method, _, _ = ch.basic_get("orders")  # one unacked
        got_and_acked, _, _ = ch.basic_get("audit")
        ch.basic_ack(got_and_acked.delivery_tag)
        ch.basic_publish("", "nowhere", b"dropped")
        ch.queue_declare("orders", passive=True)  # a round trip: everything above was handled

        per_queue = scrape(metered, "/metrics/per-object")
        assert per_queue[("rabbitmq_queue_messages_ready", (("queue", "orders"), ("vhost", "/")))] == 4
        assert per_queue[("rabbitmq_queue_messages_unacked", (("queue", "orders"), ("vhost", "/")))] == 1
        assert per_queue[("rabbitmq_queue_messages", (("queue", "orders"), ("vhost", "/")))] == 5
        assert per_queue[("rabbitmq_queue_messages_ready", (("queue", "audit"), ("vhost", "/")))] == 0

        aggregated = scrape(metered)
        assert aggregated[("rabbitmq_queue_messages_ready", ())] == 4
        assert aggregated[("rabbitmq_queue_messages_unacked", ())] == 1
        assert aggregated[("rabbitmq_queues", ())] == 2
        assert aggregated[("rabbitmq_connections", ())] == 1
        assert aggregated[("rabbitmq_channels", ())] == 1
        assert aggregated[("rabbitmq_global_messages_received_total", ())] == 7
        assert aggregated[("rabbitmq_global_messages_delivered_total", ())] == 2
        assert aggregated[("rabbitmq_global_messages_acknowledged_total", ())] == 1
        assert aggregated[("rabbitmq_global_messages_confirmed_total", ())] == 7
        assert aggregated[("rabbitmq_global_messages_unroutable_dropped_total", ())] == 1
        assert aggregated[("amqpbroker_store_sync_seconds_count", ())] >= 1  # the persistent ones
    closed = scrape(metered)  # counters of closed channels are kept
    assert closed[("rabbitmq_connections", ())] == 0
    assert closed[("rabbitmq_global_messages_received_total", ())] == 7


def test_the_broker_stops_cleanly_with_the_metrics_endpoint_serving(tmp_path) -> None:
    process = BrokerProcess(str(tmp_path / "data"), prometheus_port=free_port())
    process.start(log_level="info", capture=True)
    try:
        assert ("rabbitmq_connections", ()) in scrape(process)
    finally:
        process.stop()
    assert process.process.returncode == 0
    log = process.output()
    assert "stopped" in log
    assert "Traceback" not in log and "ERROR" not in log


def test_the_disk_alarm_blocks_publishers_and_shows_in_metrics_and_the_api(start_broker) -> None:
    """Less free disk than ``disk_free_limit`` in the data directory: the disk alarm, as
    RabbitMQ's: publishers get connection.blocked, /metrics and the API say so."""
    import base64
    import json

    import pika

    management = free_port()
    broker = start_broker(prometheus_port=free_port(), management_port=management,
                          env={"AMQPBROKER_DISK_FREE_LIMIT": str(10 ** 18)})  # more than any disk
    deadline = time.monotonic() + 15  # the first look at the disk runs in a worker thread
    while (samples := scrape(broker))[("rabbitmq_alarms_free_disk_space_watermark", ())] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert samples[("amqpbroker_alarms_store_failed", ())] == 0
    request = urllib.request.Request(f"http://127.0.0.1:{management}/api/health/checks/alarms")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 503 and json.loads(info.value.read())["alarms"][0]["resource"] == "disk"
    blocked = []
    parameters = pika.URLParameters(broker.url)
    parameters.blocked_connection_timeout = 2  # a blocked connection is not read: pika drops it
    connection = pika.BlockingConnection(parameters)
    connection.add_on_connection_blocked_callback(lambda _connection, frame: blocked.append(frame))
    channel = connection.channel()
    channel.queue_declare("blocked-by-disk", auto_delete=True)
    channel.basic_publish("", "blocked-by-disk", b"x")
    deadline = time.monotonic() + 15
    while not blocked and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    assert blocked and blocked[0].method.reason == "low on disk"
    with pytest.raises(pika.exceptions.AMQPError):
        connection.sleep(10)  # pika gives up on the blocked connection after 2 s


def test_paged_out_messages_per_queue_and_connections_in_flow(start_broker) -> None:
    broker = start_broker(prometheus_port=free_port(), env={"AMQPBROKER_QUEUE_WINDOW_MESSAGES": "10"})
    with channel_of(broker) as ch:
        ch.queue_declare("deep")
        for index in range(30):
            ch.basic_publish("", "deep", b"x" * 100)
        ch.queue_declare("deep", passive=True)  # a round trip: the publishes were handled
        per_queue = scrape(broker, "/metrics/per-object")
        labels = (("queue", "deep"), ("vhost", "/"))
        assert per_queue[("rabbitmq_queue_messages_paged_out", labels)] == 20
        assert per_queue[("rabbitmq_queue_messages_paged_out_bytes", labels)] == 2000
        assert per_queue[("rabbitmq_queue_messages_ready", labels)] == 30
        assert scrape(broker)[("amqpbroker_connections_flow", ())] == 0  # no consumer: never held
