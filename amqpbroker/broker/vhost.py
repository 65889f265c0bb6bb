"""A virtual host: its exchanges, queues and bindings.

Every change of topology goes through :meth:`VirtualHost.apply`, live declares and boot-time
recovery alike. The ``declare_*`` / ``delete_*`` / ``bind_*`` methods check a client's request
the way RabbitMQ does (404, 403, 405, 406) and then build the operation and apply it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from amqpbroker.broker import ops
from amqpbroker.broker.arguments import (
    check_exchange_equivalence, check_flag, check_queue_equivalence, refuse_other_types_arguments,
    validate_queue_arguments,
)
from amqpbroker.broker.dead_letter import dead_lettered, is_cycle
from amqpbroker.broker.exchanges import Binding, Exchange, exchange_class
from amqpbroker.broker.deduplication import Deduplication, deduplication_error
from amqpbroker.broker.delayed_messages import DelayedMessages
from amqpbroker.broker.retry import retry_error
from amqpbroker.broker.exchanges.delayed import DelayedExchange, delayed_type
from amqpbroker.broker.journal import Journal
from amqpbroker.broker.message import Message
from amqpbroker.broker.policies import Policy, choose, effective
from amqpbroker.broker.queue import Queue
from amqpbroker.broker.stream import StreamQueue
from amqpbroker.codec.methods import shortstr
from amqpbroker.codec.tables import TableError, encode_table
from amqpbroker.broker.queue_types import STREAM, queue_type_of
from amqpbroker.broker.compatibility import DEFAULT_PROFILE, PROFILES, TRANSIENT_NONEXCLUSIVE_REFUSED, Profile
from amqpbroker.errors import (
    ConnectionError, ReplyCode, access_refused, cut_to_bytes, log_internal_error, not_found,
    precondition_failed, resource_locked,
)

__all__ = ["VirtualHost", "PREDECLARED_EXCHANGES", "REPLY_TO"]

REPLY_TO = "amq.rabbitmq.reply-to"  # the pseudo-queue of direct reply-to

log = logging.getLogger("amqpbroker.vhost")

DEFAULT_EXCHANGE = ""
PREDECLARED_EXCHANGES = (
    ("", "direct", False),
    ("amq.direct", "direct", False),
    ("amq.fanout", "fanout", False),
    ("amq.topic", "topic", False),
    ("amq.headers", "headers", False),
    ("amq.match", "headers", False),
    ("amq.rabbitmq.trace", "topic", True),
)


def exchange_owner(vhost: str, name: str) -> str:
    """How the store names a durable exchange's deduplication cache (a queue's: ``q:`` + its id)."""
    return f"x:{vhost}\0{name}"


def exchange_definition(op: ops.DeclareExchange) -> dict[str, Any]:
    return {"name": op.name, "type": op.type, "durable": op.durable, "auto_delete": op.auto_delete,
            "internal": op.internal, "arguments": op.arguments}


def queue_definition(op: ops.DeclareQueue) -> dict[str, Any]:
    return {"name": op.name, "durable": op.durable, "auto_delete": op.auto_delete,
            "arguments": op.arguments}


def binding_definition(op: ops.Bind) -> dict[str, Any]:
    return {"source": op.source, "destination": op.destination, "routing_key": op.routing_key,
            "arguments": op.arguments, "destination_is_exchange": op.destination_is_exchange}


def stored_record(definition: dict[str, Any]) -> bytes:
    """A definition as the store keeps it (a field table), encoded before anything changes in
    memory: what cannot be stored is the client's error (406), never a lost store batch."""
    try:
        return encode_table(definition)
    except TableError as exc:
        raise precondition_failed(f"cannot store the definition of '{definition.get('name', '')}': {exc}") from None


