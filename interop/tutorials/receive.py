#!/usr/bin/env python
"""Tutorial 1, "Hello World!": the consumer."""
import os
import sys

import pika

import _tutorial


def main():
    connection = pika.BlockingConnection(_tutorial.connection_parameters())
    channel = connection.channel()

    queue = _tutorial.name("hello")
    channel.queue_declare(queue=queue)
    limits = _tutorial.Limits(connection, channel)

    def callback(ch, method, properties, body):
        print(f" [x] Received {body}", flush=True)
        limits.handled_one()

    channel.basic_consume(queue=queue, on_message_callback=callback, auto_ack=True)

    print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
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
