"""Streams' messages in segment files beside RocksDB, written by the sync's worker thread, read
with ``pread``: the event loop never touches these files.

A stream's segments are files in its own directory, ``<root>/<stream id>/<first offset>.seg``
(the first offset in 20 digits). A segment is a run of chunks, each a header and the chunk's
records (the store's encoding, ``rocks._chunk_value``)::

    magic b"AMS1" | first offset (8) | message count (4) | records' length (4) | CRC-32 of the records (4)

The chunk index stays in RocksDB (``k`` records, written in the same batch as everything else),
and says where each chunk is: its segment, position and length. On the loop,
:meth:`StreamFiles.append` only works out that place (the segment's end, kept in memory), takes
the records' CRC-32 and keeps them; :meth:`commit` hands them over once the RocksDB batch with
their index records is in (:meth:`abort` forgets an attempt that failed, so a retry takes the
same places). Then the sync, in a worker thread (:meth:`sync_files`, before RocksDB syncs its
WAL):

- writes every chunk handed over at its place (one ``pwritev`` per run of a segment's chunks; a
  chunk not written yet is read from memory meanwhile), and syncs the segments (``fdatasync``)
  and the directories of new ones: a confirmed chunk is on disk with its index; how far each
  stream is durable is recorded (a ``y`` record) for recovery;
- returns the removals (retention's old segments, a deleted stream's directory) that the index
  deletions before it allow, which the store carries out once the WAL is synced, so the index
  never names a file that is gone.

After a crash the index may name chunks that were never written (they were not confirmed): at
recovery (:meth:`recover_stream`) every chunk past the durable mark is read and checked, chunks
whose bytes are missing or do not check are dropped with every later one, and the last segment is
cut back to its last good chunk, where appends go on.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = ["StreamFiles", "ChunkPlace", "CHUNK_HEAD", "FileChunkError", "remove_paths"]

log = logging.getLogger("amqpbroker.store")

CHUNK_HEAD = struct.Struct(">4sQIII")  # magic, first offset, count, records' length, CRC-32
MAGIC = b"AMS1"
SUFFIX = ".seg"


class FileChunkError(Exception):
    """A chunk's bytes are missing or do not check."""


class ChunkPlace(NamedTuple):
    segment: int  # the segment's first offset (its file name)
    position: int  # where the chunk's header starts
    length: int  # header and records


class _Write(NamedTuple):
    """A chunk handed over for the next sync to write."""

    stream_id: int
    segment: int
    position: int
    first_offset: int
    count: int
    records: bytes
    crc: int


def _segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


RUN_CHUNKS = 256  # chunks written with one pwritev at most (two buffers each; IOV_MAX is 1024)


def _runs(writes: Iterable[_Write]) -> Iterator[list[_Write]]:
    """Consecutive chunks of one segment, each starting where the one before ended."""
    run: list[_Write] = []
    for write in writes:
        if run:
            last = run[-1]
            if (write.stream_id != last.stream_id or write.segment != last.segment or len(run) >= RUN_CHUNKS
                    or write.position != last.position + CHUNK_HEAD.size + len(last.records)):
                yield run
                run = []
        run.append(write)
    if run:
        yield run


def _write_parts(fd: int, parts: list[bytes], position: int) -> None:
    written = os.pwritev(fd, parts, position)
    total = sum(map(len, parts))
    if written < total:  # (a short write: the rest as one buffer)
        _write_all(fd, b"".join(parts)[written:], position + written)


def _write_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        if written <= 0:  # (pwrite raises on errors; nothing written is ENOSPC in effect)
            raise OSError(errno.ENOSPC, "no space left on device")
        view = view[written:]
        position += written


