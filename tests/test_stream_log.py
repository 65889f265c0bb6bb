"""The stream log (chunk and segment index, tail, retention) and x-stream-offset parsing: sans-IO."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amqpbroker.broker.message import Message
from amqpbroker.broker.stream_log import Chunk, StreamLog
from amqpbroker.broker.arguments import max_age_error
from amqpbroker.broker.stream_offsets import OffsetSpec, parse_duration, start_offset
from amqpbroker.codec.tables import Timestamp


def _message(size: int = 10) -> Message:
    return Message("", "s", b"\x00\x01s", b"", b"x" * size)


def _log(segment: int = 1000, tail_messages: int = 100, tail_bytes: int = 1 << 20) -> StreamLog:
    return StreamLog(max_segment_bytes=segment, tail_messages=tail_messages, tail_bytes=tail_bytes)


def _fill(log: StreamLog, chunks: list[int], size: int = 10, start: float = 1000.0) -> None:
    """Append chunks of the given message counts, one second apart."""
    for index, count in enumerate(chunks):
        for _ in range(count):
            log.append(_message(size), None, start + index)
        log.close_chunk()


def test_offsets_count_up_and_chunks_close_per_batch() -> None:
    log = _log()
    _fill(log, [3, 2])
    assert (log.first, log.next, log.count, log.chunk_count) == (0, 5, 5, 2)
    assert log.last_chunk_start() == 3
    log.append(_message(), None, 2000.0)
    assert log.last_chunk_start() == 5  # the chunk still open counts as the newest
    assert log.close_chunk() == Chunk(5, 2000.0, 1, 10, False)
    assert log.close_chunk() is None


def test_the_tail_keeps_the_newest_messages_within_its_bounds() -> None:
    log = _log(tail_messages=4)
    _fill(log, [10])
    assert log.tail_base == 6 and len(log.tail) == 4
    assert log.tailed(5) is None and log.tailed(6) is not None and log.tailed(10) is None
    by_bytes = _log(tail_bytes=25)
    _fill(by_bytes, [5])
    assert len(by_bytes.tail) == 2 and by_bytes.tail_base == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), max_size=30), max_size=12), st.integers(1, 20),
       st.integers(1, 1000))
def test_the_tail_is_trimmed_per_batch_to_its_bounds_keeping_the_newest(batches, messages, max_bytes) -> None:
    """Within a batch the tail may run past its bounds (by TAIL_SLACK); once the chunk closes it
    holds the newest messages within both bounds, at least one, each at its offset."""
    log = _log(tail_messages=messages, tail_bytes=max_bytes)
    sizes: list[int] = []
    for batch in batches:
        for size in batch:
            assert log.append(_message(size), None, 1000.0) == len(sizes)
            sizes.append(size)
        log.close_chunk()
        kept = len(log.tail)
        assert log.tail_base + kept == log.next == len(sizes)
        assert log.tail_bytes == sum(sizes[log.tail_base:])
        if sizes:
            assert 1 <= kept <= messages
            assert log.tail_bytes <= max_bytes or kept == 1
            # nothing more was dropped than the bounds asked: one more would break one of them
            if log.tail_base:
                assert kept == messages or log.tail_bytes + sizes[log.tail_base - 1] > max_bytes
        for offset in range(log.tail_base, log.next):
            assert len(log.tailed(offset)[0].body) == sizes[offset]


def test_a_timestamp_finds_the_first_chunk_that_began_at_or_after_it() -> None:
    log = _log()
    _fill(log, [2, 2, 2])  # chunks at 1000, 1001, 1002
    assert log.offset_at(999.0) == 0
    assert log.offset_at(1000.5) == 2
    assert log.offset_at(1002.0) == 4
    assert log.offset_at(5000.0) == 6


def test_segments_start_once_the_current_one_is_full_and_retention_drops_whole_old_ones() -> None:
    log = _log(segment=50)  # chunks of 30 bytes: a segment is two chunks
    _fill(log, [3] * 6)
    assert log.segment_count == 3
    assert log.retain(now=2000.0, max_bytes=100, max_age=None) == 12  # 180 bytes: two segments go
    assert (log.first, log.nbytes, log.segment_count) == (12, 60, 1)
    assert log.retain(now=2000.0, max_bytes=1, max_age=None) is None  # never the segment being written
    assert log.count == 6


def test_age_retention_drops_segments_whose_newest_chunk_is_too_old() -> None:
    log = _log(segment=50)
    _fill(log, [3] * 6, start=1000.0)  # segments end at 1001, 1003, 1005
    assert log.retain(now=1010.0, max_bytes=None, max_age=8.0) == 6  # only the one ending at 1001 is older than 1002
    assert log.first == 6 and log.segment_count == 2


def test_retention_trims_a_tail_reaching_before_the_new_first_offset() -> None:
    log = _log(segment=20, tail_messages=1000)
    _fill(log, [2] * 4)
    log.retain(now=2000.0, max_bytes=20, max_age=None)
    assert log.tail_base == log.first
    assert log.tailed(log.first) is not None


def test_restore_rebuilds_offsets_index_and_segments_without_messages() -> None:
    log = _log(segment=50)
    log.restore([Chunk(10, 1000.0, 3, 30, True), Chunk(13, 1001.0, 3, 30, False), Chunk(16, 1002.0, 2, 20, True)])
    assert (log.first, log.next, log.nbytes, log.tail_base, len(log.tail)) == (10, 18, 80, 18, 0)
    assert log.last_chunk_start() == 16 and log.segment_count == 2
    assert log.offset_at(1000.5) == 13
    log.append(_message(), None, 1003.0)
    assert log.close_chunk().first_offset == 18
    assert (log.nbytes, log.tail_bytes, len(log.tail), log.tail_base) == (90, 10, 1, 18)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40), st.booleans()), max_size=40),
       st.integers(10, 200), st.one_of(st.none(), st.integers(0, 500)))
def test_retention_keeps_the_log_consistent(batches, segment, max_bytes) -> None:
    log = _log(segment=segment, tail_messages=8)
    sizes: dict[int, int] = {}
    now = 1000.0
    for count, size, retain in batches:
        for _ in range(count):
            sizes[log.append(_message(size), None, now)] = size
        log.close_chunk()
        now += 1
        if retain:
            log.retain(now, max_bytes, None)
        assert 0 <= log.first <= log.next
        assert log.nbytes == sum(size for offset, size in sizes.items() if offset >= log.first)
        assert log.tail_base + len(log.tail) == log.next and log.tail_base >= log.first - 0
        assert len(log.tail) <= 8
        if log.count:
            assert log.first <= log.last_chunk_start() < log.next
            assert log.segment_count >= 1


@pytest.mark.parametrize("text, seconds", [("7D", 7 * 86400), ("12h", 43200), ("30m", 1800), ("10s", 10),
                                           ("1Y", 365 * 86400), ("2M", 60 * 86400)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value, error", [("7X", "invalid_max_age"), ("h", "invalid_max_age"), ("", "invalid_max_age"),
                                          (7, "{unacceptable_type,signedint}"), ("10s", None), (b"1D", None)])
def test_max_age_errors_as_rabbitmq(value, error) -> None:
    assert max_age_error(value) == error


def test_offset_specs_and_where_they_start() -> None:
    log = _log(segment=10_000)
    _fill(log, [2, 2, 2])  # at 1000, 1001, 1002
    now = 1003.0
    assert start_offset(OffsetSpec.parse("first"), log, now) == 0
    assert start_offset(OffsetSpec.parse(b"last"), log, now) == 4
    assert start_offset(OffsetSpec.parse("next"), log, now) == 6
    assert start_offset(OffsetSpec.parse(None), log, now) == 6  # the default, as RabbitMQ
    assert start_offset(OffsetSpec.parse(3), log, now) == 3
    assert start_offset(OffsetSpec.parse(-1), log, now) == 5  # LavinMQ's: the n-th from the end
    assert start_offset(OffsetSpec.parse(-4), log, now) == 2
    assert start_offset(OffsetSpec.parse(-50), log, now) == 0
    assert start_offset(OffsetSpec.parse(99), log, now) == 6
    assert start_offset(OffsetSpec.parse(Timestamp(1001)), log, now) == 2
    moment = datetime.datetime.fromtimestamp(1001.5, datetime.timezone.utc)
    assert start_offset(OffsetSpec.parse(moment), log, now) == 4
    assert start_offset(OffsetSpec.parse("2s"), log, now) == 2


@pytest.mark.parametrize("value", ["abc", "10x", True, 2.5, {"a": 1}, [1]])
def test_bad_offset_specs_are_refused(value) -> None:
    with pytest.raises(ValueError):
        OffsetSpec.parse(value)
