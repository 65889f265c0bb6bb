"""The task-queue figures (broker/backlog.py) through real clients: ages of the oldest ready and
unacked messages, the redelivery histogram, what the delivery limit and consumer timeouts did,
per consumer its unacked deliveries; in the API and /metrics/per-object."""

from __future__ import annotations

import time
import urllib.request

import pika

from amqpbroker.testing import free_port
from tests.test_management import call


def test_the_figures_show_how_a_task_queue_is_doing(start_broker) -> None:
    broker = start_broker(management_port=free_port(), prometheus_port=free_port(),
                          env={"AMQPBROKER_CONSUMER_TIMEOUT": "1500"})
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("tasks", arguments={"x-delivery-limit": 1, "x-dead-letter-exchange": "",
                                                  "x-dead-letter-routing-key": "tasks.dead"})
        channel.queue_declare("tasks.dead")
        channel.confirm_delivery()
        for body in (b"poison", b"waits", b"held"):
            channel.basic_publish("", "tasks", body)
        method, _, body = channel.basic_get("tasks")  # poison: back once, then dead-lettered
        channel.basic_reject(method.delivery_tag, requeue=True)
        view = call(broker, "GET", "/api/queues/%2F/tasks")[1]
        assert view["messages_redelivered"] == {"1": 1, "2-5": 0, "6+": 0}
        method, _, _ = channel.basic_get("tasks")
        channel.basic_reject(method.delivery_tag, requeue=True)
        assert channel.queue_declare("tasks.dead", passive=True).method.message_count == 1
        assert call(broker, "GET", "/api/queues/%2F/tasks")[1]["messages_redelivered"] == {"1": 0, "2-5": 0, "6+": 0}

        worker = pika.BlockingConnection(pika.URLParameters(broker.url))
        try:
            worker_channel = worker.channel()
            worker_channel.basic_qos(prefetch_count=1)
            worker_channel.basic_consume("tasks", lambda *args: None, consumer_tag="slow-worker")
            worker.sleep(1.2)  # (process_data_events returns once the delivery came)
            view = call(broker, "GET", "/api/queues/%2F/tasks")[1]
            assert view["messages_ready"] == 1 and view["messages_unacknowledged"] == 1
            assert view["oldest_ready_age"] >= 1.0 and 0.5 <= view["oldest_unacked_age"] < 30
            assert view["messages_dead_lettered_by_delivery_limit"] == 1
            [consumer] = [each for each in call(broker, "GET", "/api/consumers")[1]
                          if each["consumer_tag"] == "slow-worker"]
            assert consumer["messages_unacknowledged"] == 1 and consumer["oldest_unacked_age"] >= 0.5
            with urllib.request.urlopen(f"http://127.0.0.1:{broker.prometheus_port}/metrics/per-object",
                                        timeout=5) as page:
                text = page.read().decode()
            assert 'amqpbroker_queue_messages_dead_lettered_by_delivery_limit_total{queue="tasks",vhost="/"} 1.0' in text
            assert 'amqpbroker_queue_oldest_unacked_age_seconds{queue="tasks",vhost="/"}' in text
            assert 'amqpbroker_queue_oldest_ready_age_seconds{queue="tasks",vhost="/"}' in text
            deadline = time.monotonic() + 10  # the consumer timeout (1.5 s) cancels the stuck worker
            while call(broker, "GET", "/api/queues/%2F/tasks")[1]["consumer_timeouts"] == 0:
                assert time.monotonic() < deadline
                worker.process_data_events(time_limit=0.3)
        finally:
            worker.close()
