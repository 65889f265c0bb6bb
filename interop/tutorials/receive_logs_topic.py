#!/usr/bin/env python
"""Tutorial 5, "Topics": prints the log messages matching the binding keys given.

In a binding key, "*" stands for exactly one dot-separated word and "#" for
zero or more words.
"""
import os
import sys

import pika

import _tutorial


def main():
    binding_keys = sys.argv[1:]
    if not binding_keys:
        sys.stderr.write(f"Usage: {sys.argv[0]} [binding_key]...\n")
        sys.exit(1)

    connection = pika.BlockingConnection(_tutorial.connection_parameters())
    channel = connection.channel()

    exchange = _tutorial.name("topic_logs")
    channel.exchange_declare(exchange=exchange, exchange_type="topic")

    result = channel.queue_declare(queue="", exclusive=True)
    queue_name = result.method.queue

    for binding_key in binding_keys:
        channel.queue_bind(exchange=exchange, queue=queue_name, routing_key=binding_key)
    limits = _tutorial.Limits(connection, channel)

    def callback(ch, method, properties, body):
        print(f" [x] {method.routing_key}:{body}", flush=True)
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
