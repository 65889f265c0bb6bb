#!/usr/bin/env python
"""Tutorial 4, "Routing": sends a log message with its severity as routing key."""
import sys

import pika

import _tutorial

connection = pika.BlockingConnection(_tutorial.connection_parameters())
channel = connection.channel()

exchange = _tutorial.name("direct_logs")
channel.exchange_declare(exchange=exchange, exchange_type="direct")

severity = sys.argv[1] if len(sys.argv) > 1 else "info"
message = " ".join(sys.argv[2:]) or "Hello World!"
channel.basic_publish(exchange=exchange, routing_key=severity, body=message)
print(f" [x] Sent {severity}:{message}", flush=True)

connection.close()
