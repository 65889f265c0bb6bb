"""The store on RocksDB (rocksdict), in one key space with one-letter prefixes.

=============================================  ==========================================
key                                            value
=============================================  ==========================================
``x`` vhost ``\\0`` name                          exchange definition (field table)
``q`` vhost ``\\0`` name                          queue definition, including its queue id
``b`` vhost ``\\0`` binding identity             binding definition
``m`` message id (8 bytes, big-endian)          routing bytes, header length, header, body
``e`` queue id (8) seq (8)                      message id (8), delivered flag (1)
=============================================  ==========================================

Entries of a queue are contiguous and in arrival order, so recovery reads each queue in order with
one prefix scan, and a queue is dropped with one range delete. Writes go to the WAL unsynced;
:meth:`RocksStore.sync` (``flush_wal(sync=True)``, which releases the GIL) makes them durable.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pamqp import decode, encode
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from amqpbroker.store.base import Recovered, StoredMessage, StoreError

__all__ = ["RocksStore"]

log = logging.getLogger("amqpbroker.store")

_U64 = struct.Struct(">Q")
_ENTRY_KEY = struct.Struct(">cQQ")
_ENTRY_VALUE = struct.Struct(">QB")
_U32 = struct.Struct(">I")


def _text_key(prefix: bytes, vhost: str, name: str) -> bytes:
    return prefix + vhost.encode() + b"\x00" + name.encode()


def _entry_key(queue_id: int, seq: int) -> bytes:
    return _ENTRY_KEY.pack(b"e", queue_id, seq)


def _queue_range(queue_id: int) -> tuple[bytes, bytes]:
    return _ENTRY_KEY.pack(b"e", queue_id, 0), _ENTRY_KEY.pack(b"e", queue_id + 1, 0)


def _table(definition: dict[str, Any]) -> bytes:
    return encode.field_table(definition)


def _untable(data: bytes) -> dict[str, Any]:
    return decode.field_table(data)[1]


def _message_value(message: Any) -> bytes:
    return b"".join((message.routing_raw, _U32.pack(len(message.header)), message.header, message.body))


def _stored_message(value: bytes) -> StoredMessage:
    exchange_end = 1 + value[0]
    routing_end = exchange_end + 1 + value[exchange_end]
    header_length = _U32.unpack_from(value, routing_end)[0]
    header_start = routing_end + 4
    body_start = header_start + header_length
    return StoredMessage(value[:routing_end], value[header_start:body_start], value[body_start:])


class RocksStore:
    def __init__(self, path: str) -> None:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db = Rdict(path, options)
        except Exception as exc:  # rocksdict raises plain Exception for corrupt or locked dirs
            raise StoreError(f"cannot open the data directory {path}: {exc}") from exc
        self.path = path
        self._unsynced = WriteOptions()
        self._unsynced.sync = False

    # ------------------------------------------------------------ reading

    def recover(self) -> Recovered:
        recovered = Recovered()
        try:
            for key, value in self._db.items():
                kind = key[:1]
                if kind == b"e":
                    _, queue_id, seq = _ENTRY_KEY.unpack(key)
                    message_id, delivered = _ENTRY_VALUE.unpack(value)
                    recovered.entries.setdefault(queue_id, []).append((seq, message_id, bool(delivered)))
                elif kind == b"m":
                    recovered.messages[_U64.unpack(key[1:])[0]] = _stored_message(value)
                elif kind == b"x":
                    recovered.exchanges.append(_untable(value))
                elif kind == b"q":
                    recovered.queues.append(_untable(value))
                elif kind == b"b":
                    recovered.bindings.append(_untable(value))
                else:
                    raise StoreError(f"unknown key {key[:16]!r} in the data directory {self.path}")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read the data directory {self.path}: {exc}") from exc
        return recovered

    # ------------------------------------------------------------ writing

    def write(self, ops: list[tuple]) -> None:
        batch = WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        for op in ops:
            tag = op[0]
            if tag == "entry":
                _, queue_id, seq, message_id, delivered = op
                put(_entry_key(queue_id, seq), _ENTRY_VALUE.pack(message_id, delivered))
            elif tag == "entry-":
                delete(_entry_key(op[1], op[2]))
            elif tag == "message":
                put(b"m" + _U64.pack(op[1]), _message_value(op[2]))
            elif tag == "message-":
                delete(b"m" + _U64.pack(op[1]))
            elif tag == "purge":
                batch.delete_range(*_queue_range(op[1]))
            elif tag == "queue":
                _, vhost, name, queue_id, definition = op
                put(_text_key(b"q", vhost, name), _table({**definition, "id": queue_id}))
            elif tag == "queue-":
                _, vhost, name, queue_id = op
                delete(_text_key(b"q", vhost, name))
                batch.delete_range(*_queue_range(queue_id))
            elif tag == "exchange":
                put(_text_key(b"x", op[1], op[2]), _table(op[3]))
            elif tag == "exchange-":
                delete(_text_key(b"x", op[1], op[2]))
            elif tag == "binding":
                put(_text_key(b"b", op[1], op[2]), _table(op[3]))
            elif tag == "binding-":
                delete(_text_key(b"b", op[1], op[2]))
            else:
                raise ValueError(f"unknown journal operation {tag!r}")
        try:
            self._db.write(batch, self._unsynced)
        except Exception as exc:
            raise StoreError(f"write to {self.path} failed: {exc}") from exc

    def sync(self) -> None:
        try:
            self._db.flush_wal(True)
        except Exception as exc:
            raise StoreError(f"sync of {self.path} failed: {exc}") from exc

    def remove(self, keys: list[tuple]) -> None:
        ops = [("message-", key[1]) if key[0] == "message" else ("entry-", key[1], key[2]) for key in keys]
        if ops:
            self.write(ops)
            self.sync()

    def close(self) -> None:
        try:
            self._db.flush_wal(True)
        finally:
            self._db.close()
