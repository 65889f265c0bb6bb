"""The store on RocksDB (rocksdict), in one key space with one-letter prefixes.

=============================================  ==================================================
key                                            value
=============================================  ==================================================
``x`` vhost ``\\0`` name                          exchange definition (field table)
``q`` vhost ``\\0`` name                          queue definition, including its queue id
``b`` vhost ``\\0`` binding identity             binding definition
``m`` message id (8 bytes, big-endian)          a message: arrival time (double, 0: unknown), routing
                                                bytes, header length, header, body
``e`` queue id (8) seq (8)                      message id (8), delivered flag (1); or, for an entry
                                                written while its queue paged, 0 (8), flags (1:
                                                persistent) and its own copy of the message
``d`` queue id (8) seq (8)                      (empty) that inline entry was delivered once
``c`` queue id (8) seq (8)                      how often that entry was returned (4 bytes), and
                                                when its redelivery backoff ends (double), if any
``h`` queue id (8) seq (8)                      that entry is held for dead-lettering at least
                                                once: the reason it died (text)
``t`` page id (8) seq (8)                       a paged-out message of a non-durable queue
``w`` delay id (8)                              a message held by a delayed exchange: vhost and
                                                exchange (shortstrs), due time (double), message
``u`` owner length (2) owner value             a deduplication cache entry of a durable queue (owner
                                                ``q:`` id) or exchange (``x:`` vhost NUL name):
                                                expiry, remembered at (doubles)
``a`` kind (1) key                              access metadata (users, vhosts, permissions): the
                                                broker's own encoding, opaque here
``k`` stream id (8) first offset (8)            a chunk of that stream: its first message's time
                                                (double), count (4), body bytes (8), whether it
                                                starts a segment (1), and where its messages are
                                                (``stream_files.py``): segment (8), position (8),
                                                length (4)
``s`` stream id (8) first offset (8)            (stores written before segment files) a chunk's
                                                messages, when its ``k`` record has no place
``o`` stream id (8) consumer name               a named consumer's tracked offset (8)
``y`` stream id (8)                             how far its segment files are durable: segment
                                                (8), end (8), written by each sync
=============================================  ==================================================

Entries of a queue are contiguous and in arrival order, so recovery reads each queue in order with
one prefix scan, a page is one seek and a short scan, and a queue is dropped with one range delete.
A stream (its id is its queue id) is a log in offset order whose messages are in segment files
(``stream_files.py``): a read is one seek in its chunk index and a ``pread`` per chunk; retention
drops index records with a range delete and whole segment files after the next sync. A chunk's
messages are records: length (4), a flag (1: a shortstr filter value follows, 0: none), then the
message as in ``m``.
Writes go to the WAL unsynced; :meth:`RocksStore.sync` (``flush_wal(sync=True)``, which releases
the GIL) makes them durable. ``t`` pages are written without the WAL and dropped at every start.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from typing import Any

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from amqpbroker.codec.tables import TableError, decode_table

from amqpbroker.store.base import Recovered, StoredEntry, StoredMessage, StoreError, StreamChunk
from amqpbroker.store.stream_files import FileChunkError, StreamFiles, remove_paths

__all__ = ["RocksStore"]

log = logging.getLogger("amqpbroker.store")

_U64 = struct.Struct(">Q")
_SEQ_KEY = struct.Struct(">cQQ")
_ENTRY_VALUE = struct.Struct(">QB")
_U32 = struct.Struct(">I")
_ARRIVED = struct.Struct(">d")
_UNFILTERED_HEAD = struct.Struct(">IBd")  # a stream record's length, flag 0 (no filter value), arrival
_PERSISTENT = 2  # inline entry flag
_CHUNK_VALUE = struct.Struct(">dIQB")  # (a chunk whose messages are an ``s`` value: before segment files)
_FILE_CHUNK_VALUE = struct.Struct(">dIQBQQI")  # ... and where it is: segment, position, length
_DURABLE_VALUE = struct.Struct(">QQ")  # segment, end
_STREAM_SCAN_FACTOR = 50  # a filtered stream read scans at most this many records per one asked for
_MEMTABLE_BYTES = 32 << 20  # two of these at most: bounds RocksDB's share of resident memory
_BLOCK_CACHE_BYTES = 32 << 20  # data, index and filter blocks read back


_KINDS = {b"x": "exchange", b"q": "queue", b"b": "binding"}


def _describe_key(key: bytes) -> str:
    """A definition's key as an operator reads it: ``'name' in vhost '/'``."""
    vhost, _, name = key[1:].partition(b"\x00")
    return f"'{name.decode(errors='replace')}' in vhost '{vhost.decode(errors='replace')}'"


