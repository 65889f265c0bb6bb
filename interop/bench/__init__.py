"""Benchmark for AMQP 0-9-1 brokers: ``python -m interop.bench --url URL [--reference]``.

A raw-socket asyncio/uvloop load generator (:mod:`.loadgen`) drives throughput (autoack and
manual ack) and publish-to-deliver latency workloads; :mod:`.runner` runs one workload in
separate client processes and :mod:`.__main__` prints a side-by-side table. See README.md.
"""
