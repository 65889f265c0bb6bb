#!/usr/bin/env python
"""Tutorial 5, "Topics": sends a log message under a "<facility>.<severity>" key."""
import sys

import pika

import _tutorial

connection = pika.BlockingConnection(_tutorial.connection_parameters())
channel = connection.channel()

exchange = _tutorial.name("topic_logs")
channel.exchange_declare(exchange=exchange, exchange_type="topic")

routing_key = sys.argv[1] if len(sys.argv) > 1 else "anonymous.info"
message = " ".join(sys.argv[2:]) or "Hello World!"
channel.basic_publish(exchange=exchange, routing_key=routing_key, body=message)
print(f" [x] Sent {routing_key}:{message}", flush=True)

connection.close()
