#!/usr/bin/env python
"""Tutorial 6, "RPC": the client; asks the server for fib(n) and waits for it.

Usage: rpc_client.py [n]   (n defaults to 30, as in the tutorial)
"""
import os
import sys
import time
import uuid

import pika

import _tutorial


class FibonacciRpcClient:
    def __init__(self):
        self.connection = pika.BlockingConnection(_tutorial.connection_parameters())
        self.channel = self.connection.channel()

        # A private, server-named queue for the replies to this client.
        result = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = result.method.queue

        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self.on_response,
            auto_ack=True,
        )

        self.response = None
        self.corr_id = None

    def on_response(self, ch, method, props, body):
        # Replies to earlier (abandoned) calls are ignored.
        if self.corr_id == props.correlation_id:
            self.response = body

    def call(self, n, timeout=None):
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange="",
            routing_key=_tutorial.name("rpc_queue"),
            properties=pika.BasicProperties(
                reply_to=self.callback_queue,
                correlation_id=self.corr_id,
            ),
            body=str(n),
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.response is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no reply to fib({n}) within {timeout} s")
            self.connection.process_data_events(time_limit=0.2)
        return int(self.response)

    def close(self):
        self.connection.close()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    timeout = float(os.environ.get("TUTORIAL_TIMEOUT") or 0) or None

    fibonacci_rpc = FibonacciRpcClient()
    print(f" [x] Requesting fib({n})", flush=True)
    response = fibonacci_rpc.call(n, timeout=timeout)
    print(f" [.] Got {response}", flush=True)
    fibonacci_rpc.close()


if __name__ == "__main__":
    main()
