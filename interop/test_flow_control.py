"""A publisher that is not capped in flight (as RabbitMQ's PerfTest) must not starve the consumer
of the queue it feeds: the broker reads the publisher only as fast as the consumer drains, as
RabbitMQ's credit flow does. Before flow control, a 1 KB consumer got ~1 message in 5 and a
16-byte one ~1 in 100 of what the publisher sent.

The load comes from the benchmark's generator (pre-encoded frames, a process per client), the
only client here fast enough to outrun a broker. The ratio asserted leaves a wide margin: on both
brokers the consumer keeps up with the publisher (within a few percent) when flow control works.
"""

from __future__ import annotations

import pytest

from interop.bench.runner import RunOptions, run_workload

UNCAPPED = 10**12  # in-flight messages: no cap in practice


@pytest.mark.parametrize("size", [1024, 16])
def test_an_uncapped_publisher_does_not_starve_a_manual_ack_consumer(amqp_url: str, size: int) -> None:
    opts = RunOptions(duration=3.0, warmup=1.5, body_size=size, max_inflight=UNCAPPED)
    result = run_workload(amqp_url, "throughput-ack", opts)
    published, consumed = result["published_rate"], result["consumed_rate"]
    assert consumed > 0, result
    assert consumed >= 0.5 * published, (
        f"{size} B: the consumer got {consumed:,.0f} msg/s while the publisher sent {published:,.0f} msg/s")
