"""Prometheus metrics, read from the broker at scrape time (nothing is counted through the
client library on the hot path).

Names follow rabbitmq_prometheus, so RabbitMQ's Grafana dashboards and alerts work: the default
collector gives the aggregated families (``rabbitmq_queue_messages_ready`` summed over queues,
...), ``per_object=True`` gives them per queue with ``vhost`` / ``queue`` labels, as
rabbitmq_prometheus's ``/metrics/per-object``. What is ours is named ``amqpbroker_*``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from amqpbroker import __version__
from amqpbroker.broker.backlog import UnackedAges, oldest_ready_age, redelivery_histogram
from amqpbroker.broker.broker import NODE_NAME, Broker
from amqpbroker.broker.channel import MESSAGE_SIZE_BOUNDS
from amqpbroker.broker.stream import StreamQueue


def _package_version(name: str) -> str:
    try:
        return _distribution_version(name)
    except PackageNotFoundError:
        return ""

__all__ = ["BrokerCollector"]

_CLIENT_VERSION = _package_version("prometheus-client")

_QUEUE_GAUGES = (
    ("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers",
     lambda queue: queue.message_count),
    ("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but not yet acknowledged",
     lambda queue: queue.unacked_count),
    ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages (a stream's: the messages it holds)",
     lambda queue: queue.messages_total),
    ("rabbitmq_queue_consumers", "Consumers on a queue", lambda queue: len(queue.consumers)),
    ("rabbitmq_queue_messages_paged_out", "Ready messages paged out of memory to the data dir",
     lambda queue: queue.paged),
    ("rabbitmq_queue_messages_paged_out_bytes", "Body bytes of the messages paged out to the data dir",
     lambda queue: queue.paged_bytes),
)

def _routed(totals: dict[str, Any]) -> int:
    """Published messages that reached at least one queue."""
    return totals["received"] - totals["unroutable_dropped"] - totals["unroutable_returned"]


def _consumed_with_acks(totals: dict[str, Any]) -> int:
    """Deliveries to consumers that acknowledge (all deliveries but autoack ones and gets)."""
    return totals["delivered"] - totals["consume_auto_ack"] - totals["get_auto_ack"] - totals["get_manual_ack"]


# (name without _total, help, the MessageTotals key or a function of the totals); RabbitMQ 3.13+'s
# global counters, then the channel counters of 3.8-3.12 (the same figures summed over channels),
# which older copies of RabbitMQ's dashboards query
_COUNTERS = (
    ("rabbitmq_global_messages_received", "Messages received from publishers", "received"),
    ("rabbitmq_global_messages_received_confirm", "Messages received from publishers on channels in "
     "confirm mode", "received_confirm"),
    ("rabbitmq_global_messages_routed", "Messages routed to at least one queue",
     _routed),
    ("rabbitmq_global_messages_delivered", "Messages delivered to consumers (basic.deliver and basic.get-ok)",
     "delivered"),
    ("rabbitmq_global_messages_delivered_consume_auto_ack", "Messages delivered to consumers without "
     "acknowledgements", "consume_auto_ack"),
    ("rabbitmq_global_messages_delivered_consume_manual_ack", "Messages delivered to consumers that acknowledge",
     _consumed_with_acks),
    ("rabbitmq_global_messages_delivered_get_auto_ack", "Messages fetched with basic.get without "
     "acknowledgement", "get_auto_ack"),
    ("rabbitmq_global_messages_delivered_get_manual_ack", "Messages fetched with basic.get to acknowledge",
     "get_manual_ack"),
    ("rabbitmq_global_messages_get_empty", "basic.get answered with get-empty", "get_empty"),
    ("rabbitmq_global_messages_redelivered", "Messages delivered again (requeued before)", "redelivered"),
    ("rabbitmq_global_messages_acknowledged", "Messages acknowledged by consumers", "acknowledged"),
    ("rabbitmq_global_messages_confirmed", "Messages confirmed to publishers", "confirmed"),
    ("rabbitmq_global_messages_unroutable_dropped", "Messages published as non-mandatory into an exchange "
     "and dropped as unroutable", "unroutable_dropped"),
    ("rabbitmq_global_messages_unroutable_returned", "Messages published as mandatory into an exchange "
     "and returned to the publisher as unroutable", "unroutable_returned"),
    ("rabbitmq_connections_opened", "Total number of connections opened", "connections_opened"),
    ("rabbitmq_connections_closed", "Total number of connections closed or terminated", "connections_closed"),
    ("rabbitmq_channels_opened", "Total number of channels opened", "channels_opened"),
    ("rabbitmq_channels_closed", "Total number of channels closed", "channels_closed"),
    ("rabbitmq_queues_declared", "Total number of queues declared", "queues_declared"),
    ("rabbitmq_queues_created", "Total number of queues created", "queues_created"),
    ("rabbitmq_queues_deleted", "Total number of queues deleted", "queues_deleted"),
    ("rabbitmq_channel_messages_published", "Messages published into an exchange (the channels' sum)",
     "received"),
    ("rabbitmq_channel_messages_confirmed", "Messages confirmed to publishers (the channels' sum)", "confirmed"),
    ("rabbitmq_channel_messages_unroutable_dropped", "Messages dropped as unroutable (the channels' sum)",
     "unroutable_dropped"),
    ("rabbitmq_channel_messages_unroutable_returned", "Messages returned as unroutable (the channels' sum)",
     "unroutable_returned"),
    ("rabbitmq_queue_messages_published", "Messages routed to queues (the channels' sum)",
     _routed),
    ("rabbitmq_channel_messages_delivered_ack", "Messages delivered to consumers that acknowledge (the "
     "channels' sum)", _consumed_with_acks),
    ("rabbitmq_channel_messages_delivered", "Messages delivered to consumers without acknowledgements (the "
     "channels' sum)", "consume_auto_ack"),
    ("rabbitmq_channel_messages_redelivered", "Messages redelivered (the channels' sum)", "redelivered"),
    ("rabbitmq_channel_messages_acked", "Messages acknowledged by consumers (the channels' sum)", "acknowledged"),
    ("rabbitmq_channel_get_ack", "Messages fetched with basic.get to acknowledge (the channels' sum)",
     "get_manual_ack"),
    ("rabbitmq_channel_get", "Messages fetched with basic.get without acknowledgement (the channels' sum)",
     "get_auto_ack"),
    ("rabbitmq_channel_get_empty", "basic.get answered with get-empty (the channels' sum)", "get_empty"),
)


class BrokerCollector(Collector):
    def __init__(self, broker: Broker, *, per_object: bool = False, store_writer: Any = None) -> None:
        self.broker = broker
        self.per_object = per_object
        self.store_writer = store_writer

    def collect(self) -> Iterator[Metric]:
        broker = self.broker
        sessions = list(broker.sessions)
        queues = [(vhost.name, queue) for vhost in broker.vhosts.values() for queue in vhost.queues.values()]
        yield _gauge("rabbitmq_identity_info", "RabbitMQ node & cluster identity info",
                     1, rabbitmq_node=NODE_NAME, rabbitmq_cluster=broker.cluster_name,
                     rabbitmq_endpoint="per-object" if self.per_object else "metrics")
        yield _gauge("rabbitmq_build_info", "RabbitMQ & Erlang/OTP version info (amqpbroker's version; "
                     "Python's as the runtime)", 1, rabbitmq_version=__version__, product="amqpbroker",
                     erlang_version="", python_version=platform.python_version(),
                     prometheus_client_version=_CLIENT_VERSION, prometheus_plugin_version=__version__)
        yield from _node_families(broker)
        yield _gauge("rabbitmq_connections", "Connections currently open", len(sessions))
        yield _gauge("rabbitmq_channels", "Channels currently open",
                     sum(len(session.channels) for session in sessions))
        consumers = sum(len(channel.consumers) for session in sessions for channel in session.channels.values())
        yield _gauge("rabbitmq_consumers", "Consumers currently connected", consumers)
        yield _gauge("rabbitmq_global_consumers", "Consumers currently connected", consumers)
        yield _gauge("rabbitmq_channel_consumers", "Consumers on all channels", consumers)
        yield _gauge("rabbitmq_global_publishers", "Channels that have published messages",
                     sum(channel.published > 0 for session in sessions for channel in session.channels.values()))
        yield _gauge("rabbitmq_channel_messages_unconfirmed", "Published messages not confirmed yet",
                     sum(channel.publish_seq - channel.confirmed_through for session in sessions
                         for channel in session.channels.values() if channel.confirm))
        yield _gauge("rabbitmq_queues", "Queues available", len(queues))
        yield _gauge("amqpbroker_connections_flow", "Connections read less lately because the queues they "
                     "publish into are behind their consumers (state 'flow')",
                     sum(session.flow.in_flow for session in sessions))
        yield _gauge("rabbitmq_alarms_memory_used_watermark",
                     "is 1 if VM memory watermark alarm is in effect", int(broker.memory_alarm))
        yield _gauge("rabbitmq_alarms_free_disk_space_watermark",
                     "is 1 if free disk space watermark alarm is in effect", int(broker.disk_alarm))
        yield _gauge("amqpbroker_alarms_store_failed",
                     "is 1 while the store refuses writes or syncs (publishers blocked, retried every second)",
                     int(broker.store_alarm))
        for name, text, value in _QUEUE_GAUGES:
            if self.per_object:
                family = GaugeMetricFamily(name, text, labels=("vhost", "queue"))
                for vhost, queue in queues:
                    family.add_metric((vhost, queue.name), value(queue))
                yield family
            else:
                yield _gauge(name, text, sum(value(queue) for _, queue in queues))
        yield from _stream_families([(vhost, queue) for vhost, queue in queues if isinstance(queue, StreamQueue)],
                                    self.per_object)
        if self.per_object:
            yield from _task_queue_families(broker, queues)
            yield from _queueing_families(queues)
        else:
            for name, text, attribute in _TASK_COUNTERS:
                yield CounterMetricFamily(name, text, value=sum(getattr(queue.counters, attribute) for _, queue in queues))
        yield from _delayed_families(broker, self.per_object)
        yield CounterMetricFamily("amqpbroker_consumer_timeouts", "Consumers cancelled or channels closed for a "
                                  "delivery unacknowledged past its consumer timeout",
                                  value=broker.consumer_timeouts.timed_out)
        totals = broker.totals.including(sessions)
        for name, text, key in _COUNTERS:
            yield CounterMetricFamily(name, text, value=key(totals) if callable(key) else totals[key])
        yield _message_sizes(totals)
        if self.store_writer is not None:
            buckets, total, _ = self.store_writer.sync_histogram()
            yield HistogramMetricFamily("amqpbroker_store_sync_seconds",
                                        "Time a WAL sync took (publisher confirms wait for it)",
                                        buckets=buckets, sum_value=total)


_STREAM_GAUGES = (
    ("amqpbroker_stream_bytes", "Body bytes a stream holds", lambda log: log.nbytes),
    ("amqpbroker_stream_segments", "Segments a stream holds (retention drops whole ones)", lambda log: log.segment_count),
    ("amqpbroker_stream_first_offset", "Oldest offset a stream holds", lambda log: log.first),
    ("amqpbroker_stream_next_offset", "Offset the next message appended to a stream gets", lambda log: log.next),
)


def _stream_families(streams: list[tuple[str, Any]], per_object: bool) -> Iterator[Metric]:
    """Per stream (labels vhost, queue) on the per-object endpoint; bytes and segments summed otherwise."""
    for name, text, value in _STREAM_GAUGES:
        if per_object:
            family = GaugeMetricFamily(name, text, labels=("vhost", "queue"))
            for vhost, stream in streams:
                family.add_metric((vhost, stream.name), value(stream.log))
            yield family
        elif not name.endswith("_offset"):
            yield _gauge(name, text, sum(value(stream.log) for _, stream in streams))


_QUEUEING = (
    ("amqpbroker_queue_arrival_rate", "Arrival rate λ over the sampling window, messages/s", "arrival_rate"),
    ("amqpbroker_queue_service_rate", "Service rate μ while busy, messages/s", "service_rate"),
    ("amqpbroker_queue_service_rate_per_consumer", "Service rate per consumer, messages/s",
     "service_rate_per_consumer"),
    ("amqpbroker_queue_utilisation", "Utilisation ρ = λ/μ", "utilisation"),
    ("amqpbroker_queue_mean_messages", "Mean messages in the queue (ready + unacked), L", "mean_in_system"),
)


def _queueing_families(queues: list[tuple[str, Any]]) -> Iterator[Metric]:
    """The queueing figures per queue; a figure that is not known yet is left out."""
    figures = [(vhost, queue.name, queue.sampler.figures(len(queue.consumers))) for vhost, queue in queues]
    for name, text, key in _QUEUEING:
        family = GaugeMetricFamily(name, text, labels=("vhost", "queue"))
        for vhost, queue, values in figures:
            if values is not None and getattr(values, key) is not None:
                family.add_metric((vhost, queue), getattr(values, key))
        yield family
    wait = GaugeMetricFamily("amqpbroker_queue_wait_seconds", "Expected time in the queue W: measured "
                             "(Little's law, L/λ) and the M/M/1 estimate 1/(μ−λ)",
                             labels=("vhost", "queue", "estimate"))
    for vhost, queue, values in figures:
        if values is not None:
            for estimate, value in (("little", values.wait_measured), ("mm1", values.wait_mm1)):
                if value is not None:
                    wait.add_metric((vhost, queue, estimate), value)
    yield wait


_TASK_COUNTERS = (
    ("amqpbroker_queue_messages_dropped_by_delivery_limit", "Messages dropped (no dead-letter exchange) for being "
     "returned more times than their queue's x-delivery-limit", "dropped_by_delivery_limit"),
    ("amqpbroker_queue_messages_dead_lettered_by_delivery_limit", "Messages dead-lettered for being returned more "
     "times than their queue's x-delivery-limit", "dead_lettered_by_delivery_limit"),
    ("amqpbroker_queue_consumer_timeouts", "Consumers cancelled or channels closed for a delivery of this queue "
     "unacknowledged past its consumer timeout", "consumer_timeouts"),
)


def _task_queue_families(broker: Broker, queues: list[tuple[str, Any]]) -> Iterator[Metric]:
    """Per queue (docs/operations.md, task queues): what the delivery limit and consumer timeouts
    did, how often the messages in it came back, how old its oldest ready and unacked ones are."""
    for name, text, attribute in _TASK_COUNTERS:
        family = CounterMetricFamily(name, text, labels=("vhost", "queue"))
        for vhost, queue in queues:
            family.add_metric((vhost, queue.name), getattr(queue.counters, attribute))
        yield family
    redelivered = GaugeMetricFamily("amqpbroker_queue_messages_redelivered", "Messages in the queue that came back "
                                    "this many times", labels=("vhost", "queue", "times"))
    for vhost, queue in queues:
        if queue.delivery_counts:
            for times, count in redelivery_histogram(queue).items():
                redelivered.add_metric((vhost, queue.name, times), count)
    yield redelivered
    ages = UnackedAges(broker)
    ready = GaugeMetricFamily("amqpbroker_queue_oldest_ready_age_seconds",
                              "How long the first ready message in memory has waited", labels=("vhost", "queue"))
    unacked = GaugeMetricFamily("amqpbroker_queue_oldest_unacked_age_seconds",
                                "How long ago the oldest unacknowledged delivery was sent", labels=("vhost", "queue"))
    for vhost, queue in queues:
        age = oldest_ready_age(queue, queue.host.clock())
        if age is not None:
            ready.add_metric((vhost, queue.name), age)
        age = ages.of_queue(queue)
        if age is not None:
            unacked.add_metric((vhost, queue.name), age)
    yield ready
    yield unacked


def _delayed_families(broker: Broker, per_object: bool) -> Iterator[Metric]:
    """What x-delayed-message exchanges hold: how many (per exchange on /metrics/per-object), and
    per vhost when the next one is due."""
    name, text = "amqpbroker_exchange_messages_delayed", "Messages held by x-delayed-message exchanges until due"
    if per_object:
        family = GaugeMetricFamily(name, text, labels=("vhost", "exchange"))
        for vhost in broker.vhosts.values():
            for exchange, held in vhost.delayed.counts.items():
                family.add_metric((vhost.name, exchange), held)
        yield family
    else:
        yield _gauge(name, text, sum(len(vhost.delayed) for vhost in broker.vhosts.values()))
    due = GaugeMetricFamily("amqpbroker_delayed_next_due_timestamp_seconds",
                            "When the next held delayed message is due (Unix time), per vhost", labels=("vhost",))
    for vhost in broker.vhosts.values():
        if vhost.delayed.next_due is not None:
            due.add_metric((vhost.name,), vhost.delayed.next_due)
    yield due


def _gauge(name: str, text: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=tuple(labels))
    family.add_metric(tuple(labels.values()), value)
    return family


def _node_families(broker: Broker) -> Iterator[Metric]:
    """The process's own figures, as RabbitMQ names them (sampled once a second by the server);
    one that is not known (no /proc) is left out."""
    node = broker.node
    for name, text, value in (
            ("rabbitmq_process_resident_memory_bytes", "Memory used in bytes (the process's resident set)",
             node.resident_bytes),
            ("rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes", node.memory_limit),
            ("rabbitmq_disk_space_available_bytes", "Disk space available in bytes (the data directory's "
             "file system)", node.disk_free),
            ("rabbitmq_disk_space_available_limit_bytes", "Free disk space low watermark in bytes",
             node.disk_free_limit),
            ("rabbitmq_process_open_fds", "Open file descriptors", node.open_fds),
            ("rabbitmq_process_max_fds", "Open file descriptors limit", node.max_fds),
            ("rabbitmq_process_open_tcp_sockets", "Open TCP sockets (AMQP connections)", len(broker.sessions)),
            ("rabbitmq_process_max_tcp_sockets", "Open TCP sockets limit (the file descriptor limit)",
             node.max_fds),
            ("rabbitmq_erlang_uptime_seconds", "Node uptime (the broker process's)", node.uptime())):
        if value is not None:
            yield _gauge(name, text, value)


def _message_sizes(totals: dict[str, Any]) -> Metric:
    """Published messages by body size, as rabbitmq_prometheus's rabbitmq_message_size_bytes."""
    buckets, running = [], 0
    for bound, count in zip((*map(float, MESSAGE_SIZE_BOUNDS), float("inf")), totals["size_counts"]):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else _le(bound), running))
    return HistogramMetricFamily("rabbitmq_message_size_bytes", "Size of messages received from publishers",
                                 buckets=buckets, sum_value=totals["received_bytes"])


def _le(bound: float) -> str:
    return floatToGoString(bound)
