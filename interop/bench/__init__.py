"""Benchmark for AMQP 0-9-1 brokers: ``python -m interop.bench --url URL [--reference]``.

A raw-socket asyncio/uvloop load generator (:mod:`.loadgen`) drives throughput (autoack and
manual ack) and publish-to-deliver latency workloads; :mod:`.runner` runs one workload in
separate client processes and :mod:`.__main__` prints a side-by-side table; :mod:`.durable`
adds publisher confirms and deep backlogs, and :mod:`.suite` runs the whole amqpbroker vs
RabbitMQ comparison (table, JSON, markdown, plots). See README.md.
"""
