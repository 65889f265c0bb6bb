#!/usr/bin/env python
"""Tutorial 3, "Publish/Subscribe": broadcasts one log message."""
import sys

import pika

import _tutorial

connection = pika.BlockingConnection(_tutorial.connection_parameters())
channel = connection.channel()

# A fanout exchange copies every message to every queue bound to it; with no
# queue bound yet, the message is simply dropped.
exchange = _tutorial.name("logs")
channel.exchange_declare(exchange=exchange, exchange_type="fanout")

message = " ".join(sys.argv[1:]) or "info: Hello World!"
channel.basic_publish(exchange=exchange, routing_key="", body=message)
print(f" [x] Sent {message}", flush=True)

connection.close()