def _text_key(prefix: bytes, vhost: str, name: str) -> bytes:
    return prefix + vhost.encode() + b"\x00" + name.encode()


def _seq_key(prefix: bytes, owner: int, seq: int) -> bytes:
    return _SEQ_KEY.pack(prefix, owner, seq)


_U16 = struct.Struct(">H")
_DEDUP_VALUE = struct.Struct(">dd")


def _dedup_key(owner: str, value: str) -> bytes:
    encoded = owner.encode()
    return b"u" + _U16.pack(len(encoded)) + encoded + value.encode()


def _dedup_range(owner: str) -> tuple[bytes, bytes]:
    start = _dedup_key(owner, "")
    return start, start + b"\xff"  # (no UTF-8 byte is 0xff)


def _range(prefix: bytes, owner: int, from_seq: int = 0, to_seq: int | None = None) -> tuple[bytes, bytes]:
    end = _SEQ_KEY.pack(prefix, owner + 1, 0) if to_seq is None else _SEQ_KEY.pack(prefix, owner, to_seq)
    return _SEQ_KEY.pack(prefix, owner, from_seq), end


def _shortstr(text: str) -> bytes:
    data = text.encode()
    return bytes((len(data),)) + data


def _offset_key(stream_id: int, name: str) -> bytes:
    return b"o" + _U64.pack(stream_id) + name.encode()


def _offset_range(stream_id: int) -> tuple[bytes, bytes]:
    return b"o" + _U64.pack(stream_id), b"o" + _U64.pack(stream_id + 1)


def _untable(data: bytes) -> dict[str, Any]:
    table, end = decode_table(data)
    if end != len(data):
        raise TableError("trailing bytes after the table")
    return table


def _message_value(message: Any) -> bytes:
    return b"".join((_ARRIVED.pack(message.arrived or 0.0), message.routing_raw,
                     _U32.pack(len(message.header)), message.header, message.body))


def _stored_message(value: bytes, start: int = 0, end: int | None = None) -> StoredMessage:
    """The message stored from ``start`` on: to the value's end, or to ``end`` (a stream record,
    whose header must fit before it: a record cut short is an error)."""
    arrived = _ARRIVED.unpack_from(value, start)[0] or None
    start += _ARRIVED.size
    exchange_end = start + 1 + value[start]
    routing_end = exchange_end + 1 + value[exchange_end]
    header_length = _U32.unpack_from(value, routing_end)[0]
    header_start = routing_end + 4
    body_start = header_start + header_length
    if end is not None and body_start > end:
        raise ValueError("truncated stream record")
    return StoredMessage(value[start:routing_end], value[header_start:body_start], value[body_start:end], arrived)


def _chunk_value(messages: Any) -> bytes:
    """A chunk's messages, ``(filter value, message, content header)`` triples, as one value:
    each record is its length (4 bytes), a flag (0: no filter value; 1 and the value as a
    shortstr), then the message as :func:`_message_value` has it, with that header."""
    parts: list[bytes] = []
    extend = parts.extend
    for filter_value, message, header in messages:
        routing_raw, body = message.routing_raw, message.body
        size = len(routing_raw) + len(header) + len(body) + 12  # (+ arrival, header length)
        if filter_value is None:
            extend((_UNFILTERED_HEAD.pack(size + 1, 0, message.arrived or 0.0), routing_raw,
                    _U32.pack(len(header)), header, body))
        else:
            flag = b"\x01" + _shortstr(filter_value)
            extend((_U32.pack(size + len(flag)), flag, _ARRIVED.pack(message.arrived or 0.0), routing_raw,
                    _U32.pack(len(header)), header, body))
    return b"".join(parts)


