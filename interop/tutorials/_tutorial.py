"""Knobs shared by the tutorial programs in this folder.

The programs themselves follow the six RabbitMQ "getting started" tutorials for
Python (pika).  The only additions are the environment variables below, which
let the interop tests run them against any broker, side by side with other
tests, and have the long-running receivers stop on their own:

``AMQP_URL``
    broker URL, default ``amqp://guest:guest@localhost:5672/``
``TUTORIAL_PREFIX``
    prepended to every exchange and queue name the tutorials use
    (``hello``, ``task_queue``, ``logs``, ``direct_logs``, ``topic_logs``,
    ``rpc_queue``), default empty
``TUTORIAL_MAX_MESSAGES``
    receivers, workers and the RPC server stop after handling this many
    messages (0, the default, means never)
``TUTORIAL_TIMEOUT``
    they also stop after this many seconds (0, the default, means never)
``TUTORIAL_SECONDS_PER_DOT``
    how long worker.py "works" per dot in a task, default 1
"""

from __future__ import annotations

import os
import sys

import pika

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def connection_parameters() -> pika.URLParameters:
    return pika.URLParameters(os.environ.get("AMQP_URL") or DEFAULT_URL)


def name(base: str) -> str:
    """The tutorial's exchange or queue name, with the test prefix in front."""
    return os.environ.get("TUTORIAL_PREFIX", "") + base


def seconds_per_dot() -> float:
    return float(os.environ.get("TUTORIAL_SECONDS_PER_DOT") or 1)


class Limits:
    """Stops ``channel.start_consuming()`` after N messages or T seconds."""

    def __init__(self, connection, channel) -> None:
        self.channel = channel
        self.remaining = int(os.environ.get("TUTORIAL_MAX_MESSAGES") or 0)
        timeout = float(os.environ.get("TUTORIAL_TIMEOUT") or 0)
        if timeout > 0:
            connection.call_later(timeout, self._timed_out)

    def _timed_out(self) -> None:
        print("timeout: stopping", file=sys.stderr, flush=True)
        self.channel.stop_consuming()

    def handled_one(self) -> None:
        """Call once a message is dealt with (after its ack, if any)."""
        if self.remaining > 0:
            self.remaining -= 1
            if self.remaining == 0:
                self.channel.stop_consuming()
