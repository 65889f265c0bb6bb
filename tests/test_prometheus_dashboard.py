"""RabbitMQ's own "RabbitMQ-Overview" Grafana dashboard (rabbitmq-server,
deps/rabbitmq_prometheus/docker/grafana/dashboards/RabbitMQ-Overview.json) works unchanged: a real
Prometheus (Debian's) scrapes a broker under a little traffic, and every metric family the
dashboard queries (its current version and the 2020-2022 one many installations still run)
answers the dashboard's query shapes with data: joined with ``rabbitmq_identity_info`` on
``instance, job`` and filtered by its template variables ($rabbitmq_cluster, $namespace,
$endpoint), summed by ``rabbitmq_node``, counters through ``rate()``, the message-size histogram
through ``increase()``. ``.ci/run`` installs Prometheus; without it this test is skipped."""

from __future__ import annotations

import time

import pika
import pytest

from amqpbroker.testing import free_port
from tests.test_prometheus_server import PROMETHEUS, prometheus_scraping, query

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package "
                                                          "'prometheus'; .ci/run installs it)")

# the families the dashboard's panels query: gauges, then counters (used through rate())
GAUGES = (
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_connections", "rabbitmq_channels",
    "rabbitmq_queues", "rabbitmq_global_consumers", "rabbitmq_global_publishers", "rabbitmq_channel_consumers",
    "rabbitmq_resident_memory_limit_bytes", "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_disk_space_available_bytes", "rabbitmq_disk_space_available_limit_bytes", "rabbitmq_process_max_fds",
    "rabbitmq_process_open_fds", "rabbitmq_process_max_tcp_sockets", "rabbitmq_process_open_tcp_sockets",
    "rabbitmq_erlang_uptime_seconds", "rabbitmq_build_info", "rabbitmq_channel_messages_unconfirmed",
)
COUNTERS = (
    "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_received_confirm_total",
    "rabbitmq_global_messages_routed_total", "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_delivered_consume_auto_ack_total",
    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_delivered_get_auto_ack_total", "rabbitmq_global_messages_delivered_get_manual_ack_total",
    "rabbitmq_global_messages_get_empty_total", "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_acknowledged_total", "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_unroutable_dropped_total", "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_connections_opened_total", "rabbitmq_connections_closed_total", "rabbitmq_channels_opened_total",
    "rabbitmq_channels_closed_total", "rabbitmq_queues_declared_total", "rabbitmq_queues_created_total",
    "rabbitmq_queues_deleted_total",
    # the 2020-2022 dashboard's channel counters
    "rabbitmq_channel_messages_published_total", "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_queue_messages_published_total", "rabbitmq_channel_messages_unroutable_dropped_total",
    "rabbitmq_channel_messages_unroutable_returned_total", "rabbitmq_channel_messages_delivered_total",
    "rabbitmq_channel_messages_delivered_ack_total", "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_acked_total", "rabbitmq_channel_get_total", "rabbitmq_channel_get_ack_total",
    "rabbitmq_channel_get_empty_total",
)
CLUSTER = "amqpbroker@localhost"
IDENTITY = f'rabbitmq_identity_info{{rabbitmq_cluster="{CLUSTER}", namespace="", rabbitmq_endpoint="metrics"}}'
JOIN = f"* on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) {IDENTITY}"


def _traffic(url: str) -> None:
    """Some of everything the panels count: confirms, consumes with and without acks, gets
    (empty too), a redelivery, unroutable messages, queues created and deleted."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for queue in ("dash-work", "dash-auto", "dash-empty", "dash-gone"):
        channel.queue_declare(queue)
    channel.queue_delete("dash-gone")
    for size in (10, 2_000, 200_000):
        channel.basic_publish("", "dash-work", b"x" * size)
    channel.basic_publish("", "nowhere", b"dropped")
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish("", "nowhere", b"returned", mandatory=True)
    method = channel.basic_get("dash-work")[0]
    channel.basic_reject(method.delivery_tag, requeue=True)  # a redelivery next
    method = channel.basic_get("dash-work")[0]
    channel.basic_ack(method.delivery_tag)
    channel.basic_get("dash-work", auto_ack=True)
    channel.basic_get("dash-empty")
    consumer = connection.channel()
    consumer.basic_consume("dash-work", lambda ch, m, p, b: ch.basic_ack(m.delivery_tag))
    auto = connection.channel()
    auto.basic_consume("dash-auto", lambda ch, m, p, b: None, auto_ack=True)
    channel.basic_publish("", "dash-auto", b"auto")
    channel.basic_publish("", "dash-work", b"acked")
    connection.process_data_events(time_limit=0.5)
    connection.channel().close()
    connection.close()
    pika.BlockingConnection(pika.URLParameters(url)).close()


def test_every_family_of_rabbitmq_s_overview_dashboard_has_data(tmp_path, start_broker) -> None:
    broker = start_broker(prometheus_port=free_port())
    with prometheus_scraping(tmp_path, broker.prometheus_port, "/metrics", "rabbitmq") as prometheus_port:
        _wait_for(prometheus_port, "rabbitmq_identity_info")
        _traffic(broker.url)
        time.sleep(4)  # a few scrapes after the traffic, so that rate() sees it
        # the template variables' own queries
        assert [series["metric"]["rabbitmq_cluster"] for series in query(prometheus_port, "rabbitmq_identity_info")] \
            == [CLUSTER]
        endpoints = query(prometheus_port, f'rabbitmq_identity_info{{rabbitmq_cluster="{CLUSTER}", namespace="", '
                                           f'rabbitmq_endpoint!="memory-breakdown"}}')
        assert [series["metric"]["rabbitmq_endpoint"] for series in endpoints] == ["metrics"]
        empty = []
        for family in GAUGES:
            if not query(prometheus_port, f"sum({family} {JOIN}) by(rabbitmq_node)"):
                empty.append(family)
        for family in COUNTERS:
            result = query(prometheus_port, f"sum(rate({family}[1m]) {JOIN}) by(rabbitmq_node)")
            if not result or float(result[0]["value"][1]) <= 0:
                empty.append(family)
        sizes = query(prometheus_port, f'sum(increase(rabbitmq_message_size_bytes_bucket{{le="1000.0"}}[1m]) {JOIN}) '
                                       f'/ sum(increase(rabbitmq_message_size_bytes_bucket{{le="+Inf"}}[1m]) {JOIN})')
        if not sizes or not 0 < float(sizes[0]["value"][1]) < 1:
            empty.append("rabbitmq_message_size_bytes")
        assert empty == [], f"no data (or no increase) for {empty}"
        memory = query(prometheus_port, f"(rabbitmq_resident_memory_limit_bytes {JOIN}) - "
                                        f"(rabbitmq_process_resident_memory_bytes {JOIN})")
        assert memory and float(memory[0]["value"][1]) > 0
        node = query(prometheus_port, f"rabbitmq_erlang_uptime_seconds * on(instance, job) group_left(rabbitmq_version, "
                                      f"erlang_version) rabbitmq_build_info {JOIN}")
        assert node and node[0]["metric"]["rabbitmq_node"] == CLUSTER


def _wait_for(port: int, expression: str) -> None:
    deadline = time.monotonic() + 45  # the first sample takes a few seconds to appear
    while time.monotonic() < deadline:
        try:
            if query(port, expression):
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail("Prometheus never had a sample")
