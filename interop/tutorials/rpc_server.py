#!/usr/bin/env python
"""Tutorial 6, "RPC": the server; answers fib(n) requests from rpc_queue."""
import os
import sys

import pika

import _tutorial


def fib(n):
    # Deliberately the slow recursive version, as in the tutorial.
    if n == 0:
        return 0
    if n == 1:
        return 1
    return fib(n - 1) + fib(n - 2)


def main():
    connection = pika.BlockingConnection(_tutorial.connection_parameters())
    channel = connection.channel()

    queue = _tutorial.name("rpc_queue")
    channel.queue_declare(queue=queue)
    limits = _tutorial.Limits(connection, channel)

    def on_request(ch, method, props, body):
        n = int(body)
        print(f" [.] fib({n})", flush=True)
        response = fib(n)

        # Answer on the queue the client named, tagged with its correlation id.
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=str(response),
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)
        limits.handled_one()

    # With several servers, spread requests evenly.
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=on_request)

    print(" [x] Awaiting RPC requests", flush=True)
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