def _chunk_record(value: bytes, position: int, end: int) -> tuple[int, int]:
    """Where the record at ``position`` of a chunk's records starts and ends; cut short or
    empty: an error."""
    start = position + 4
    record_end = start + _U32.unpack_from(value, position)[0]
    if record_end > end or record_end == start:
        raise ValueError("truncated stream chunk")
    return start, record_end


def _stream_filter(value: bytes, start: int, end: int) -> tuple[str | None, int]:
    """The filter value of the stream record from ``start`` to ``end`` (None: it has none) and
    where its message starts; a filter value past the record's end is an error."""
    flag = value[start]
    if flag == 0:
        return None, start + 1
    if flag != 1:
        raise ValueError(f"unknown stream record flag {flag}")
    filter_end = start + 2 + value[start + 1]
    if filter_end > end:
        raise ValueError("truncated stream record")
    return value[start + 2:filter_end].decode(), filter_end


def _stream_chunk(key: bytes, value: bytes) -> StreamChunk:
    timestamp, count, nbytes, segment_start = _CHUNK_VALUE.unpack_from(value)
    return StreamChunk(_SEQ_KEY.unpack(key)[2], timestamp, count, nbytes, bool(segment_start))


def _stream_wanted(filter_value: str | None, filters: frozenset[str] | None, match_unfiltered: bool) -> bool:
    if filters is None:
        return True
    if filter_value is None:
        return match_unfiltered
    return filter_value in filters


