"""Stream storage in a real RocksDB store: the append-only log (``s``), its chunk index (``k``) and
the offsets named consumers tracked (``o``), written as journal operations (``chunk``, ``stream-``,
``offset``, ``queue-``) and read back."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from rocksdict import Options, Rdict

from amqpbroker.store.base import StoredMessage, StoreError, StreamChunk
from amqpbroker.store.rocks import RocksStore

ROUTING = b"\x06events\x03key"  # exchange and routing key, two shortstrs
HEADER = b"\x00<\x00\x00header"
STREAM, OTHER = 7, 8


def _message(body: bytes, arrived: float = 1700000000.5) -> StoredMessage:
    """A message as the journal hands it over (it has .routing_raw, .header, .body, .arrived)."""
    return StoredMessage(ROUTING, HEADER, body, arrived)


def _appends(stream_id: int, bodies: list[bytes], first: int = 0, filter_value: str | None = None, *,
             timestamp: float = 1.0, arrived: float | None = 1700000000.5) -> list[tuple]:
    """One chunk of ``bodies`` from offset ``first`` on, as the journal hands it over: its index
    record and its messages, ``(filter value, message, content header)``."""
    messages = [(filter_value, _message(body, arrived), HEADER) for body in bodies]
    return [("chunk", stream_id, first, timestamp, len(bodies), sum(map(len, bodies)), first == 0, messages)]


def _chunks(store: RocksStore, stream_id: int) -> list[StreamChunk]:
    """The chunk index as recovery reads it (checked against the segment files, which the sync
    writes: synced first)."""
    store.sync()
    return store.stream_chunks(stream_id)


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "db")


@pytest.fixture
def store(path) -> Iterator[RocksStore]:
    store = RocksStore(path)
    try:
        yield store
    finally:
        store.close()


def _offsets(read: tuple[list[tuple[int, StoredMessage]], int]) -> tuple[list[int], int]:
    included, next_offset = read
    return [offset for offset, _ in included], next_offset


def test_stream_messages_and_chunks_are_read_back_as_written(store) -> None:
    store.write([*_appends(STREAM, [b"one", b"two"], timestamp=1700000000.5),
                 *_appends(STREAM, [b"three"], 2, timestamp=1700000001.25)])
    included, next_offset = store.read_stream(STREAM, 0, 10, 1 << 20, None, False)
    assert included == [(0, _message(b"one")), (1, _message(b"two")), (2, _message(b"three"))]
    assert next_offset == 3
    assert _chunks(store, STREAM) == [StreamChunk(0, 1700000000.5, 2, 6, True),
                                           StreamChunk(2, 1700000001.25, 1, 5, False)]
    assert store.read_stream(STREAM, 3, 10, 1 << 20, None, False) == ([], 3)  # the end of the stream
    assert _chunks(store, OTHER) == [] and store.read_stream(OTHER, 0, 10, 1000, None, False) == ([], 0)


def test_a_message_without_an_arrival_time_reads_back_with_none(store) -> None:
    store.write(_appends(STREAM, [b"x"], 0, "eu", arrived=None))
    ((_, message),), _ = store.read_stream(STREAM, 0, 1, 1000, None, False)
    assert message.arrived is None and message.body == b"x"


def test_a_read_stops_at_count_and_at_max_bytes_but_returns_one_message_at_least(store) -> None:
    store.write(_appends(STREAM, [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]))
    assert _offsets(store.read_stream(STREAM, 0, 2, 1 << 20, None, False)) == ([0, 1], 2)
    assert _offsets(store.read_stream(STREAM, 1, 10, 15, None, False)) == ([1, 2], 3)
    assert _offsets(store.read_stream(STREAM, 2, 10, 1, None, False)) == ([2], 3)  # one over max_bytes
    assert _offsets(store.read_stream(STREAM, 3, 10, 1 << 20, None, False)) == ([3], 4)


def test_filters_include_matching_values_and_unfiltered_messages_only_when_asked(store) -> None:
    store.write([*_appends(STREAM, [b"eu"], 0, "eu"), *_appends(STREAM, [b"us"], 1, "us"),
                 *_appends(STREAM, [b"none"], 2), *_appends(STREAM, [b"eu2"], 3, "eu")])
    assert _offsets(store.read_stream(STREAM, 0, 10, 1000, frozenset({"eu"}), False)) == ([0, 3], 4)
    assert _offsets(store.read_stream(STREAM, 0, 10, 1000, frozenset({"eu"}), True)) == ([0, 2, 3], 4)
    assert _offsets(store.read_stream(STREAM, 0, 10, 1000, frozenset({"us", "eu"}), False)) == ([0, 1, 3], 4)
    assert _offsets(store.read_stream(STREAM, 0, 10, 1000, frozenset({"ap"}), False)) == ([], 4)
    assert _offsets(store.read_stream(STREAM, 0, 10, 1000, None, False)) == ([0, 1, 2, 3], 4)


def test_a_filtered_read_scans_at_most_fifty_records_per_one_asked_for(store) -> None:
    store.write([*_appends(STREAM, [b"skip"] * 120, 0, "us"), *_appends(STREAM, [b"wanted"], 120, "eu")])
    eu = frozenset({"eu"})
    assert store.read_stream(STREAM, 0, 1, 1000, eu, False) == ([], 50)  # resume past the skipped ones
    assert store.read_stream(STREAM, 50, 1, 1000, eu, False) == ([], 100)
    assert _offsets(store.read_stream(STREAM, 100, 1, 1000, eu, False)) == ([120], 121)
    assert _offsets(store.read_stream(STREAM, 0, 3, 1000, eu, False)) == ([120], 121)  # 150 allowed


def test_retention_drops_older_messages_and_chunks_of_that_stream_only(store) -> None:
    store.write([op for stream in (STREAM, OTHER) for first in (0, 2, 4) for op in _appends(stream, [b"m"] * 2, first)])
    store.write([("stream-", STREAM, 4)])
    assert _offsets(store.read_stream(STREAM, 0, 10, 1000, None, False)) == ([4, 5], 6)
    assert [chunk.first_offset for chunk in _chunks(store, STREAM)] == [4]
    assert _offsets(store.read_stream(OTHER, 0, 10, 1000, None, False)) == ([0, 1, 2, 3, 4, 5], 6)
    assert [chunk.first_offset for chunk in _chunks(store, OTHER)] == [0, 2, 4]


def test_named_consumer_offsets_are_put_replaced_deleted_and_read_per_stream(store) -> None:
    store.write([("offset", STREAM, "billing", 10), ("offset", STREAM, "audit", 3),
                 ("offset", STREAM, "ünïcode", 1 << 40), ("offset", OTHER, "billing", 99)])
    store.write([("offset", STREAM, "billing", 12), ("offset-", STREAM, "audit")])
    assert store.stream_offsets(STREAM) == {"billing": 12, "ünïcode": 1 << 40}
    assert store.stream_offsets(OTHER) == {"billing": 99}
    assert store.stream_offsets(9) == {}


def test_deleting_a_stream_queue_drops_its_log_chunks_and_offsets_only(store) -> None:
    for stream in (STREAM, OTHER):
        store.write([*_appends(stream, [b"m"] * 3), ("offset", stream, "reader", 2)])
    store.write([("queue-", "/", "log", STREAM)])
    assert store.read_stream(STREAM, 0, 10, 1000, None, False) == ([], 0)
    assert _chunks(store, STREAM) == [] and store.stream_offsets(STREAM) == {}
    assert _offsets(store.read_stream(OTHER, 0, 10, 1000, None, False)) == ([0, 1, 2], 3)
    assert _chunks(store, OTHER) == [StreamChunk(0, 1.0, 3, 3, True)]
    assert store.stream_offsets(OTHER) == {"reader": 2}


def test_streams_survive_close_and_reopen_and_recovery_accepts_their_keys(path) -> None:
    store = RocksStore(path)
    try:
        store.write([*_appends(STREAM, [b"one", b"two"], 0, "eu", timestamp=2.5), ("offset", STREAM, "reader", 1)])
    finally:
        store.close()
    store = RocksStore(path)
    try:
        recovered = store.recover()  # every key prefix is known
        assert recovered.unreadable == [] and recovered.queues == []
        assert store.stream_chunks(STREAM) == [StreamChunk(0, 2.5, 2, 6, True)]
        assert store.stream_offsets(STREAM) == {"reader": 1}
        included, next_offset = store.read_stream(STREAM, 1, 10, 1000, frozenset({"eu"}), False)
        assert included == [(1, _message(b"two"))] and next_offset == 2
    finally:
        store.close()


def _overwrite(path: str, key: bytes, value: bytes) -> None:
    db = Rdict(path, Options(raw_mode=True))
    try:
        db[key] = value
    finally:
        db.close()


def _legacy_chunk(path: str, first: int, value: bytes) -> None:
    """A one-message chunk as stores before segment files kept it: its index record without a
    place, its records as an ``s`` value."""
    _overwrite(path, struct.pack(">cQQ", b"k", STREAM, first), struct.pack(">dIQB", 1.0, 1, 4, first == 0))
    _overwrite(path, struct.pack(">cQQ", b"s", STREAM, first), value)


def test_chunks_stored_before_segment_files_are_read_and_appends_go_on_in_files(path) -> None:
    store = RocksStore(path)
    store.close()
    record = b"\x00" + struct.pack(">d", 1.0) + ROUTING + struct.pack(">I", len(HEADER)) + HEADER + b"old!"
    _legacy_chunk(path, 0, struct.pack(">I", len(record)) + record)
    store = RocksStore(path)
    try:
        assert store.stream_chunks(STREAM) == [StreamChunk(0, 1.0, 1, 4, True)]
        store.write(_appends(STREAM, [b"new"], 1))  # (not a segment start: a new file all the same)
        included, next_offset = store.read_stream(STREAM, 0, 10, 1000, None, False)
        assert [(offset, message.body) for offset, message in included] == [(0, b"old!"), (1, b"new")]
    finally:
        store.close()


@pytest.mark.parametrize("cut", [0, 2, 5, 9, 34], ids=["empty", "in-length", "flag-only", "in-arrival", "in-header"])
def test_a_truncated_stream_record_is_a_store_error(path, cut) -> None:
    store = RocksStore(path)
    try:
        store.write([*_appends(STREAM, [b"intact"], 0, "eu"), *_appends(STREAM, [b"cut short"], 1, "eu")])
    finally:
        store.close()
    record = b"\x01\x02eu" + struct.pack(">d", 1.0) + ROUTING + struct.pack(">I", len(HEADER)) + HEADER + b"body"
    value = struct.pack(">I", len(record)) + record  # (a chunk value: length-prefixed records)
    _legacy_chunk(path, 1, value[:cut])
    store = RocksStore(path)
    try:
        assert _offsets(store.read_stream(STREAM, 0, 1, 1000, None, False)) == ([0], 1)
        with pytest.raises(StoreError, match=f"stream {STREAM}"):
            store.read_stream(STREAM, 0, 10, 1000, None, False)
    finally:
        store.close()


@pytest.mark.parametrize("broken", [b"", b"\x01\x09eu"], ids=["empty record", "filter past its record"])
def test_a_record_too_short_for_what_it_holds_is_a_store_error_even_to_a_filtered_read(path, broken) -> None:
    """Records are parsed in place in the chunk: a broken one must not borrow the bytes of the
    record after it (whose length prefix would read as "no filter value")."""
    good = b"\x00" + struct.pack(">d", 1.0) + ROUTING + struct.pack(">I", len(HEADER)) + HEADER + b"body"
    store = RocksStore(path)
    store.close()
    _legacy_chunk(path, 0, struct.pack(">I", len(broken)) + broken + struct.pack(">I", len(good)) + good)
    store = RocksStore(path)
    try:
        for filters, match_unfiltered in ((frozenset({"eu"}), False), (None, False)):
            with pytest.raises(StoreError, match=f"stream {STREAM}"):
                store.read_stream(STREAM, 0, 10, 1000, filters, match_unfiltered)
    finally:
        store.close()


def test_an_unknown_stream_record_flag_is_a_store_error(path) -> None:
    store = RocksStore(path)
    store.close()
    _legacy_chunk(path, 0, struct.pack(">I", 41) + b"\x07" + b"\x00" * 40)
    store = RocksStore(path)
    try:
        with pytest.raises(StoreError, match="unknown stream record flag"):
            store.read_stream(STREAM, 0, 10, 1000, None, False)
    finally:
        store.close()