def binding_key(op: ops.Bind | ops.Unbind) -> str:
    """The identity of a binding as a store key: ends, kind, routing key, arguments."""
    arguments = (hashlib.sha1(stored_record(dict(sorted(op.arguments.items())))).hexdigest()
                 if op.arguments else "")
    kind = "e" if op.destination_is_exchange else "q"
    return "\x00".join((op.source, kind, op.destination, op.routing_key, arguments))


def server_named_queue() -> str:
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class VirtualHost:
    def __init__(self, name: str, *, journal: Journal | None = None,
                 mark_dirty: Callable[[Queue], None] = lambda queue: None,
                 on_queue_deleted: Callable[[Queue], None] = lambda queue: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.description = ""
        self.tags: tuple[str, ...] = ()
        self.default_queue_type: str | None = None
        self.clock = clock  # wall-clock seconds, for TTLs and x-death times
        self.timed: set[Queue] = set()  # queues with TTLs or x-expires: ticked by the broker
        # x-delivery-limit where a queue has none: (classic, quorum); None: no limit
        self.delivery_limit_defaults: tuple[int | None, int | None] = (None, 20)
        self.rules: Profile = PROFILES[DEFAULT_PROFILE]  # the compatibility profile (the broker's)
        self.totals: Any = None  # the broker's MessageTotals: queues declared and created are counted there
        self.reply_queues: dict[str, Queue] = {}  # direct reply-to: one hidden queue per consumer
        self.journal = journal if journal is not None else Journal()
        self.delayed = DelayedMessages(name, self.journal)  # held by x-delayed-message exchanges until due
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.exchange_bindings = 0  # exchange-to-exchange bindings; routing is simpler without
        self.dead_letter_failures = 0  # messages dead-lettered without x-death, or dropped, by a fault
        self.max_queues = 0  # most queues it may hold (0: no limit): the broker's queue_max_per_vhost
        # RabbitMQ's vhost limits set on it: "max-connections", "max-queues" (0: none allowed)
        self.limits: dict[str, int] = {}
        self.policies: dict[str, Policy] = {}  # by name (policies.py)
        self.operator_policies: dict[str, Policy] = {}
        self._deleting: set[str] = set()  # exchanges being deleted
        self._mark_dirty = mark_dirty
        self._on_queue_deleted = on_queue_deleted
        for exchange_name, type_name, internal in PREDECLARED_EXCHANGES:
            self.apply(ops.DeclareExchange(exchange_name, type_name, durable=True, internal=internal))

    # ------------------------------------------------------------ the one mutation path

    def apply(self, op: ops.Op) -> Any:
        """Carry out one topology operation that has already been checked, and journal it when
        it concerns durable entities (recovery applies with the journal still disabled)."""
        journal = self.journal
        if isinstance(op, ops.DeclareExchange):
            cls = exchange_class(op.type)
            record = None
            if op.durable and not op.name.startswith("amq.") and op.name and journal.enabled:
                record = stored_record(exchange_definition(op))
            exchange = cls(op.name, op.durable, op.auto_delete, op.internal, op.arguments)
            exchange.dedup = Deduplication.of(op.arguments, journal=journal,
                                              owner=exchange_owner(self.name, op.name) if op.durable else None)
            self.exchanges[op.name] = exchange
            if self.policies:
                self._apply_policies_to_exchange(exchange)
            if record is not None:
                journal.definition(("exchange", self.name, op.name, record))
            return exchange
        if isinstance(op, ops.DeclareQueue):
            stored = op.durable and op.exclusive_owner is None and not op.auto_delete
            queue_id = op.queue_id
            record = None
            if stored and journal.enabled:
                if queue_id is None:
                    queue_id = journal.new_queue_id()  # (one lost to a refused definition is harmless)
                record = stored_record({**queue_definition(op), "id": queue_id})
            queue_class = StreamQueue if queue_type_of(op.arguments) is STREAM else Queue
            queue = queue_class(op.name, self.name, durable=op.durable, exclusive_owner=op.exclusive_owner,
                                auto_delete=op.auto_delete, arguments=op.arguments, mark_dirty=self._mark_dirty,
                                journal=journal, queue_id=queue_id if stored else None, host=self)
            self.queues[op.name] = queue
            if record is not None:
                journal.definition(("queue", self.name, op.name, queue.queue_id, record))
            if self.policies or self.operator_policies:
                self._apply_policies_to_queue(queue)
            return queue
        if isinstance(op, ops.Bind):
            source = self.exchanges[op.source]
            destination = self._destination(op)
            stored = self._stored_binding(source, destination) and journal.enabled
            key = binding_key(op) if stored else ""
            record = stored_record(binding_definition(op)) if stored else b""
            added = source.bind(Binding(destination, op.routing_key, op.arguments))
            self.exchange_bindings += added and op.destination_is_exchange
            if added and stored:
                journal.definition(("binding", self.name, key, record))
            return added
        if isinstance(op, ops.Unbind):
            source = self.exchanges[op.source]
            destination = self._destination(op)
            removed = source.unbind(Binding(destination, op.routing_key, op.arguments))
            self.exchange_bindings -= removed and op.destination_is_exchange
            if removed and self._stored_binding(source, destination) and journal.enabled:
                journal.definition(("binding-", self.name, binding_key(op)))
            if removed and source.auto_delete and not source.bindings and source.name not in self._deleting:
                self.apply(ops.DeleteExchange(source.name))
            return removed
        if isinstance(op, ops.DeleteQueue):
            return self._delete_queue(self.queues[op.name])
        if isinstance(op, ops.DeleteExchange):
            exchange = self.exchanges[op.name]
            self._deleting.add(op.name)  # its last unbind below must not auto-delete it again
            try:
                for binding in list(exchange.bindings.values()):
                    self._unbind_binding(exchange, binding)
                for source in list(self.exchanges.values()):
                    for binding in source.bindings_to(exchange):
                        self._unbind_binding(source, binding)
            finally:
                self._deleting.discard(op.name)
            del self.exchanges[op.name]
            self.delayed.purge(op.name)  # what it held goes with it (from the store too)
            if exchange.durable:
                journal.definition(("exchange-", self.name, op.name))
                if exchange.dedup is not None:
                    journal.definition(("dedup*", exchange.dedup.owner))
            return exchange
        raise TypeError(f"unknown topology operation {op!r}")

    # ------------------------------------------------------------ policies

    def apply_policies(self) -> None:
        """The policies changed: every queue and exchange gets what applies to it now."""
        for queue in list(self.queues.values()):
            if not queue.deleted:
                try:
                    self._apply_policies_to_queue(queue)
                except Exception as exc:  # one queue's fault: logged, the others get theirs
                    log_internal_error(log, f"applying policies to queue '{queue.name}' in vhost '{self.name}'", exc)
        for exchange in self.exchanges.values():
            self._apply_policies_to_exchange(exchange)

    def _apply_policies_to_queue(self, queue: Queue) -> None:
        queue_type = queue.type.name
        policy = choose(self.policies, "queue", queue.name, queue_type)
        operator = choose(self.operator_policies, "queue", queue.name, queue_type)
        if policy is queue.policy and operator is queue.operator_policy:
            return
        queue.policy, queue.operator_policy = policy, operator
        queue.apply_arguments(effective(queue.arguments, policy, operator))

    def _apply_policies_to_exchange(self, exchange: Exchange) -> None:
        """An alternate exchange from a policy, where the exchange has no argument for it."""
        policy = choose(self.policies, "exchange", exchange.name)
        own = exchange.arguments.get("alternate-exchange")
        if isinstance(own, str) and own:
            return
        alternate = policy.definition.get("alternate-exchange") if policy is not None else None
        exchange.alternate = alternate or None

    def delete_everything(self) -> None:
        """The vhost is being deleted: every queue (with its messages), exchange and delayed
        message goes, from the store too."""
        for queue in list(self.queues.values()):
            if not queue.deleted:
                self._delete_queue(queue)
        for queue in list(self.reply_queues.values()):
            self.drop_reply_queue(queue)
        for name in list(self.exchanges):
            if name in self.exchanges:  # (an auto-delete one may have gone with its last binding)
                self.apply(ops.DeleteExchange(name))
        self.delayed.clear()
        self.timed.clear()

    @staticmethod
    def _stored_binding(source: Exchange, destination: Any) -> bool:
        if not source.durable or not source.name:
            return False
        if isinstance(destination, Exchange):
            return destination.durable
        return destination.queue_id is not None

    def _unbind_binding(self, source: Exchange, binding: Binding) -> None:
        is_exchange = isinstance(binding.destination, Exchange)
        self.apply(ops.Unbind(source.name, binding.destination.name, binding.routing_key,
                              binding.arguments, destination_is_exchange=is_exchange))

    def _destination(self, op: ops.Bind | ops.Unbind) -> Any:
        return self.exchanges[op.destination] if op.destination_is_exchange else self.queues[op.destination]

    def _delete_queue(self, queue: Queue) -> int:
        for exchange in list(self.exchanges.values()):
            for binding in exchange.bindings_to(queue):
                self._unbind_binding(exchange, binding)
        del self.queues[queue.name]
        self.timed.discard(queue)
        if queue.queue_id is not None:  # drops its stored entries too
            self.journal.definition(("queue-", self.name, queue.name, queue.queue_id))
        queue.deleted = True
        count = queue.purge()
        self._on_queue_deleted(queue)
        return count

    # ------------------------------------------------------------ lookups

    def exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise not_found(f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def queue(self, name: str, owner: Any) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise not_found(f"no queue '{name}' in vhost '{self.name}'")
        self._check_exclusive(queue, owner)
        return queue

    def use_queue(self, name: str, owner: Any) -> Queue:
        """``queue`` for a use that keeps it alive under ``x-expires`` (consume, get, declare)."""
        queue = self.queue(name, owner)
        queue.touch()
        return queue

    def _check_exclusive(self, queue: Queue, owner: Any) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise resource_locked(self._locked_text(queue))

    def _locked_text(self, queue: Queue) -> str:
        return (f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost '{self.name}'. "
                f"It could be originally declared on another connection or the exclusive property "
                f"value does not match that of the original declaration.")

    # ------------------------------------------------------------ exchanges

    def declare_exchange(self, name: str, type_name: str, *, passive: bool, durable: bool,
                         auto_delete: bool, internal: bool, arguments: dict[str, Any]) -> Exchange:
        if not name:
            raise access_refused("operation not permitted on the default exchange")
        if passive:
            return self.exchange(name)
        existing = self.exchanges.get(name)
        if existing is None and name.startswith("amq."):
            raise access_refused(f"exchange name '{name}' contains reserved prefix 'amq.*'")
        if exchange_class(type_name) is None:
            text = (f"unknown exchange type '{type_name}'" if type_name.startswith("x-")
                    else f"invalid exchange type '{type_name}'")
            raise ConnectionError(ReplyCode.COMMAND_INVALID, text)
        if type_name == DelayedExchange.type_name and delayed_type(arguments) not in DelayedExchange.inner_types:
            raise precondition_failed("Invalid argument, 'x-delayed-type' must be an existing exchange type")
        problem = deduplication_error(arguments)
        if problem is not None and existing is None:
            raise precondition_failed(f"invalid arguments for exchange '{name}' in vhost '{self.name}': {problem}")
        if existing is not None:
            where = (name, self.name)
            check_flag("exchange", *where, "type", type_name, existing.type_name)
            check_flag("exchange", *where, "durable", durable, existing.durable)
            check_flag("exchange", *where, "auto_delete", auto_delete, existing.auto_delete)
            check_flag("exchange", *where, "internal", internal, existing.internal)
            check_exchange_equivalence(name, self.name, arguments, existing.arguments)
            return existing
        return self.apply(ops.DeclareExchange(name, type_name, durable, auto_delete, internal, arguments))

    def delete_exchange(self, name: str, *, if_unused: bool) -> None:
        if not name:
            raise access_refused("operation not permitted on the default exchange")
        exchange = self.exchanges.get(name)
        if exchange is None:
            return
        if name.startswith("amq."):
            raise access_refused(f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed")
        if if_unused and exchange.bindings:  # only bindings where it is the source count
            raise precondition_failed(f"exchange '{name}' in vhost '{self.name}' in use")
        self.apply(ops.DeleteExchange(name))

    # ------------------------------------------------------------ queues

    def _default_type(self, arguments: dict[str, Any], *, durable: bool, exclusive: bool,
                      auto_delete: bool) -> str | None:
        """The vhost's default queue type, for a declare that names none (RabbitMQ 3.11+/4.x:
        durable, non-exclusive, non-auto-delete queues only; the others stay classic)."""
        wanted = self.default_queue_type
        if wanted in (None, "classic") or "x-queue-type" in arguments or not durable or exclusive or auto_delete:
            return None
        return wanted

    def declare_queue(self, name: str, *, passive: bool, durable: bool, exclusive: bool,
                      auto_delete: bool, arguments: dict[str, Any], owner: Any,
                      server_named: bool = False) -> Queue:
        """``server_named``: ``name`` was made by :func:`server_named_queue` for this declare."""
        if passive:
            if not name:
                raise not_found(f"no queue '' in vhost '{self.name}'")
            queue = self.use_queue(name, owner)
            self._count_declare(created=False)
            return queue
        if name.startswith("amq.") and name not in self.queues and not server_named:
            raise access_refused(f"queue name '{name}' contains reserved prefix 'amq.*'")
        if not name:
            name = server_named_queue()
        existing = self.queues.get(name)
        default_type = self._default_type(arguments, durable=durable, exclusive=exclusive, auto_delete=auto_delete)
        if default_type is not None and (existing is None or existing.arguments.get("x-queue-type") == default_type):
            arguments = {**arguments, "x-queue-type": default_type}  # (an older queue keeps its type)
        if existing is None:
            if not durable and not exclusive and not self.rules.transient_nonexclusive_queues:
                raise ConnectionError(ReplyCode.INTERNAL_ERROR, TRANSIENT_NONEXCLUSIVE_REFUSED, 50, 10)
            most = self.limits.get("max-queues", self.max_queues or None)
            if most is not None and len(self.queues) >= most:
                raise precondition_failed(f"cannot declare queue '{name}': queue limit in vhost "
                                          f"'{self.name}' ({most}) is reached")
            queue_type = arguments.get("x-queue-type", "classic")
            if isinstance(queue_type, bytes):
                queue_type = queue_type.decode(errors="replace")
            refuse_other_types_arguments(name, self.name, queue_type, arguments)
            validate_queue_arguments(name, self.name, arguments)
            problem = deduplication_error(arguments) or retry_error(arguments)
            if problem is not None:
                raise precondition_failed(f"invalid arguments for queue '{name}' in vhost '{self.name}': {problem}")
            self._check_queue_type(name, arguments, durable=durable, exclusive=exclusive, auto_delete=auto_delete)
            queue = self.apply(ops.DeclareQueue(name, durable, auto_delete, arguments, owner if exclusive else None))
            self._count_declare(created=True)
            return queue
        self._check_exclusive(existing, owner)
        if exclusive != existing.exclusive:  # RabbitMQ: strict exclusive access, 405
            raise resource_locked(self._locked_text(existing))
        where = (name, self.name)
        check_flag("queue", *where, "durable", durable, existing.durable)
        check_flag("queue", *where, "auto_delete", auto_delete, existing.auto_delete)
        check_queue_equivalence(name, self.name, arguments, existing.arguments)
        validate_queue_arguments(name, self.name, arguments)
        existing.touch()
        self._count_declare(created=False)
        return existing

    def _check_queue_type(self, name: str, arguments: dict[str, Any], *, durable: bool, exclusive: bool,
                          auto_delete: bool) -> None:
        """A quorum queue or a stream is durable, not exclusive, not auto-delete (406s as RabbitMQ)."""
        queue_type = arguments.get("x-queue-type", "classic")
        if isinstance(queue_type, bytes):
            queue_type = queue_type.decode(errors="replace")
        where = f"for queue '{name}' in vhost '{self.name}'"
        if not queue_type_of(arguments).needs_durable_shared:
            return
        for invalid, flag in (("non-durable", not durable), ("exclusive-owner", exclusive),
                              ("auto-delete", auto_delete)):
            if flag:
                raise precondition_failed(f"invalid property '{invalid}' {where}")

    def _count_declare(self, *, created: bool) -> None:
        if self.totals is not None:
            self.totals.queues_declared += 1
            self.totals.queues_created += created

    def delete_queue(self, name: str, *, if_unused: bool, if_empty: bool, owner: Any) -> int:
        queue = self.queues.get(name)
        if queue is None:
            return 0
        self._check_exclusive(queue, owner)
        if if_unused and queue.consumers:
            raise precondition_failed(f"queue '{name}' in vhost '{self.name}' in use")
        if if_empty and (queue.message_count or queue.retrying):
            raise precondition_failed(f"queue '{name}' in vhost '{self.name}' is not empty")
        return self.apply(ops.DeleteQueue(name))

    def purge_queue(self, name: str, owner: Any) -> int:
        return self.queue(name, owner).purge()

    # ------------------------------------------------------------ bindings

    def bind_queue(self, queue_name: str, exchange_name: str, routing_key: str,
                   arguments: dict[str, Any], owner: Any) -> None:
        exchange = self._bindable(exchange_name)
        queue = self.queue(queue_name, owner)
        self._check_binding_arguments(exchange, arguments)
        self.apply(ops.Bind(exchange.name, queue.name, routing_key, arguments))

    def unbind_queue(self, queue_name: str, exchange_name: str, routing_key: str,
                     arguments: dict[str, Any], owner: Any) -> None:
        if not exchange_name:
            raise access_refused("operation not permitted on the default exchange")
        queue = self.queues.get(queue_name)
        if queue is None or exchange_name not in self.exchanges:
            return  # unbinding what does not exist is fine, as in RabbitMQ
        self._check_exclusive(queue, owner)
        self.apply(ops.Unbind(exchange_name, queue.name, routing_key, arguments))

    def bind_exchange(self, destination: str, source: str, routing_key: str,
                      arguments: dict[str, Any]) -> None:
        destination_exchange = self._bindable(destination)
        source_exchange = self._bindable(source)
        self._check_binding_arguments(source_exchange, arguments)
        self.apply(ops.Bind(source_exchange.name, destination_exchange.name, routing_key, arguments,
                            destination_is_exchange=True))

    def unbind_exchange(self, destination: str, source: str, routing_key: str,
                        arguments: dict[str, Any]) -> None:
        if not destination or not source:
            raise access_refused("operation not permitted on the default exchange")
        if destination not in self.exchanges or source not in self.exchanges:
            return
        destination_exchange, source_exchange = self.exchanges[destination], self.exchanges[source]
        self.apply(ops.Unbind(source_exchange.name, destination_exchange.name, routing_key, arguments,
                              destination_is_exchange=True))

    def _bindable(self, exchange_name: str) -> Exchange:
        if not exchange_name:
            raise access_refused("operation not permitted on the default exchange")
        return self.exchange(exchange_name)

    @staticmethod
    def _check_binding_arguments(exchange: Exchange, arguments: dict[str, Any]) -> None:
        if exchange.type_name != "headers":
            return
        mode = arguments.get("x-match", "all")
        if isinstance(mode, bytes):
            mode = mode.decode(errors="replace")
        if not isinstance(mode, str):
            raise precondition_failed(f"Invalid x-match field type {type(mode).__name__} "
                                      f"(value {mode!r}); expected longstr")
        if mode not in ("all", "any", "all-with-x", "any-with-x"):
            raise precondition_failed(f"Invalid x-match field value <<\"{mode}\">>; "
                                      f"expected all, any, all-with-x, or any-with-x")

    # ------------------------------------------------------------ routing

    def route(self, exchange: Exchange, routing_key: str, message: Message) -> tuple:
        """The queues a message published to ``exchange`` with ``routing_key`` goes to."""
        if not exchange.name:
            queue = self.queues.get(routing_key) or self.reply_queues.get(routing_key)
            return (queue,) if queue is not None else ()
        destinations = exchange.route(routing_key, message)
        if self.exchange_bindings:
            destinations = self._route_through_exchanges(exchange, destinations, routing_key, message)
        if not destinations and exchange.alternate is not None:
            return self._route_to_alternate(exchange, routing_key, message)
        return destinations

    def _route_to_alternate(self, exchange: Exchange, routing_key: str, message: Message) -> tuple:
        """Unroutable through ``exchange``: try its alternate exchange, and so on; each exchange
        once, so a loop of alternates ends."""
        visited = {exchange.name}
        while exchange.alternate is not None and exchange.alternate not in visited:
            exchange = self.exchanges.get(exchange.alternate)
            if exchange is None:
                return ()
            visited.add(exchange.name)
            destinations = exchange.route(routing_key, message)
            if self.exchange_bindings:
                destinations = self._route_through_exchanges(exchange, destinations, routing_key, message)
            if destinations:
                return destinations
        return ()

    # ------------------------------------------------------------ direct reply-to

    def add_reply_queue(self, owner: Any) -> Queue:
        """A consumer of ``amq.rabbitmq.reply-to``: replies published to the default exchange
        with the returned queue's name reach it, without a real queue (RabbitMQ's direct
        reply-to). The name is what the broker writes into requests' ``reply_to``."""
        name = f"{REPLY_TO}.{base64.urlsafe_b64encode(os.urandom(18)).decode()}"
        queue = Queue(name, self.name, exclusive_owner=owner, auto_delete=True, mark_dirty=self._mark_dirty,
                      journal=self.journal, host=self)
        self.reply_queues[name] = queue
        return queue

    def drop_reply_queue(self, queue: Queue) -> None:
        """Its consumer went away: later replies to it are dropped."""
        self.reply_queues.pop(queue.name, None)
        queue.deleted = True
        queue.purge()

    # ------------------------------------------------------------ dead-lettering and time

    def dead_letter(self, queue: Queue, messages: list[Message], reason: str) -> None:
        """Republish messages that died in ``queue`` to its dead-letter exchange (dropped if that
        exchange does not exist, and for target queues that would make a cycle)."""
        options = queue.options
        exchange = self.exchanges.get(options.dead_letter_exchange) if options is not None else None
        if exchange is None:
            return
        for message in messages:
            copy = self._dead_lettered_copy(queue, message, reason, exchange.name)
            try:
                for target in self.route(exchange, copy.routing_key, copy):
                    if not is_cycle(copy, target.name):
                        target.enqueue(copy)
            except Exception as exc:
                self.dead_letter_failures += 1
                log_internal_error(log, f"dead-lettering from queue '{queue.name}' in vhost '{self.name}' "
                                        f"(message dropped)", exc)

    def dead_letter_once(self, queue: Queue, message: Message, reason: str, taken: set[str]) -> bool:
        """Dead-letter ``message`` at least once (``dead_letter_hold.py``): True when every queue
        the dead-letter exchange routes it to has it (``taken`` names those that took it, now or
        before); False when the exchange is missing, routes it nowhere, or a target refused it."""
        options = queue.options
        exchange = self.exchanges.get(options.dead_letter_exchange) if options is not None else None
        if exchange is None:
            return False
        copy = self._dead_lettered_copy(queue, message, reason, exchange.name)
        try:
            targets = self.route(exchange, copy.routing_key, copy)
            settled = bool(targets)
            for target in targets:
                if target.name in taken or is_cycle(copy, target.name):
                    continue  # (a cycle would never settle: RabbitMQ drops those targets too)
                if target.enqueue(copy):
                    taken.add(target.name)
                else:
                    settled = False
            return settled
        except Exception as exc:  # kept by its queue, tried again later
            self.dead_letter_failures += 1
            log_internal_error(log, f"dead-lettering from queue '{queue.name}' in vhost '{self.name}' "
                                    f"(message kept, tried again later)", exc)
            return False

    def _dead_lettered_copy(self, queue: Queue, message: Message, reason: str, exchange: str) -> Message:
        routing_key = queue.options.dead_letter_routing_key
        try:
            return dead_lettered(message, queue.name, reason, routing_key, exchange, self.clock(),
                                 client_history=self.rules.client_x_death_is_history)
        except Exception as exc:  # headers we cannot re-encode: quarantined, never lost
            return self._quarantined(message, queue, exc, routing_key, exchange)

    def _quarantined(self, message: Message, queue: Queue, exc: Exception, routing_key: str | None,
                     exchange: str) -> Message:
        """The dead-lettered copy of a message whose properties cannot be re-encoded: its
        content header as published (validated when it arrived), without ``x-death``."""
        self.dead_letter_failures += 1
        log.warning("queue '%s' in vhost '%s': dead-lettering a message without x-death (its "
                    "headers cannot be re-encoded: %s)", queue.name, self.name, cut_to_bytes(repr(exc), 200))
        key = message.routing_key if routing_key is None else routing_key
        return Message(exchange, key, shortstr(exchange) + shortstr(key), message.header, message.body)

    def tick(self, now: float) -> None:
        """Expire messages in queues with TTLs, delete queues unused past ``x-expires``, and route
        delayed messages that are due."""
        for queue in list(self.timed):
            try:
                if queue.tick(now) and not queue.deleted:
                    self.apply(ops.DeleteQueue(queue.name))
            except Exception as exc:  # one queue's fault: logged, the others and the timer go on
                log_internal_error(log, f"timed work of queue '{queue.name}' in vhost '{self.name}'", exc)
        for exchange_name, message in self.delayed.pop_due(now):
            message.arrived = now  # (it arrives in its queues now: their TTLs count from here)
            exchange = self.exchanges.get(exchange_name)
            if exchange is None:
                continue  # deleted meanwhile: the message goes with it
            try:
                for queue in self.route(exchange, message.routing_key, message):
                    queue.enqueue(message)
            except Exception as exc:
                log_internal_error(log, f"routing a delayed message through '{exchange_name}'", exc)

    # ------------------------------------------------------------ delayed messages

    def delay(self, exchange: Exchange, message: Message) -> bool:
        """Hold a message published to an ``x-delayed-message`` exchange with an ``x-delay``;
        False when it has none (route it now). A persistent one sent to a durable exchange is
        stored until it is routed, so it survives a restart."""
        delay = exchange.delay_of(message)
        if not delay:
            return False
        self.delayed.hold(exchange, message, self.clock() + delay)
        return True

    @staticmethod
    def _route_through_exchanges(exchange: Exchange, destinations: tuple, routing_key: str,
                                 message: Message) -> tuple:
        """Follow exchange-to-exchange bindings; each exchange is visited once, so cycles end."""
        queues: dict[Queue, None] = {}
        visited = {exchange}
        pending = list(destinations)
        while pending:
            destination = pending.pop(0)
            if isinstance(destination, Exchange):
                if destination not in visited:
                    visited.add(destination)
                    pending.extend(destination.route(routing_key, message))
            else:
                queues[destination] = None
        return tuple(queues)
