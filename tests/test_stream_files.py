"""Streams' segment files beside RocksDB (``store/stream_files.py``) through the real store: where
chunks go, when removed files go (after the sync that dropped their index), what recovery does
with a tail that never reached the disk whole, a write that fails half-way, and a property test
against a model of the log across reopenings."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from amqpbroker.store.base import StoredMessage, StoreError, StreamChunk
from amqpbroker.store.rocks import RocksStore
from amqpbroker.store.stream_files import CHUNK_HEAD
from tests.test_store_streams import _overwrite

ROUTING = b"\x06events\x03key"
HEADER = b"\x00<\x00\x00header"
STREAM = 7


def _chunk(first: int, bodies: list[bytes], segment_start: bool, timestamp: float = 1.0) -> tuple:
    messages = [(None, StoredMessage(ROUTING, HEADER, body, 5.0), HEADER) for body in bodies]
    return ("chunk", STREAM, first, timestamp, len(bodies), sum(map(len, bodies)), segment_start, messages)


def _bodies(store: RocksStore, start: int = 0) -> list[tuple[int, bytes]]:
    included, _ = store.read_stream(STREAM, start, 1 << 20, 1 << 30, None, False)
    return [(offset, message.body) for offset, message in included]


def _segments(root: str) -> list[str]:
    directory = os.path.join(root, str(STREAM))
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.fixture
def paths(tmp_path) -> tuple[str, str]:
    return str(tmp_path / "db"), str(tmp_path / "streams")


def _open(paths: tuple[str, str]) -> RocksStore:
    store = RocksStore(*paths)
    store.recover()
    store.stream_chunks(STREAM)
    return store


def test_chunks_go_to_segment_files_and_old_segments_go_after_the_sync(paths) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"a", b"b"], True), _chunk(2, [b"c"], False)])
        store.write([_chunk(3, [b"d"], True)])  # a second segment
        assert _segments(paths[1]) == []  # written by the sync, not on the loop
        assert _bodies(store) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]  # (read from memory meanwhile)
        store.sync()
        assert _segments(paths[1]) == [f"{0:020d}.seg", f"{3:020d}.seg"]
        size = os.path.getsize(os.path.join(paths[1], str(STREAM), f"{0:020d}.seg"))
        assert size == 2 * CHUNK_HEAD.size + sum(len(record) for record in (b"a", b"b", b"c")) + 3 * (
            4 + 1 + 8 + len(ROUTING) + 4 + len(HEADER))
        store.write([("stream-", STREAM, 3)])  # retention: the first segment
        assert len(_segments(paths[1])) == 2  # still there: its index drop is not synced yet
        assert _bodies(store) == [(3, b"d")]
        store.sync()
        assert _segments(paths[1]) == [f"{3:020d}.seg"]
        store.write([("stream-", STREAM, 4)])  # never the segment appended to
        store.sync()
        assert _segments(paths[1]) == [f"{3:020d}.seg"]
    finally:
        store.close()


def test_a_deleted_stream_directory_goes_after_the_sync_and_an_orphan_one_at_recovery(paths) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"a"], True), ("offset", STREAM, "reader", 0)])
        store.sync()
        store.write([("queue-", "/", "s", STREAM)])
        assert os.path.isdir(os.path.join(paths[1], str(STREAM)))
        store.sync()
        assert not os.path.exists(os.path.join(paths[1], str(STREAM)))
    finally:
        store.close()
    os.makedirs(os.path.join(paths[1], "99"))  # a stream deleted just before a crash
    with open(os.path.join(paths[1], "99", f"{0:020d}.seg"), "wb") as file:
        file.write(b"unindexed")
    store = _open(paths)
    store.close()
    assert not os.path.exists(os.path.join(paths[1], "99"))


def test_the_sync_makes_files_durable_before_the_wal_and_removes_after_it(paths, monkeypatch) -> None:
    store = _open(paths)
    events: list[str] = []
    try:
        store.write([_chunk(0, [b"a"], True)])
        store.sync()
        store.write([_chunk(1, [b"b"], True), _chunk(2, [b"c"], False), ("stream-", STREAM, 1)])
        real_fdatasync, real_unlink = os.fdatasync, os.unlink
        monkeypatch.setattr(os, "fdatasync", lambda fd: (events.append("fdatasync"), real_fdatasync(fd))[1])
        monkeypatch.setattr(os, "unlink", lambda path: (events.append("unlink"), real_unlink(path))[1])
        real_db = store._db

        class WatchedDb:
            def __getattr__(self, name):
                return getattr(real_db, name)

            def flush_wal(self, sync: bool) -> None:
                events.append("wal")
                real_db.flush_wal(sync)

        store._db = WatchedDb()
        store.sync()
        store._db = real_db
    finally:
        monkeypatch.undo()
        store.close()
    assert events[-2:] == ["wal", "unlink"] and events.count("fdatasync") == 1  # (the segment written)
    assert events.index("wal") > max(index for index, event in enumerate(events) if event == "fdatasync")


def test_removals_wait_for_a_wal_sync_that_failed_to_work(paths) -> None:
    """Retention's old segment goes only once the index deletion is synced: a failed WAL sync
    keeps it for the next one."""
    store = _open(paths)
    real_db = store._db

    class FailingWal:
        def __getattr__(self, name):
            return getattr(real_db, name)

        def flush_wal(self, sync: bool) -> None:
            raise OSError(errno.EIO, "Input/output error")

    try:
        store.write([_chunk(0, [b"a"], True), _chunk(1, [b"b"], True)])
        store.sync()
        store.write([("stream-", STREAM, 1)])
        store._db = FailingWal()
        with pytest.raises(StoreError, match="Input/output error"):
            store.sync()
        store._db = real_db
        assert _segments(paths[1]) == [f"{0:020d}.seg", f"{1:020d}.seg"]
        store.sync()
        assert _segments(paths[1]) == [f"{1:020d}.seg"]
    finally:
        store._db = real_db
        store.close()


def test_a_sync_that_fails_half_way_writes_everything_once_the_next_time(paths, monkeypatch) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"a"], True)])
        store.sync()
        real_pwrite = os.pwrite

        def full_disk(fd, parts, position):  # the first chunk and half the second, then no space
            data = b"".join(parts)
            real_pwrite(fd, data[:len(data) - 5], position)
            raise OSError(errno.ENOSPC, "No space left on device")

        store.write([_chunk(1, [b"b"], False), _chunk(2, [b"c"], False)])
        monkeypatch.setattr(os, "pwritev", full_disk)
        with pytest.raises(StoreError, match="No space left"):
            store.sync()
        monkeypatch.undo()
        assert _bodies(store) == [(0, b"a"), (1, b"b"), (2, b"c")]  # still served (from memory)
        store.sync()  # the store writer's retry: everything the failed sync took, again
    finally:
        store.close()
    store = _open(paths)
    try:
        assert _bodies(store) == [(0, b"a"), (1, b"b"), (2, b"c")]
        assert [chunk.first_offset for chunk in store.stream_chunks(STREAM)] == [0, 1, 2]
        assert os.path.getsize(os.path.join(paths[1], str(STREAM), f"{0:020d}.seg")) == 3 * (
            CHUNK_HEAD.size + 4 + 1 + 8 + len(ROUTING) + 4 + len(HEADER) + 1)
    finally:
        store.close()


def test_a_batch_the_store_refused_takes_the_same_places_when_written_again(paths, monkeypatch) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"a"], True)])
        real_write = store._write
        monkeypatch.setattr(store, "_write", lambda batch, options: (_ for _ in ()).throw(StoreError("refused")))
        ops = [_chunk(1, [b"b"], False), _chunk(2, [b"c"], True), _chunk(3, [b"d"], False)]
        with pytest.raises(StoreError, match="refused"):
            store.write(ops)
        monkeypatch.setattr(store, "_write", real_write)
        store.write(ops)
        store.sync()
        assert _segments(paths[1]) == [f"{0:020d}.seg", f"{2:020d}.seg"]
    finally:
        store.close()
    store = _open(paths)
    try:
        assert _bodies(store) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["cut in the last chunk", "last chunk missing", "a byte changed"])
def test_recovery_drops_a_tail_that_is_not_on_disk_whole_and_appends_go_on_after_it(paths, damage) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"one", b"two"], True), _chunk(2, [b"three"], False)])
        store.sync()
        durable = store._db.get(b"y" + struct.pack(">Q", STREAM))
        store.write([_chunk(3, [b"four"], False)])
    finally:
        store.close()
    # as after a power cut in the last sync: the index record of chunk 3 reached the disk (the WAL
    # is written as it goes), its bytes not whole, and that sync's durable mark not at all
    _overwrite(paths[0], b"y" + struct.pack(">Q", STREAM), durable)
    segment = os.path.join(paths[1], str(STREAM), f"{0:020d}.seg")
    size = os.path.getsize(segment)
    last = CHUNK_HEAD.size + 4 + 1 + 8 + len(ROUTING) + 4 + len(HEADER) + len(b"four")
    with open(segment, "r+b") as file:
        if damage == "cut in the last chunk":
            file.truncate(size - 3)
        elif damage == "last chunk missing":
            file.truncate(size - last)
        else:
            file.seek(size - 2)
            file.write(b"XX")
    store = _open(paths)
    try:
        assert store.stream_chunks(STREAM) == [StreamChunk(0, 1.0, 2, 6, True), StreamChunk(2, 1.0, 1, 5, False)]
        assert os.path.getsize(segment) == size - last  # cut back to the last good chunk
        store.write([_chunk(3, [b"FOUR"], False)])
        assert _bodies(store) == [(0, b"one"), (1, b"two"), (2, b"three"), (3, b"FOUR")]
    finally:
        store.close()


def test_a_damaged_byte_in_a_chunk_the_last_sync_made_durable_is_a_read_error_not_a_cut(paths) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"one"], True), _chunk(1, [b"two"], False)])
    finally:
        store.close()
    segment = os.path.join(paths[1], str(STREAM), f"{0:020d}.seg")
    with open(segment, "r+b") as file:
        file.seek(os.path.getsize(segment) - 2)
        file.write(b"XX")
    store = _open(paths)
    try:
        assert len(store.stream_chunks(STREAM)) == 2  # confirmed data is never cut away
        ((offset, message),), _ = store.read_stream(STREAM, 0, 1, 1000, None, False)
        assert (offset, message.body) == (0, b"one")
        with pytest.raises(StoreError, match="CRC"):
            _bodies(store, 1)
    finally:
        store.close()


def test_bytes_after_the_last_indexed_chunk_are_cut_and_unindexed_segments_removed(paths) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(0, [b"one"], True)])
    finally:
        store.close()
    directory = os.path.join(paths[1], str(STREAM))
    segment = os.path.join(directory, f"{0:020d}.seg")
    size = os.path.getsize(segment)
    with open(segment, "ab") as file:
        file.write(b"a chunk whose index never made it")
    with open(os.path.join(directory, f"{1:020d}.seg"), "wb") as file:
        file.write(b"a segment whose first index record never made it")
    store = _open(paths)
    try:
        assert os.path.getsize(segment) == size and _segments(paths[1]) == [f"{0:020d}.seg"]
        store.write([_chunk(1, [b"two"], False)])
        assert _bodies(store) == [(0, b"one"), (1, b"two")]
    finally:
        store.close()


def test_a_damaged_chunk_in_the_middle_is_a_read_error_naming_it(paths) -> None:
    store = _open(paths)
    try:
        store.write([_chunk(first, [b"x" * 10], first == 0) for first in range(100)])
    finally:
        store.close()
    segment = os.path.join(paths[1], str(STREAM), f"{0:020d}.seg")
    with open(segment, "r+b") as file:  # chunk 5's body (in what the last sync made durable)
        file.seek(5 * (os.path.getsize(segment) // 100) + CHUNK_HEAD.size + 30)
        file.write(b"!")
    store = _open(paths)
    try:
        assert len(store.stream_chunks(STREAM)) == 100
        assert [offset for offset, _ in _bodies(store, 6)] == list(range(6, 100))
        with pytest.raises(StoreError, match="CRC"):
            _bodies(store)
    finally:
        store.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=5), st.booleans()),
    st.tuples(st.just("retain"), st.integers(0, 3)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("reopen"))), max_size=25))
def test_the_log_reads_back_as_a_model_of_it_across_syncs_and_reopenings(tmp_path_factory, steps) -> None:
    root = tmp_path_factory.mktemp("log")
    paths = (str(root / "db"), str(root / "streams"))
    model: list[tuple[int, bytes]] = []
    segment_starts: list[int] = []
    next_offset = 0
    store = _open(paths)
    try:
        for step in steps:
            if step[0] == "append":
                bodies, start = step[1], step[2] or not segment_starts
                store.write([_chunk(next_offset, bodies, start)])
                if start:
                    segment_starts.append(next_offset)
                model += [(next_offset + index, body) for index, body in enumerate(bodies)]
                next_offset += len(bodies)
            elif step[0] == "retain" and len(segment_starts) > 1:
                below = segment_starts[min(step[1], len(segment_starts) - 2) + 1]  # whole segments, never the last
                store.write([("stream-", STREAM, below)])
                model = [(offset, body) for offset, body in model if offset >= below]
                segment_starts = [first for first in segment_starts if first >= below]
            elif step[0] in ("sync", "reopen"):
                store.sync()
                assert {f"{first:020d}.seg" for first in segment_starts} <= set(_segments(paths[1]))
                if step[0] == "reopen":
                    store.close()
                    store = _open(paths)
            assert _bodies(store) == model
        store.sync()
        assert set(_segments(paths[1])) == {f"{first:020d}.seg" for first in segment_starts}
    finally:
        store.close()
    assert struct.calcsize(">4sQIII") == CHUNK_HEAD.size


def test_writes_on_the_loop_never_wait_for_the_disk(paths, monkeypatch) -> None:
    """A write (what the loop does) appends, starts segments, schedules retention and deletes,
    and touches no file: writing, syncing and removing happen in ``sync`` alone (a worker
    thread)."""
    store = _open(paths)
    try:
        def forbidden(*args, **kwargs) -> None:
            raise AssertionError("file I/O on the loop")

        for name in ("fsync", "fdatasync", "pwrite", "pwritev", "write", "open", "makedirs", "mkdir", "unlink"):
            monkeypatch.setattr(os, name, forbidden)
        store.write([_chunk(0, [b"a"], True), _chunk(1, [b"b"], True)])
        store.write([_chunk(2, [b"c"], True), ("stream-", STREAM, 2)])
        store.write([("queue-", "/", "s", STREAM)])
        monkeypatch.undo()
        store.sync()
        assert not os.path.exists(os.path.join(paths[1], str(STREAM)))
    finally:
        store.close()
