"""A Celery app to test with amqpbroker's pytest fixture (see test_tasks.py)."""

import os

from celery import Celery

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
             backend="rpc://")


@app.task
def add(x, y):
    return x + y
