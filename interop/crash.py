"""Crash safety: mixed load, SIGKILL, restart on the same data dir, check what came back.

    .venv/bin/python -m interop.crash --seeds 20          # seeds 0..19
    .venv/bin/python -m interop.crash --seed 7 --kills 2 -v

Per seed (``random.Random(seed)`` drives every choice; thread timing does not repeat exactly):

1. start amqpbroker (``python -m amqpbroker``) on a free loopback port with its own data dir, a
   random paging window (``AMQPBROKER_QUEUE_WINDOW_MESSAGES``) and its stderr in a log file;
2. declare the fixed topology (durable queues ``crash.q0..q2`` with arguments, fanout exchange
   ``crash.fan`` bound to q0 and q1), then run a load for a random 1-4 s: publishers (confirm mode,
   ``mandatory``, mostly persistent, each body starting with a unique id), consumers with manual
   acks on q0/q1 (some deliveries held unacked, acks followed now and then by a ``basic.qos``
   round trip), and one thread declaring/deleting/purging durable queues ``crash.c*``, declaring/
   deleting durable exchanges ``crash.x*`` and binding/unbinding them (q2 is never purged or
   consumed: confirms of its publishes prove a WAL sync);
3. ``SIGKILL`` the broker at a random moment of the load, restart it on the same data dir, check
   the definitions it recovered; repeat (``--kills``, default 2), then drain every queue, probe
   the bindings, stop it with SIGTERM (exit code 0) and check every log for tracebacks/errors.

What is checked (times are the client's ``time.monotonic``; ``S[L]`` is the send time of the last
publish into q2 confirmed in broker lifetime ``L``: anything acknowledged to a client before it
was processed before that publish and is synced, so it must survive a crash):

* lost: a persistent message confirmed into a queue, never acked, and with no purge/delete of that
  queue completing after it was published (or still in flight) must be in the final drain;
* dup: within one broker lifetime a (queue, id) is delivered at most once (consumers + drain:
  nothing is rejected or requeued while the broker lives), so the final drain has each id once;
* resurrected: a message whose ack or whose queue's purge/delete was completed and then synced
  (as above) must not come back after a restart;
* phantom: nothing unroutable (``basic.return``), unknown, or in a queue it was not routed to;
* transient: non-persistent messages do not survive a restart;
* definitions: a queue/exchange whose last declare/delete completed and was synced exists (and
  accepts a redeclare with the same arguments) or is gone; a synced binding routes, a synced
  unbind (or deletion of an end) does not;
* broker: every start listens, the last stop exits 0, no ``Traceback``/``ERROR`` in its logs.

Reported but not failed (RabbitMQ does not promise them): ``redeliv-`` a message delivered in an
earlier lifetime (delivery synced by a later confirm) back with ``redelivered=False``;
``redeliv+`` a message never delivered by a queue without consumers back with ``redelivered=True``.

SIGKILL kills the process, not the machine: what RocksDB handed to the kernel survives even when
not fsynced, so this checks the broker's ordering and recovery, not fsync placement.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pika
import pika.exceptions
from amqpbroker.testing import free_port

__all__ = ["SeedResult", "run_seed", "main"]

now = time.monotonic
INF = float("inf")

STABLE = ("crash.q0", "crash.q1", "crash.q2")  # never deleted; q0, q1 consumed; q2 never touched
SYNC_QUEUE = "crash.q2"
FANOUT = "crash.fan"  # bound to q0 and q1 at setup, never changed
CHAOS_QUEUES = ("crash.c0", "crash.c1", "crash.c2", "crash.c3")
CHAOS_EXCHANGES = ("crash.x0", "crash.x1", "crash.x2")
ROUTING_KEYS = ("k0", "k1", "k2")
STABLE_ARGS = ({}, {"x-max-priority": 5}, {"x-queue-mode": "lazy", "x-message-ttl": 3_600_000},
               {"x-max-length": 1_000_000, "x-dead-letter-exchange": "crash.dlx"})
CHAOS_QUEUE_ARGS = ({}, {"x-message-ttl": 3_600_000}, {"x-max-priority": 3},
                    {"x-max-length": 1_000_000, "x-overflow": "drop-head"}, {"x-queue-mode": "lazy"})
EXCHANGE_TYPES = ("direct", "fanout", "topic")


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass
class Msg:
    id: str
    life: int
    targets: tuple[str, ...]
    persistent: bool
    t_send: float
    t_conf: float | None = None
    outcome: str = "inflight"  # confirmed | unroutable | nacked | inflight


@dataclasses.dataclass
class Event:
    """A definition change (or purge) sent by a client, or what a restart found (``observed``)."""
    kind: str  # queue.declare queue.delete queue.purge exchange.declare exchange.delete bind unbind
    #            queue.observed exchange.observed
    name: str  # queue or exchange; for bind/unbind the exchange
    life: int
    t_send: float
    queue: str = ""  # bind/unbind: the queue
    key: str = ""  # bind/unbind: the routing key
    exists: bool = False  # observed
    t_ok: float | None = None
    error: str | None = None

    @property
    def synthetic(self) -> bool:
        return self.kind.endswith(".observed")


@dataclasses.dataclass
class Delivery:
    life: int
    queue: str
    id: str
    redelivered: bool
    t_recv: float
    how: str  # consume | drain


@dataclasses.dataclass
class Ack:
    life: int
    queue: str
    id: str
    t_sent: float
    t_done: float | None = None  # a later round trip on that channel completed


@dataclasses.dataclass
class SeedResult:
    seed: int
    window: int | None = None
    kills: int = 0
    confirmed: int = 0  # persistent messages confirmed (ids)
    acked: int = 0  # (queue, id) acks sent
    expected: int = 0  # (queue, id) that must come back
    recovered: int = 0  # (queue, id) in the final drain
    lost: int = 0
    duplicated: int = 0
    resurrected: int = 0
    phantom: int = 0
    transient: int = 0
    defs_bad: int = 0
    redeliv_missing: int = 0
    redeliv_spurious: int = 0
    broker_bad: int = 0
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.resurrected or self.phantom or self.transient
                    or self.defs_bad or self.broker_bad)

    def problem(self, counter: str, text: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if len(self.problems) < 40:
            self.problems.append(f"[{counter}] {text}")

    def note(self, counter: str, text: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if len(self.notes) < 20:
            self.notes.append(f"[{counter}] {text}")

    def describe(self) -> str:
        return "\n".join([summary_line(self)] + ["  " + p for p in self.problems + self.notes])


COLUMNS = ("seed", "window", "kills", "confirmed", "acked", "expected", "recovered", "lost", "dup",
           "resurr", "phantom", "transient", "defs_bad", "broker_bad", "redeliv-", "redeliv+", "seconds")


def summary_line(r: SeedResult) -> str:
    values = (r.seed, r.window or "def", r.kills, r.confirmed, r.acked, r.expected, r.recovered, r.lost,
              r.duplicated, r.resurrected, r.phantom, r.transient, r.defs_bad, r.broker_bad,
              r.redeliv_missing, r.redeliv_spurious, f"{r.seconds:.1f}")
    return " ".join(f"{v!s:>{max(len(c), 5)}}" for v, c in zip(values, COLUMNS)) + ("" if r.ok else "  FAIL")


def header_line() -> str:
    return " ".join(f"{c:>{max(len(c), 5)}}" for c in COLUMNS)


# ----------------------------------------------------------------------------- the broker


class Broker:
    """amqpbroker as a subprocess on one data dir; each start is a new lifetime (new port, new log)."""

    def __init__(self, workdir: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.data_dir = os.path.join(workdir, "data")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.life = 0
        self.logs: list[str] = []
        self._log = None

    def start(self, timeout: float = 30.0) -> float:
        self.life += 1
        self.port = free_port()
        path = os.path.join(self.workdir, f"broker-{self.life}.log")
        self.logs.append(path)
        self._log = open(path, "w")
        started = now()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpbroker", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.data_dir, "--prometheus-port", "0", "--management-port", "0",
             "--log-level", "info"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = started + timeout
        while now() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with code {self.process.returncode} at start "
                                   f"(lifetime {self.life}, log {path})")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return now() - started
            time.sleep(0.02)
        raise RuntimeError(f"broker did not listen within {timeout} s (lifetime {self.life}, log {path})")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM; its exit code (killed after 20 s: -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host="127.0.0.1", port=self.port, credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=5, stack_timeout=10, blocked_connection_timeout=15,
            heartbeat=0)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params())


# ----------------------------------------------------------------------------- the load

class Load:
    """The client side of one lifetime: publisher, consumer and topology threads."""

    def __init__(self, seed: int, life: int, broker: Broker, rng: random.Random, world: World) -> None:
        self.seed, self.life, self.broker, self.world = seed, life, broker, world
        self.stop = threading.Event()
        self.killed_at = INF
        self.errors: list[tuple[float, str]] = []
        self.threads: list[threading.Thread] = []
        publishers, consumers = rng.randint(1, 3), rng.randint(1, 2)
        for index in range(publishers):
            self._thread(self.publisher, index, random.Random(rng.random()))
        for index in range(consumers):
            self._thread(self.consumer, index, random.Random(rng.random()))
        self._thread(self.topology, 0, random.Random(rng.random()))

    def _thread(self, target: Any, index: int, rng: random.Random) -> None:
        name = f"{target.__name__}{index}"
        self.threads.append(threading.Thread(target=self._guard, args=(target, name, index, rng),
                                             name=f"crash-{name}", daemon=True))

    def _guard(self, target: Any, name: str, index: int, rng: random.Random) -> None:
        try:
            target(name, index, rng)
        except Exception as exc:  # the crash closes every connection: expected after the kill
            self.errors.append((now(), f"{name}: {type(exc).__name__}: {exc}"))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 15.0) -> list[str]:
        self.stop.set()
        deadline = now() + timeout
        stuck = []
        for thread in self.threads:
            thread.join(max(0.0, deadline - now()))
            if thread.is_alive():
                stuck.append(thread.name)
        return stuck

    # -- publishers

    def publisher(self, name: str, index: int, rng: random.Random) -> None:
        world = self.world
        connection = self.broker.connect()
        channel = connection.channel()
        channel.confirm_delivery()
        count = 0
        routes = ([("", q, (q,)) for q in STABLE] * 2 + [(FANOUT, "", STABLE[:2])] * 2
                  + [("", q, (q,)) for q in CHAOS_QUEUES])
        while not self.stop.is_set():
            exchange, key, targets = rng.choice(routes)
            count += 1
            message_id = f"{self.seed}.{self.life}.{name}.{count}"
            persistent = rng.random() < 0.93
            body = message_id.encode() + b"|" + b"x" * rng.choice((0, 10, 200, 1000, 5000))
            properties = pika.BasicProperties(delivery_mode=2 if persistent else 1, message_id=message_id,
                                              priority=rng.randint(0, 5))
            msg = Msg(message_id, self.life, targets, persistent, now())
            world.messages[message_id] = msg
            try:
                channel.basic_publish(exchange, key, body, properties, mandatory=True)
                msg.outcome = "confirmed"
            except pika.exceptions.UnroutableError:
                msg.outcome = "unroutable"
            except pika.exceptions.NackError:
                msg.outcome = "nacked"
            msg.t_conf = now()

    # -- consumers

    def consumer(self, name: str, index: int, rng: random.Random) -> None:
        world = self.world
        connection = self.broker.connect()
        channel = connection.channel()
        prefetch = rng.choice((1, 5, 20, 100))
        channel.basic_qos(prefetch_count=prefetch)
        hold = rng.randint(0, max(0, prefetch - 1))  # deliveries kept unacked
        queues = rng.sample(STABLE[:2], rng.randint(1, 2))
        by_tag: dict[str, str] = {}
        held: list[tuple[int, str, str]] = []  # delivery tag, queue, id
        waiting: list[Ack] = []  # sent, no round trip since

        def on_message(_channel: Any, method: Any, _properties: Any, body: bytes) -> None:
            queue = by_tag[method.consumer_tag]
            message_id = body.split(b"|", 1)[0].decode()
            world.deliveries.append(Delivery(self.life, queue, message_id, method.redelivered, now(), "consume"))
            held.append((method.delivery_tag, queue, message_id))

        for queue in queues:
            by_tag[channel.basic_consume(queue, on_message)] = queue
        while not self.stop.is_set():
            connection.process_data_events(time_limit=0.02)
            excess = len(held) - hold
            if excess > 0 or (held and rng.random() < 0.05):
                count = max(excess, 1) if rng.random() < 0.9 else len(held)
                batch, held[:] = held[:count], held[count:]
                multiple = len(batch) > 1 and rng.random() < 0.5
                for position, (tag, queue, message_id) in enumerate(batch):
                    ack = Ack(self.life, queue, message_id, now())
                    world.acks.append(ack)
                    waiting.append(ack)
                    if not multiple:
                        channel.basic_ack(tag)
                    elif position == len(batch) - 1:
                        channel.basic_ack(tag, multiple=True)
            if waiting and rng.random() < 0.3:
                channel.basic_qos(prefetch_count=prefetch)  # a round trip: the acks before it are done
                done = now()
                for ack in waiting:
                    ack.t_done = done
                waiting.clear()

    # -- topology

    def topology(self, name: str, index: int, rng: random.Random) -> None:
        world = self.world
        connection = self.broker.connect()
        channel = connection.channel()
        while not self.stop.is_set():
            time.sleep(rng.uniform(0, 0.03))
            roll = rng.random()
            if roll < 0.18:
                queue = rng.choice(CHAOS_QUEUES)
                event = Event("queue.declare", queue, self.life, 0.0)
                call = lambda: channel.queue_declare(queue, durable=True, arguments=world.queue_args[queue])
            elif roll < 0.30:
                queue = rng.choice(CHAOS_QUEUES)
                event = Event("queue.delete", queue, self.life, 0.0)
                call = lambda: channel.queue_delete(queue)
            elif roll < 0.42:
                queue = rng.choice(CHAOS_QUEUES + STABLE[:2])  # never q2: its confirms prove syncs
                event = Event("queue.purge", queue, self.life, 0.0)
                call = lambda: channel.queue_purge(queue)
            elif roll < 0.56:
                exchange = rng.choice(CHAOS_EXCHANGES)
                event = Event("exchange.declare", exchange, self.life, 0.0)
                call = lambda: channel.exchange_declare(exchange, world.exchange_types[exchange], durable=True,
                                                        arguments=world.exchange_args[exchange])
            elif roll < 0.64:
                exchange = rng.choice(CHAOS_EXCHANGES)
                event = Event("exchange.delete", exchange, self.life, 0.0)
                call = lambda: channel.exchange_delete(exchange)
            else:
                exchange, queue = rng.choice(CHAOS_EXCHANGES), rng.choice(CHAOS_QUEUES + STABLE)
                key = rng.choice(ROUTING_KEYS)
                kind = "bind" if roll < 0.86 else "unbind"
                event = Event(kind, exchange, self.life, 0.0, queue=queue, key=key)
                call = ((lambda: channel.queue_bind(queue, exchange, key)) if kind == "bind"
                        else (lambda: channel.queue_unbind(queue, exchange, key)))
            world.events.append(event)
            event.t_send = now()
            try:
                call()
                event.t_ok = now()
            except pika.exceptions.ChannelClosedByBroker as exc:
                event.error = f"{exc.reply_code} {exc.reply_text}"
                if exc.reply_code != 404:
                    world.unexpected.append(f"life {self.life}: {event.kind} {event.name} {event.queue}: "
                                            f"{event.error}")
                channel = connection.channel()


class World:
    """Everything the clients did, across the lifetimes of one seed."""

    def __init__(self, rng: random.Random) -> None:
        self.messages: dict[str, Msg] = {}
        self.deliveries: list[Delivery] = []
        self.acks: list[Ack] = []
        self.events: list[Event] = []
        self.unexpected: list[str] = []
        self.checked: Counter[str] = Counter()  # how many expectations were definite enough to check
        self.sync_mark: dict[int, float] = {}  # life -> S[life]
        self.queue_args = {q: dict(rng.choice(STABLE_ARGS)) for q in STABLE}
        self.queue_args.update({q: dict(rng.choice(CHAOS_QUEUE_ARGS)) for q in CHAOS_QUEUES})
        self.exchange_types = {x: rng.choice(EXCHANGE_TYPES) for x in CHAOS_EXCHANGES}
        self.exchange_types[FANOUT] = "fanout"
        self.exchange_args = {x: ({"alternate-exchange": "crash.ae"} if rng.random() < 0.3 else {})
                              for x in CHAOS_EXCHANGES}
        self.exchange_args[FANOUT] = {}

    def synced(self, life: int, t: float | None) -> bool:
        """Was something a client saw completed at ``t`` in lifetime ``life`` synced before the crash?"""
        return t is not None and t < self.sync_mark.get(life, -INF)

    def close_lifetime(self, life: int) -> None:
        marks = [m.t_send for m in self.messages.values()
                 if m.life == life and m.persistent and m.outcome == "confirmed" and m.targets == (SYNC_QUEUE,)]
        self.sync_mark[life] = max(marks, default=-INF)

    # -- definitions

    def live_events(self) -> list[Event]:
        return sorted((e for e in self.events if e.error is None), key=lambda e: e.t_send)

    def durable(self, event: Event) -> bool:
        return event.synthetic or self.synced(event.life, event.t_ok)

    def expected_exists(self, kind: str, name: str) -> bool | None:
        """True/False when the last declare/delete of ``name`` completed and was synced, else None."""
        relevant = [e for e in self.live_events() if e.name == name and e.kind in
                    (f"{kind}.declare", f"{kind}.delete", f"{kind}.observed")]
        if not relevant:
            return False
        last = relevant[-1]
        if not self.durable(last):
            return None
        return last.exists if last.synthetic else last.kind.endswith(".declare")

    def binding_state(self, exchange: str, queue: str, key: str) -> bool | None:
        """True: bound (synced), False: not bound (never, or synced removal), None: unknown."""
        relevant = [e for e in self.live_events() if
                    (e.kind in ("bind", "unbind") and (e.name, e.queue, e.key) == (exchange, queue, key))
                    or (e.kind == "exchange.delete" and e.name == exchange)
                    or (e.kind == "queue.delete" and e.name == queue)
                    or (e.kind == "exchange.observed" and e.name == exchange and not e.exists)
                    or (e.kind == "queue.observed" and e.name == queue and not e.exists)]
        if not relevant:
            return False
        last = relevant[-1]
        if not self.durable(last):
            return None
        return last.kind == "bind"


# ----------------------------------------------------------------------------- checks

def check_definitions(broker: Broker, world: World, result: SeedResult) -> None:
    """After a restart: every queue/exchange we ever named is where the synced history says."""
    connection = broker.connect()
    try:
        for kind, names in (("queue", STABLE + CHAOS_QUEUES), ("exchange", (FANOUT,) + CHAOS_EXCHANGES)):
            for name in names:
                expected = world.expected_exists(kind, name)
                channel = connection.channel()
                try:
                    if kind == "queue":
                        channel.queue_declare(name, passive=True)
                    else:
                        channel.exchange_declare(name, passive=True)
                    exists = True
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    exists = False
                    channel = connection.channel()
                world.checked["definitions"] += expected is not None
                t = now()
                world.events.append(Event(f"{kind}.observed", name, broker.life, t, exists=exists, t_ok=t))
                if expected is not None and expected != exists:
                    result.problem("defs_bad", f"life {broker.life}: {kind} {name} "
                                               f"{'missing' if expected else 'still there'} after the restart")
                if exists:  # redeclare with the arguments it was declared with: 406 if they differ
                    try:
                        if kind == "queue":
                            channel.queue_declare(name, durable=True, arguments=world.queue_args[name])
                        else:
                            channel.exchange_declare(name, world.exchange_types[name], durable=True,
                                                     arguments=world.exchange_args[name])
                    except pika.exceptions.ChannelClosedByBroker as exc:
                        result.problem("defs_bad", f"life {broker.life}: {kind} {name} recovered with other "
                                                   f"arguments: {exc.reply_code} {exc.reply_text}")
                with contextlib.suppress(Exception):
                    channel.close()
    finally:
        connection.close()


def drain_all(broker: Broker, world: World, result: SeedResult) -> None:
    """Take every message out of every queue (autoack), recording each delivery."""
    connection = broker.connect()
    try:
        for queue in STABLE + CHAOS_QUEUES:
            channel = connection.channel()
            try:
                count = channel.queue_declare(queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                continue
            got = 0
            if count:
                for method, _properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=2.0):
                    if method is None:
                        break
                    world.deliveries.append(Delivery(broker.life, queue, body.split(b"|", 1)[0].decode(),
                                                     method.redelivered, now(), "drain"))
                    got += 1
                    if got >= count:
                        break
                channel.cancel()
            while True:
                method, _properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                world.deliveries.append(Delivery(broker.life, queue, body.split(b"|", 1)[0].decode(),
                                                 method.redelivered, now(), "drain"))
                got += 1
            if got != count:
                result.notes.append(f"{queue}: declare-ok said {count} messages, drained {got}")
            channel.close()
    finally:
        connection.close()


def probe_bindings(broker: Broker, world: World, result: SeedResult) -> None:
    """With every queue empty: does a probe through each chaos exchange reach each queue as the synced
    binding history says (bound: yes; unbound, end deleted or never bound: no)?"""
    connection = broker.connect()
    try:
        channel = connection.channel()
        for exchange in CHAOS_EXCHANGES:
            if world.expected_exists("exchange", exchange) is not True:
                continue
            fanout = world.exchange_types[exchange] == "fanout"
            for queue in CHAOS_QUEUES + STABLE:
                if world.expected_exists("queue", queue) is not True:
                    continue
                for key in ROUTING_KEYS:
                    states = [world.binding_state(exchange, queue, k) for k in (ROUTING_KEYS if fanout else (key,))]
                    if None in states and True not in states:
                        continue
                    expected = True in states
                    world.checked["bindings routed" if expected else "bindings not routed"] += 1
                    channel.queue_purge(queue)
                    probe = f"probe.{exchange}.{queue}.{key}"
                    channel.basic_publish(exchange, key, probe.encode() + b"|", pika.BasicProperties(delivery_mode=1))
                    method, _properties, body = channel.basic_get(queue, auto_ack=True)
                    routed = method is not None and body.startswith(probe.encode() + b"|")
                    if routed != expected:
                        result.problem("defs_bad", f"binding {exchange} -> {queue} ({key}) "
                                                   f"{'does not route' if expected else 'still routes'}")
                    if fanout:
                        break
        for queue in CHAOS_QUEUES + STABLE:
            if world.expected_exists("queue", queue) is True:
                channel.queue_purge(queue)
    finally:
        connection.close()


def check_messages(world: World, final_life: int, result: SeedResult) -> None:
    messages = world.messages
    events = world.live_events()
    removals: dict[str, list[Event]] = defaultdict(list)  # queue -> purges and deletes
    for event in events:
        if event.kind in ("queue.purge", "queue.delete"):
            removals[event.name].append(event)
    acks: dict[tuple[str, str], list[Ack]] = defaultdict(list)
    for ack in world.acks:
        acks[(ack.queue, ack.id)].append(ack)
    result.acked = len(acks)
    result.confirmed = sum(1 for m in messages.values() if m.persistent and m.outcome == "confirmed")

    # deliveries per (queue, id): per lifetime at most one
    by_pair: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for delivery in world.deliveries:
        by_pair[(delivery.queue, delivery.id)].append(delivery)
    consumed_queues = set(STABLE[:2])  # the only queues consumers use
    for (queue, message_id), deliveries in by_pair.items():
        message = messages.get(message_id)
        if message is None or queue not in message.targets or message.outcome == "unroutable":
            result.problem("phantom", f"{queue}: {message_id} "
                                      f"({'unknown' if message is None else message.outcome + ' to ' + ','.join(message.targets)})")
            continue
        per_life = Counter(d.life for d in deliveries)
        for life, count in per_life.items():
            if count > 1:
                result.problem("duplicated", f"{queue}: {message_id} delivered {count} times in lifetime {life}")
        if not message.persistent and any(d.life > message.life for d in deliveries):
            result.problem("transient", f"{queue}: transient {message_id} (lifetime {message.life}) came back")
        # gone for good: an ack or a purge/delete that completed and was synced, then a crash
        gone_at = [a.life for a in acks[(queue, message_id)] if world.synced(a.life, a.t_done)]
        if queue not in consumed_queues:  # a purge leaves unacked deliveries alone
            gone_at += [e.life for e in removals[queue]
                        if message.t_conf is not None and e.t_send > message.t_conf and world.synced(e.life, e.t_ok)]
        if gone_at and any(d.life > min(gone_at) for d in deliveries):
            result.problem("resurrected", f"{queue}: {message_id} back after an ack/purge/delete synced in "
                                          f"lifetime {min(gone_at)}")
        # redelivered flag
        deliveries.sort(key=lambda d: d.t_recv)
        for position, delivery in enumerate(deliveries):
            earlier = deliveries[:position]
            if any(world.synced(e.life, e.t_recv) for e in earlier if e.life < delivery.life):
                world.checked["redelivered flags"] += 1
            if not delivery.redelivered and any(world.synced(e.life, e.t_recv) for e in earlier
                                                if e.life < delivery.life):
                result.note("redeliv_missing", f"{queue}: {message_id} in lifetime {delivery.life} "
                                               f"not marked redelivered")
            if delivery.redelivered and not earlier and queue not in consumed_queues:
                result.note("redeliv_spurious", f"{queue}: {message_id} redelivered, never delivered before")

    # what must be in the final drain
    final = Counter((d.queue, d.id) for d in world.deliveries if d.life == final_life)
    result.recovered = len(final)
    for message in messages.values():
        if not message.persistent or message.outcome != "confirmed":
            continue
        for queue in message.targets:
            if acks.get((queue, message.id)):
                continue
            if any((e.t_ok if e.t_ok is not None else INF) > message.t_send for e in removals[queue]):
                continue
            result.expected += 1
            if (queue, message.id) not in final:
                result.problem("lost", f"{queue}: {message.id} (lifetime {message.life}, confirmed "
                                       f"{message.t_conf:.3f}) not recovered")


def check_logs(broker: Broker, result: SeedResult) -> None:
    for path in broker.logs:
        with open(path, errors="replace") as handle:
            lines = handle.read().splitlines()
        for number, line in enumerate(lines):
            if "Traceback" in line or "[ERROR]" in line or "[CRITICAL]" in line:
                result.problem("broker_bad", f"{os.path.basename(path)}:{number + 1}: {line.strip()[:200]}")
        recovered = [line.split("] ", 1)[-1] for line in lines if "recovered " in line]
        if recovered and len(result.notes) < 20:
            result.notes.append(f"{os.path.basename(path)}: {recovered[0][:160]}")


# ----------------------------------------------------------------------------- one seed

def setup(broker: Broker, world: World) -> None:
    connection = broker.connect()
    try:
        channel = connection.channel()
        for queue in STABLE:
            event = Event("queue.declare", queue, broker.life, now())
            world.events.append(event)
            channel.queue_declare(queue, durable=True, arguments=world.queue_args[queue])
            event.t_ok = now()
        event = Event("exchange.declare", FANOUT, broker.life, now())
        world.events.append(event)
        channel.exchange_declare(FANOUT, "fanout", durable=True)
        event.t_ok = now()
        for queue in STABLE[:2]:
            event = Event("bind", FANOUT, broker.life, now(), queue=queue)
            world.events.append(event)
            channel.queue_bind(queue, FANOUT, "")
            event.t_ok = now()
    finally:
        connection.close()


def run_seed(seed: int, *, kills: int = 2, load_seconds: tuple[float, float] = (1.0, 4.0),
             workdir: str | None = None, keep: bool = False, verbose: bool = False) -> SeedResult:
    rng = random.Random(seed)
    result = SeedResult(seed, kills=kills)
    result.window = rng.choice((None, None, 64, 300))
    env = {} if result.window is None else {"AMQPBROKER_QUEUE_WINDOW_MESSAGES": str(result.window)}
    world = World(rng)
    started = now()
    base = tempfile.mkdtemp(prefix=f"amqpbroker-crash-{seed}-", dir=workdir)
    broker = Broker(base, env)
    try:
        for round_ in range(kills + 1):
            try:
                restart_seconds = broker.start()
            except RuntimeError as exc:
                result.problem("broker_bad", str(exc))
                return result
            if round_ > 0:
                result.notes.append(f"restart {round_}: listening after {restart_seconds:.2f} s")
                check_definitions(broker, world, result)
            else:
                setup(broker, world)
            if round_ == kills:
                break
            load = Load(seed, broker.life, broker, rng, world)
            kill_after = rng.uniform(*load_seconds)
            load.start()
            deadline = now() + kill_after
            while now() < deadline and broker.alive():
                time.sleep(0.01)
            if not broker.alive():
                result.problem("broker_bad", f"lifetime {broker.life}: broker exited by itself "
                                             f"(code {broker.process.returncode})")
            killed = now()
            broker.kill()
            stuck = load.join()
            if stuck:
                result.notes.append(f"lifetime {broker.life}: threads still running after the kill: {stuck}")
            for t, text in load.errors:
                if t < killed:
                    result.problem("broker_bad", f"lifetime {broker.life}: a client failed before the kill: {text}")
            world.close_lifetime(broker.life)
            if verbose:
                print(f"  seed {seed} life {broker.life}: {len(world.messages)} msgs, "
                      f"{len(world.deliveries)} deliveries, {len(world.events)} events, "
                      f"killed after {kill_after:.2f} s", flush=True)
        drain_all(broker, world, result)
        probe_bindings(broker, world, result)
        code = broker.stop()
        if code != 0:
            result.problem("broker_bad", f"exit code {code} after SIGTERM")
        check_messages(world, broker.life, result)
        check_logs(broker, result)
        result.notes.extend(world.unexpected[:5])
        result.notes.append("checked: " + ", ".join(f"{n} {k}" for k, n in sorted(world.checked.items())))
    finally:
        if broker.alive():
            broker.kill()
        result.seconds = now() - started
        if keep or not result.ok:
            result.notes.append(f"work dir kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="run seeds 0..N-1 (default 20)")
    parser.add_argument("--first", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILL/restart cycles per seed (default 2)")
    parser.add_argument("--min-load", type=float, default=1.0, help="seconds of load before a kill, at least")
    parser.add_argument("--max-load", type=float, default=4.0, help="... at most")
    parser.add_argument("--workdir", help="where the data dirs go (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep data dirs and logs of passing seeds too")
    parser.add_argument("-v", "--verbose", action="store_true", help="print problems and notes of every seed")
    args = parser.parse_args(argv)
    seeds = args.seed or list(range(args.first, args.first + args.seeds))
    print(header_line(), flush=True)
    results = []
    for seed in seeds:
        result = run_seed(seed, kills=args.kills, load_seconds=(args.min_load, args.max_load),
                          workdir=args.workdir, keep=args.keep, verbose=args.verbose)
        results.append(result)
        print(summary_line(result), flush=True)
        if args.verbose or not result.ok:
            for line in result.problems + result.notes:
                print("    " + line, flush=True)
    total = SeedResult(-1, kills=sum(r.kills for r in results))
    for field in ("confirmed", "acked", "expected", "recovered", "lost", "duplicated", "resurrected", "phantom",
                  "transient", "defs_bad", "broker_bad", "redeliv_missing", "redeliv_spurious", "seconds"):
        setattr(total, field, sum(getattr(r, field) for r in results))
    failed = [r.seed for r in results if not r.ok]
    print(summary_line(total).replace("   -1", "total", 1))
    print(f"{len(results)} seeds, {len(failed)} failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