class StreamFiles:
    """The segment files of every stream under ``root``. The loop keeps each stream's segment
    and end and hands chunks over; one worker thread at a time syncs (writes, ``fdatasync``);
    reads come from other worker threads. A lock guards what they share."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        # the loop's: where each stream's next chunk goes, and its segments' first offsets
        self._ends: dict[int, tuple[int, int]] = {}  # stream id -> (segment, end)
        self._segments: dict[int, list[int]] = {}
        # the batch being written (until commit or abort)
        self._batch: list[_Write] = []
        self._batch_ends: dict[int, tuple[int, int]] = {}
        self._batch_removals: list[tuple[int, int | None]] = []  # (stream id, below offset | None: all)
        # shared, under the lock: chunks handed over and not written yet, removals the next sync allows
        self._lock = threading.Lock()
        self._unwritten: dict[tuple[int, int, int], _Write] = {}  # (stream, segment, position) -> chunk
        self._removals: list[tuple[int, int | None]] = []  # (stream id, segment | None: the stream)
        # the syncing thread's: open segment files
        self._fds: dict[tuple[int, int], int] = {}

    def stream_dir(self, stream_id: int) -> str:
        return os.path.join(self.root, str(stream_id))

    def _path(self, stream_id: int, segment: int) -> str:
        return os.path.join(self.stream_dir(stream_id), _segment_name(segment))

    # ------------------------------------------------------------ on the loop: no I/O

    def append(self, stream_id: int, first_offset: int, count: int, segment_start: bool,
               records: bytes) -> ChunkPlace:
        """Where a chunk goes (the next sync writes it, once :meth:`commit` handed it over)."""
        state = self._batch_ends.get(stream_id) or self._ends.get(stream_id)
        segment, position = (first_offset, 0) if state is None or segment_start else state
        length = CHUNK_HEAD.size + len(records)
        # (the CRC here: in the syncing thread, each call would wait for the loop to hand the GIL back)
        self._batch.append(_Write(stream_id, segment, position, first_offset, count, records, zlib.crc32(records)))
        self._batch_ends[stream_id] = (segment, position + length)
        return ChunkPlace(segment, position, length)

    def drop_below(self, stream_id: int, below_offset: int) -> None:
        """Retention: the segments holding only offsets below ``below_offset`` go (after the sync
        that drops their index records); never the one appended to."""
        self._batch_removals.append((stream_id, below_offset))

    def drop_stream(self, stream_id: int) -> None:
        """A deleted stream: its directory goes after the next sync."""
        self._batch_removals.append((stream_id, None))

    def commit(self) -> None:
        """The batch with these chunks' index records is written: hand them over."""
        removals: list[tuple[int, int | None]] = []
        for write in self._batch:
            firsts = self._segments.setdefault(write.stream_id, [])
            if not firsts or firsts[-1] != write.segment:
                firsts.append(write.segment)
        self._ends.update(self._batch_ends)
        for stream_id, below in self._batch_removals:
            if below is None:
                self._ends.pop(stream_id, None)
                self._segments.pop(stream_id, None)
                removals.append((stream_id, None))
                continue
            firsts = self._segments.get(stream_id, [])
            keep = 0  # a segment goes when the next one starts at or below ``below``; the last stays
            while keep + 1 < len(firsts) and firsts[keep + 1] <= below:
                removals.append((stream_id, firsts[keep]))
                keep += 1
            del firsts[:keep]
        with self._lock:
            for write in self._batch:
                self._unwritten[(write.stream_id, write.segment, write.position)] = write
            self._removals += removals
        self.abort()

    def abort(self) -> None:
        """Forget the batch (a failed one is written again, with the same places)."""
        self._batch = []
        self._batch_ends.clear()
        self._batch_removals = []

    # ------------------------------------------------------------ syncing, in a worker thread

    def sync_files(self) -> tuple[list[tuple[int, int | None]], dict[int, tuple[int, int]]]:
        """Write every chunk handed over and make it durable. Returns the removals the caller
        carries out (:meth:`remove`) once RocksDB's WAL is synced too (the index records naming
        them are gone in it; if that sync fails, :meth:`keep_removals`), and how far each stream
        written is now durable: ``(segment, end)`` (recovery checks every chunk after that). A
        sync that fails keeps every chunk it took, to be written again by the next one (after a
        failed ``fdatasync`` the page cache cannot be trusted)."""
        with self._lock:
            writes = list(self._unwritten.values())
            removals, self._removals = self._removals, []
        dropped = {stream_id for stream_id, segment in removals if segment is None}
        durable: dict[int, tuple[int, int]] = {}
        try:
            written = set()
            new_dirs = set()
            for run in _runs(write for write in writes if write.stream_id not in dropped):
                first, last = run[0], run[-1]
                durable[first.stream_id] = (last.segment, last.position + CHUNK_HEAD.size + len(last.records))
                fd = self._fd(first.stream_id, first.segment, new_dirs)
                parts = []
                for write in run:
                    parts += (CHUNK_HEAD.pack(MAGIC, write.first_offset, write.count, len(write.records), write.crc),
                              write.records)
                _write_parts(fd, parts, first.position)  # (one system call: one wait for the GIL after it)
                written.add(fd)
            for fd in written:
                os.fdatasync(fd)
            for directory in new_dirs:
                _sync_dir(directory)
        except BaseException:
            with self._lock:  # nothing is lost: the next sync tries again
                self._removals[:0] = removals
            raise
        with self._lock:
            for write in writes:
                self._unwritten.pop((write.stream_id, write.segment, write.position), None)
        self._close_older_segments()
        return removals, durable

    def keep_removals(self, removals: list[tuple[int, int | None]]) -> None:
        """The WAL sync after :meth:`sync_files` failed: its removals wait for the next sync."""
        with self._lock:
            self._removals[:0] = removals

    def remove(self, removals: list[tuple[int, int | None]]) -> None:
        """Remove what :meth:`sync_files` returned (its index records are synced away)."""
        paths = []
        for stream_id, segment in removals:
            if segment is None:
                for key in [key for key in self._fds if key[0] == stream_id]:
                    os.close(self._fds.pop(key))
                paths.append(self.stream_dir(stream_id))
            else:
                fd = self._fds.pop((stream_id, segment), None)
                if fd is not None:
                    os.close(fd)
                paths.append(self._path(stream_id, segment))
        remove_paths(paths)

    def _fd(self, stream_id: int, segment: int, new_dirs: set[str]) -> int:
        fd = self._fds.get((stream_id, segment))
        if fd is None:
            directory = self.stream_dir(stream_id)
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                new_dirs.add(self.root)
            path = self._path(stream_id, segment)
            if not os.path.exists(path):
                new_dirs.add(directory)
            fd = self._fds[(stream_id, segment)] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        return fd

    def _close_older_segments(self) -> None:
        """Keep one open file per stream: its newest segment."""
        newest: dict[int, int] = {}
        for stream_id, segment in self._fds:
            newest[stream_id] = max(segment, newest.get(stream_id, segment))
        for key in [key for key in self._fds if key[1] != newest[key[0]]]:
            os.close(self._fds.pop(key))

    # ------------------------------------------------------------ reading, in a worker thread

    def read(self, stream_id: int, segment: int, position: int, length: int, first_offset: int,
             count: int, fds: dict[str, int]) -> tuple[bytes, int]:
        """A chunk's records, checked, and where in the value returned they start (``fds``:
        files this read opened, closed by the caller)."""
        with self._lock:
            unwritten = self._unwritten.get((stream_id, segment, position))
        if unwritten is not None:  # handed over, not written yet
            if unwritten.first_offset != first_offset or unwritten.count != count:
                raise FileChunkError(f"chunk at {position} of segment {segment} is not the one indexed")
            return unwritten.records, 0
        path = self._path(stream_id, segment)
        fd = fds.get(path)
        if fd is None:
            try:
                fd = fds[path] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise FileChunkError(f"segment {path} is missing") from None
        data = os.pread(fd, length, position)
        return _records(data, length, first_offset, count, path, position)

    # ------------------------------------------------------------ recovery (blocking, before serving)

    def recover_stream(self, stream_id: int, places: list[tuple[int, int, int, int, int]],
                       durable: tuple[int, int] | None) -> int:
        """Check a stream's files against its index, ``(first offset, count, segment, position,
        length)`` per chunk in offset order: how many chunks from the start are good (the rest
        are to be dropped). Every chunk past ``durable`` (the ``(segment, end)`` the last sync
        made durable; None: unknown, all) is read and its CRC checked. Cuts the last segment
        back to its last good chunk, removes segment files no good chunk is in, and appends go
        on after the last good chunk."""
        directory = self.stream_dir(stream_id)
        files = {}
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.endswith(SUFFIX) and name[:-len(SUFFIX)].isdigit():
                    files[int(name[:-len(SUFFIX)])] = os.path.getsize(os.path.join(directory, name))
        good = 0
        verify_from = 0
        if durable is not None:
            while verify_from < len(places):
                _, _, segment, position, length = places[verify_from]
                if (segment, position + length) > durable:
                    break
                verify_from += 1
        fds: dict[str, int] = {}
        try:
            for index, (first_offset, count, segment, position, length) in enumerate(places):
                size = files.get(segment)
                if size is None or position + length > size:
                    break
                if index >= verify_from:
                    try:
                        self.read(stream_id, segment, position, length, first_offset, count, fds)
                    except FileChunkError:
                        break
                good += 1
        finally:
            for fd in fds.values():
                os.close(fd)
        if good < len(places):
            log.error("stream %d: %d of its newest chunks were not on disk whole (never confirmed); "
                      "dropped from offset %d on", stream_id, len(places) - good, places[good][0])
        used = sorted({place[2] for place in places[:good]})
        for first in files:
            if first not in used:
                os.unlink(os.path.join(directory, _segment_name(first)))
        self._ends.pop(stream_id, None)
        self._segments.pop(stream_id, None)
        if used:
            last = places[good - 1]
            end = last[3] + last[4]
            if files[last[2]] > end:
                fd = os.open(self._path(stream_id, last[2]), os.O_RDWR)
                try:
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._ends[stream_id] = (last[2], end)
            self._segments[stream_id] = used
        elif os.path.isdir(directory):
            shutil.rmtree(directory)
        return good

    def stream_ids(self) -> list[int]:
        """The streams that have a directory."""
        return [int(name) for name in os.listdir(self.root) if name.isdigit()]

    def close(self) -> None:
        """Close every file (the store synced them first)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _records(data: bytes, length: int, first_offset: int, count: int, path: str,
             position: int) -> tuple[bytes, int]:
    """A chunk read back, checked: the data, and where its records start (after the head)."""
    if len(data) != length or length < CHUNK_HEAD.size:
        raise FileChunkError(f"chunk at {position} of {path} is cut short")
    magic, first, chunk_count, records_length, crc = CHUNK_HEAD.unpack_from(data)
    if (magic != MAGIC or first != first_offset or chunk_count != count
            or records_length != length - CHUNK_HEAD.size):
        raise FileChunkError(f"chunk at {position} of {path} is not the one indexed (offset {first_offset})")
    with memoryview(data) as view:
        if zlib.crc32(view[CHUNK_HEAD.size:]) != crc:
            raise FileChunkError(f"chunk at {position} of {path} fails its CRC (offset {first_offset})")
    return data, CHUNK_HEAD.size


def remove_paths(paths: list[str]) -> None:
    for path in paths:
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # left behind: recovery removes what no index names
            log.warning("could not remove %s: %s", path, exc)


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # (removed since: nothing to make durable)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