class RocksStore:
    def __init__(self, path: str, streams_path: str | None = None) -> None:
        """``path``: RocksDB's directory; ``streams_path``: the streams' segment files (default:
        beside it, ``path`` + ``-streams``)."""
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(_MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        # index and filter blocks live in a bounded cache rather than beside it, so that memory
        # does not grow with the data (a stream of millions of messages)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(_BLOCK_CACHE_BYTES))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        try:
            self._db = Rdict(path, options)
        except Exception as exc:  # rocksdict raises plain Exception for corrupt or locked dirs
            raise StoreError(f"cannot open the data directory {path}: {exc}") from exc
        self.path = path
        try:
            self._files = StreamFiles(streams_path or path + "-streams")
        except OSError as exc:
            self._db.close()
            raise StoreError(f"cannot open the streams' directory: {exc}") from exc
        self._unsynced = WriteOptions()
        self._unsynced.sync = False
        self._no_wal = WriteOptions()
        self._no_wal.disable_wal = True
        self._delivered: set[tuple[int, int]] = set()

    # ------------------------------------------------------------ reading, before serving

    def recover(self) -> Recovered:
        recovered = Recovered()
        try:
            self._drop_transient_pages()
            for prefix, kind in ((b"x", recovered.exchanges), (b"q", recovered.queues),
                                 (b"b", recovered.bindings)):
                for key, value in self._scan(prefix):
                    try:
                        definition = _untable(value)
                        definition["vhost"] = key[1:].partition(b"\x00")[0].decode()
                        kind.append(definition)
                    except (TableError, IndexError, struct.error) as exc:
                        recovered.unreadable.append(f"{_KINDS[prefix]} {_describe_key(key)}: {exc}")
            for key, value in self._scan(b"a"):
                recovered.metadata.append((key[1:2].decode(), key[2:].decode(), value))
            for key, value in self._scan(b"m"):
                recovered.messages[_U64.unpack_from(key, 1)[0]] = _stored_message(value)
            for key, value in self._scan(b"w"):
                vhost_end = 1 + value[0]
                exchange_end = vhost_end + 1 + value[vhost_end]
                recovered.delayed.append((_U64.unpack_from(key, 1)[0], value[1:vhost_end].decode(),
                                          value[vhost_end + 1:exchange_end].decode(),
                                          _ARRIVED.unpack_from(value, exchange_end)[0],
                                          _stored_message(value, exchange_end + _ARRIVED.size)))
            self._delivered = {_SEQ_KEY.unpack(key)[1:] for key, _ in self._scan(b"d")}
            recovered.delivered_marks = self._delivered
            for key, value in self._scan(b"c"):
                where = _SEQ_KEY.unpack(key)[1:]
                recovered.delivery_counts[where] = _U32.unpack_from(value)[0]
                if len(value) >= _U32.size + _ARRIVED.size:
                    recovered.retry_due[where] = _ARRIVED.unpack_from(value, _U32.size)[0]
            recovered.held_dead_letters = {_SEQ_KEY.unpack(key)[1:]: value.decode()
                                           for key, value in self._scan(b"h")}
            for key, value in self._scan(b"u"):
                owner_end = 3 + _U16.unpack_from(key, 1)[0]
                recovered.deduplication.setdefault(key[3:owner_end].decode(), []).append(
                    (key[owner_end:].decode(), *_DEDUP_VALUE.unpack(value)))
            self._check_prefixes()
            self._drop_orphan_streams()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot read the data directory {self.path}: {exc}") from exc
        return recovered

    def queue_entries(self, queue_id: int, *, with_messages: bool) -> Iterator[StoredEntry]:
        delivered = self._delivered
        try:
            for key, value in self._scan_range(*_range(b"e", queue_id)):
                seq = _SEQ_KEY.unpack(key)[2]
                message_id, flags = _ENTRY_VALUE.unpack_from(value)
                if message_id:
                    yield StoredEntry(seq, message_id, bool(flags), True, None)
                else:
                    inline = _stored_message(value, _ENTRY_VALUE.size) if with_messages else None
                    yield StoredEntry(seq, 0, (queue_id, seq) in delivered, bool(flags & _PERSISTENT), inline)
        except Exception as exc:
            raise StoreError(f"cannot read the data directory {self.path}: {exc}") from exc

    def stream_chunks(self, stream_id: int) -> list[StreamChunk]:
        """The chunk index, checked against the segment files: chunks whose bytes are not on
        disk whole (a power cut before they were synced: never confirmed) are dropped from the
        index with every later one, and appends go on after the last good chunk."""
        try:
            records = list(self._scan_range(*_range(b"k", stream_id)))
            in_files = [(index, _SEQ_KEY.unpack(key)[2], *_FILE_CHUNK_VALUE.unpack(value))
                        for index, (key, value) in enumerate(records) if len(value) == _FILE_CHUNK_VALUE.size]
            durable = self._db.get(b"y" + _U64.pack(stream_id))
            good = self._files.recover_stream(stream_id, [(first, count, segment, position, length)
                                                          for _, first, _, count, _, _, segment, position, length
                                                          in in_files],
                                              _DURABLE_VALUE.unpack(durable) if durable is not None else None)
            if good < len(in_files):
                cut = in_files[good][0]
                batch = WriteBatch(raw_mode=True)
                batch.delete_range(records[cut][0], _seq_key(b"k", stream_id + 1, 0))
                self._db.write(batch, self._unsynced)
                self._db.flush_wal(True)
                records = records[:cut]
            return [_stream_chunk(key, value) for key, value in records]
        except Exception as exc:
            raise StoreError(f"cannot read the data directory {self.path}: {exc}") from exc

    def _drop_orphan_streams(self) -> None:
        """Segment files of a stream no index names (deleted, and the process ended before its
        directory went) are removed."""
        for stream_id in self._files.stream_ids():
            if not self._has_chunks(stream_id):
                remove_paths([self._files.stream_dir(stream_id)])
        orphans = WriteBatch(raw_mode=True)  # (a sync's y record may outlive its stream's delete)
        for key, _ in list(self._scan(b"y")):
            if not self._has_chunks(_U64.unpack_from(key, 1)[0]):
                orphans.delete(key)
        self._db.write(orphans, self._unsynced)

    def _has_chunks(self, stream_id: int) -> bool:
        iterator = self._db.iter()
        try:
            iterator.seek(_seq_key(b"k", stream_id, 0))
            return iterator.valid() and iterator.key()[:9] == _seq_key(b"k", stream_id, 0)[:9]
        finally:
            del iterator

    def stream_offsets(self, stream_id: int) -> dict[str, int]:
        try:
            return {key[9:].decode(): _U64.unpack(value)[0]
                    for key, value in self._scan_range(*_offset_range(stream_id))}
        except Exception as exc:
            raise StoreError(f"cannot read the data directory {self.path}: {exc}") from exc

    def _check_prefixes(self) -> None:
        """Every key must start with one of our prefixes (one seek per prefix present)."""
        iterator = self._db.iter()
        try:
            iterator.seek_to_first()
            while iterator.valid():
                key = iterator.key()
                if key[:1] not in (b"x", b"q", b"b", b"m", b"e", b"d", b"c", b"h", b"u", b"w", b"a",
                                   b"s", b"k", b"o", b"y"):
                    raise StoreError(f"unknown key {key[:16]!r} in the data directory {self.path}")
                iterator.seek(bytes([key[0] + 1]))
        finally:
            del iterator

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._scan_range(prefix, bytes([prefix[0] + 1]))

    def _scan_range(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        try:
            iterator.seek(start)
            while iterator.valid():
                key = iterator.key()
                if key >= end:
                    break
                yield key, iterator.value()
                iterator.next()
        finally:
            del iterator  # iterators must be gone before close()

    def _drop_transient_pages(self) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(b"t", b"u")
        self._db.write(batch, self._unsynced)

    # ------------------------------------------------------------ paging, from a worker thread

    def read_page(self, durable: bool, page_id: int, from_seq: int, count: int,
                  max_bytes: int) -> list[tuple[int, StoredMessage]]:
        page: list[tuple[int, StoredMessage]] = []
        start = _ENTRY_VALUE.size if durable else 0
        size = 0
        try:
            for key, value in self._scan_range(*_range(b"e" if durable else b"t", page_id, from_seq)):
                if durable and _ENTRY_VALUE.unpack_from(value)[0]:
                    raise StoreError(f"queue {page_id}: entry {key[9:].hex()} is not a paged one")
                message = _stored_message(value, start)
                page.append((_SEQ_KEY.unpack(key)[2], message))
                size += len(message.body)
                if len(page) >= count or size >= max_bytes:
                    break
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"reading a page from {self.path} failed: {exc}") from exc
        return page

    # ------------------------------------------------------------ streams, from a worker thread

    def read_stream(self, stream_id: int, from_offset: int, count: int, max_bytes: int,
                    filters: frozenset[str] | None,
                    match_unfiltered: bool) -> tuple[list[tuple[int, StoredMessage]], int]:
        included: list[tuple[int, StoredMessage]] = []
        next_offset = from_offset
        scanned = size = 0
        start_key = _seq_key(b"k", stream_id, from_offset)
        end_key = _seq_key(b"k", stream_id + 1, 0)
        iterator = self._db.iter()
        fds: dict[str, int] = {}
        try:
            iterator.seek_for_prev(start_key)  # the chunk holding from_offset starts at or before it
            if not iterator.valid() or iterator.key()[:9] != start_key[:9]:
                iterator.seek(start_key)
            while iterator.valid():
                key = iterator.key()
                if key >= end_key:
                    break
                offset = _SEQ_KEY.unpack(key)[2]
                value, position = self._chunk_data(stream_id, offset, iterator.value(), fds)
                end = len(value)
                if position >= end:
                    raise ValueError("empty stream chunk")
                while position < end:  # its records, parsed in place
                    start, position = _chunk_record(value, position, end)
                    if offset >= from_offset:
                        next_offset = offset + 1
                        scanned += 1
                        filter_value, start = _stream_filter(value, start, position)
                        if _stream_wanted(filter_value, filters, match_unfiltered):
                            message = _stored_message(value, start, position)
                            included.append((offset, message))
                            size += len(message.body)
                            if len(included) >= count or size >= max_bytes:
                                return included, next_offset
                        if scanned >= _STREAM_SCAN_FACTOR * count:
                            return included, next_offset
                    offset += 1
                iterator.next()
        except Exception as exc:
            raise StoreError(f"reading stream {stream_id} from {self.path} failed: {exc}") from exc
        finally:
            del iterator  # (iterators must be gone before close())
            for fd in fds.values():
                os.close(fd)
        return included, next_offset

    def _chunk_data(self, stream_id: int, first_offset: int, index_value: bytes,
                    fds: dict[str, int]) -> tuple[bytes, int]:
        """A chunk's records, and where in that value they start: from its segment file, or
        (written before segment files) its ``s`` value."""
        if len(index_value) == _FILE_CHUNK_VALUE.size:
            _, count, _, _, segment, position, length = _FILE_CHUNK_VALUE.unpack(index_value)
            return self._files.read(stream_id, segment, position, length, first_offset, count, fds)
        value = self._db.get(_seq_key(b"s", stream_id, first_offset))
        if value is None:
            raise FileChunkError(f"the messages of chunk {first_offset} are missing")
        return value, 0

    # ------------------------------------------------------------ writing

    def write(self, ops: list[tuple]) -> None:
        try:
            self._write_ops(ops)
        except BaseException:
            self._files.abort()  # (a retry takes the same places for the same chunks)
            raise
        self._files.commit()

    def _write_ops(self, ops: list[tuple]) -> None:
        batch = WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        for op in ops:
            if op is None:  # cancelled before it was written
                continue
            tag = op[0]
            if tag == "entry":
                _, queue_id, seq, message_id, delivered = op
                put(_seq_key(b"e", queue_id, seq), _ENTRY_VALUE.pack(message_id, delivered))
            elif tag == "entry-":
                delete(_seq_key(b"e", op[1], op[2]))
            elif tag == "message":
                put(b"m" + _U64.pack(op[1]), _message_value(op[2]))
            elif tag == "message-":
                delete(b"m" + _U64.pack(op[1]))
            elif tag == "inline":
                _, queue_id, seq, message, persistent = op
                put(_seq_key(b"e", queue_id, seq),
                    _ENTRY_VALUE.pack(0, _PERSISTENT if persistent else 0) + _message_value(message))
            elif tag == "delivered":
                put(_seq_key(b"d", op[1], op[2]), b"")
            elif tag == "inline-":
                delete(_seq_key(b"e", op[1], op[2]))
                delete(_seq_key(b"d", op[1], op[2]))
            elif tag == "delivered-":
                delete(_seq_key(b"d", op[1], op[2]))
            elif tag == "dedup":
                put(_dedup_key(op[1], op[2]), _DEDUP_VALUE.pack(op[3], op[4]))
            elif tag == "dedup-":
                delete(_dedup_key(op[1], op[2]))
            elif tag == "dedup*":  # a whole cache
                batch.delete_range(*_dedup_range(op[1]))
            elif tag == "count":
                due = op[4] if len(op) > 4 else None
                put(_seq_key(b"c", op[1], op[2]), _U32.pack(op[3]) + (_ARRIVED.pack(due) if due is not None else b""))
            elif tag == "count-":
                delete(_seq_key(b"c", op[1], op[2]))
            elif tag == "held":
                put(_seq_key(b"h", op[1], op[2]), op[3].encode())
            elif tag == "held-":
                delete(_seq_key(b"h", op[1], op[2]))
            elif tag == "entries-":
                batch.delete_range(*_range(b"e", op[1], op[2]))
                batch.delete_range(*_range(b"c", op[1], op[2]))
            elif tag == "chunk":  # its messages to its segment file, its index record here
                _, stream_id, first_offset, timestamp, count, nbytes, segment_start, messages = op
                place = self._files.append(stream_id, first_offset, count, segment_start, _chunk_value(messages))
                put(_seq_key(b"k", stream_id, first_offset),
                    _FILE_CHUNK_VALUE.pack(timestamp, count, nbytes, segment_start, *place))
            elif tag == "stream-":  # retention: everything below an offset
                batch.delete_range(*_range(b"s", op[1], 0, op[2]))
                batch.delete_range(*_range(b"k", op[1], 0, op[2]))
                self._files.drop_below(op[1], op[2])
            elif tag == "offset":
                put(_offset_key(op[1], op[2]), _U64.pack(op[3]))
            elif tag == "offset-":
                delete(_offset_key(op[1], op[2]))
            elif tag == "delayed":
                _, delay_id, vhost, exchange, due, message = op
                put(b"w" + _U64.pack(delay_id),
                    b"".join((_shortstr(vhost), _shortstr(exchange), _ARRIVED.pack(due), _message_value(message))))
            elif tag == "delayed-":
                delete(b"w" + _U64.pack(op[1]))
            elif tag == "queue":
                _, vhost, name, queue_id, definition = op
                put(_text_key(b"q", vhost, name), definition)  # encoded by the broker, id included
            elif tag == "queue-":
                _, vhost, name, queue_id = op
                delete(_text_key(b"q", vhost, name))
                batch.delete_range(*_range(b"e", queue_id))
                batch.delete_range(*_range(b"d", queue_id))
                batch.delete_range(*_range(b"c", queue_id))
                batch.delete_range(*_range(b"h", queue_id))
                batch.delete_range(*_dedup_range(f"q:{queue_id}"))
                batch.delete_range(*_range(b"s", queue_id))
                batch.delete_range(*_range(b"k", queue_id))
                batch.delete_range(*_offset_range(queue_id))
                batch.delete(b"y" + _U64.pack(queue_id))
                self._files.drop_stream(queue_id)
            elif tag == "exchange":
                put(_text_key(b"x", op[1], op[2]), op[3])
            elif tag == "exchange-":
                delete(_text_key(b"x", op[1], op[2]))
            elif tag == "binding":
                put(_text_key(b"b", op[1], op[2]), op[3])
            elif tag == "binding-":
                delete(_text_key(b"b", op[1], op[2]))
            elif tag == "meta":
                put(b"a" + op[1].encode() + op[2].encode(), op[3])
            elif tag == "meta-":
                delete(b"a" + op[1].encode() + op[2].encode())
            else:
                raise ValueError(f"unknown journal operation {tag!r}")
        self._write(batch, self._unsynced)

    def write_pages(self, pages: list[tuple]) -> None:
        batch = WriteBatch(raw_mode=True)
        for op in pages:
            if op[0] == "page":
                batch.put(_seq_key(b"t", op[1], op[2]), _message_value(op[3]))
            elif op[0] == "page-":
                batch.delete_range(*_range(b"t", op[1], op[2], op[3]))
            else:
                raise ValueError(f"unknown page operation {op[0]!r}")
        self._write(batch, self._no_wal)

    def _write(self, batch: WriteBatch, options: WriteOptions) -> None:
        try:
            self._db.write(batch, options)
        except Exception as exc:
            raise StoreError(f"write to {self.path} failed: {exc}") from exc

    def sync(self) -> None:
        """Segment files first (and how far each is durable, a ``y`` record), then the WAL with
        their index records; then what retention and deletes dropped from the index goes."""
        try:
            removals, durable = self._files.sync_files()
        except Exception as exc:
            raise StoreError(f"sync of {self.path} failed: {exc}") from exc
        try:
            if durable:
                batch = WriteBatch(raw_mode=True)
                for stream_id, (segment, end) in durable.items():
                    batch.put(b"y" + _U64.pack(stream_id), _DURABLE_VALUE.pack(segment, end))
                self._db.write(batch, self._unsynced)
            self._db.flush_wal(True)
        except Exception as exc:
            self._files.keep_removals(removals)  # (their index deletions are not durable yet)
            raise StoreError(f"sync of {self.path} failed: {exc}") from exc
        self._files.remove(removals)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._files.close()
            self._db.close()
