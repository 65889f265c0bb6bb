#!/usr/bin/env python
"""Tutorial 2, "Work Queues": a worker; every dot in a task is a second of work."""
import os
import sys
import time

import pika

import _tutorial


def main():
    connection = pika.BlockingConnection(_tutorial.connection_parameters())
    channel = connection.channel()

    queue = _tutorial.name("task_queue")
    channel.queue_declare(queue=queue, durable=True)
    limits = _tutorial.Limits(connection, channel)

    def callback(ch, method, properties, body):
        print(f" [x] Received {body.decode()}", flush=True)
        time.sleep(body.count(b".") * _tutorial.seconds_per_dot())
        print(" [x] Done", flush=True)
        # Ack only once the work is done: if this worker dies first, the
        # broker hands the task to another worker.
        ch.basic_ack(delivery_tag=method.delivery_tag)
        limits.handled_one()

    # Fair dispatch: no new task to a worker until it has acked the last one.
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=callback)

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
