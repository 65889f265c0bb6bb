#!/usr/bin/env python
"""Tutorial 3, "Publish/Subscribe": prints every log message broadcast."""
import os
import sys

import pika

import _tutorial


def main():
    connection = pika.BlockingConnection(_tutorial.connection_parameters())
    channel = connection.channel()

    exchange = _tutorial.name("logs")
    channel.exchange_declare(exchange=exchange, exchange_type="fanout")

    # An empty name lets the broker pick one (amq.gen-...); exclusive means
    # the queue goes away with this connection.
    result = channel.queue_declare(queue="", exclusive=True)
    queue_name = result.method.queue
    channel.queue_bind(exchange=exchange, queue=queue_name)
    limits = _tutorial.Limits(connection, channel)

    def callback(ch, method, properties, body):
        print(f" [x] {body}", flush=True)
        limits.handled_one()

    channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)

    print(" [*] Waiting for logs. To exit press CTRL+C", flush=True)
    channel.start_consuming()
    connection.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("Interrupted", flush=True)
        try:
            sys.exit(0)
        except SystemExit:
            os._exit(0)
