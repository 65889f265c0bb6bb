#!/usr/bin/env python
"""Tutorial 4, "Routing": prints the log messages of the severities given."""
import os
import sys

import pika

import _tutorial


def main():
    severities = sys.argv[1:]
    if not severities:
        sys.stderr.write(f"Usage: {sys.argv[0]} [info] [warning] [error]\n")
        sys.exit(1)

    connection = pika.BlockingConnection(_tutorial.connection_parameters())
    channel = connection.channel()

    exchange = _tutorial.name("direct_logs")
    channel.exchange_declare(exchange=exchange, exchange_type="direct")

    result = channel.queue_declare(queue="", exclusive=True)
    queue_name = result.method.queue

    # One binding per severity: a direct exchange delivers a message to the
    # queues bound with exactly its routing key.
    for severity in severities:
        channel.queue_bind(exchange=exchange, queue=queue_name, routing_key=severity)
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
