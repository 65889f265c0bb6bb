#!/usr/bin/env python
"""Tutorial 1, "Hello World!": the producer."""
import pika

import _tutorial

connection = pika.BlockingConnection(_tutorial.connection_parameters())
channel = connection.channel()

# Declaring is idempotent: whichever of send.py and receive.py runs first
# creates the queue.
queue = _tutorial.name("hello")
channel.queue_declare(queue=queue)

# The default exchange ('') routes a message to the queue named by its routing key.
channel.basic_publish(exchange="", routing_key=queue, body="Hello World!")
print(" [x] Sent 'Hello World!'", flush=True)

connection.close()
