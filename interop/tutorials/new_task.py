#!/usr/bin/env python
"""Tutorial 2, "Work Queues": hands a task (the command line) to the workers."""
import sys

import pika

import _tutorial

connection = pika.BlockingConnection(_tutorial.connection_parameters())
channel = connection.channel()

# A durable queue and persistent messages: tasks outlive a broker restart.
queue = _tutorial.name("task_queue")
channel.queue_declare(queue=queue, durable=True)

message = " ".join(sys.argv[1:]) or "Hello World!"
channel.basic_publish(
    exchange="",
    routing_key=queue,
    body=message,
    properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
)
print(f" [x] Sent {message}", flush=True)

connection.close()
