"""``python -m interop.bench.micro [BATCHES] [--distinct]``: the sans-IO core alone, in one process, no sockets.

Publish -> route -> enqueue -> deliver -> manual ack for 1 KB transient messages through the
broker's own connection machine (``tests.helpers.FakeClient``): each batch is 50 publishes fed as
one read, the deliveries' output joined as the transport's writer would, then one
``basic.ack multiple``. Prints the time per message. Under callgrind the instruction count per
message is repeatable where wall-clock time is not:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -m interop.bench.micro 100
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -m interop.bench.micro 400

(instructions per message = difference of the two totals / (300 * 50)). With ``--distinct``
every publish of a batch has a content header of its own (a ``message_id`` each), as publishers
that set message ids or timestamps send: the frame reader's reuse of a repeated header then
never applies.
"""

from __future__ import annotations

import sys
import time

from pamqp import body as pamqp_body
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from tests.helpers import FakeClient

BATCH = 50


def run(batches: int, distinct: bool = False) -> float:
    """Seconds per message over ``batches`` rounds of BATCH publishes, deliveries and one ack."""
    client = FakeClient()
    client.open_channel(1)
    client.open_channel(2)
    client.declare_queue("q")
    client.send(commands.Basic.Qos(prefetch_count=100), 2)
    client.send(commands.Basic.Consume(queue="q", consumer_tag="t"), 2)
    client.received()
    def one(message_id: str | None) -> bytes:
        properties = commands.Basic.Properties(delivery_mode=1, message_id=message_id)
        return (pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)
                + pamqp_frame.marshal(pamqp_header.ContentHeader(0, 1024, properties), 1)
                + pamqp_frame.marshal(pamqp_body.ContentBody(b"x" * 1024), 1))

    batch = b"".join(one(f"m{index:04d}") for index in range(BATCH)) if distinct else one(None) * BATCH
    connection, session = client.connection, client.session
    out = session.out
    tag = 0
    started = time.perf_counter()
    for _ in range(batches):
        connection.receive_data(batch)
        session.end_of_batch()
        b"".join(out)
        out.clear()
        session.out_bytes = 0
        tag += BATCH
        connection.receive_data(pamqp_frame.marshal(commands.Basic.Ack(delivery_tag=tag, multiple=True), 2))
        session.end_of_batch()
        out.clear()
        session.output_drained()
    return (time.perf_counter() - started) / (batches * BATCH)


if __name__ == "__main__":
    numbers = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    print(f"{run(int(numbers[0]) if numbers else 2000, '--distinct' in sys.argv) * 1e6:.2f} us/msg")
