"""Lists as RabbitMQ's management API answers them: filtered by name, sorted, cut to columns, paged.

The query parameters are checked as RabbitMQ checks them (a 400 with its ``error`` and ``reason``
for an unreadable or out-of-range page). The name filter can be a regular expression written by
any management user, so it never runs on the event loop: it runs in a worker thread under the
``regex`` module, which releases the GIL while it matches and gives up at a deadline, and a
pattern that would take too much memory to compile is refused before it is compiled.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import regex

from amqpbroker.http.errors import HTTPError, bad_request

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "REGEX_BUDGET", "Lister", "Page", "page_of", "columns"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
# Seconds of matching one list's name filter may take (``regex`` overshoots its timeout by up to
# about 2.5 times, so a hostile pattern holds its thread for well under a second).
REGEX_BUDGET = 0.3
# ``regex`` expands a counted repeat (``x{1000}``) when it compiles; pattern length times the
# product of the counts bounds that (about 300 bytes each), so a pattern past this is refused.
MAX_REGEX_EXPANSION = 100_000
INVALID = "Pagination parameters are invalid"  # RabbitMQ's reason for an unreadable page or pattern
TOO_SLOW = "Pagination parameters are invalid: the name pattern took too long to match"

_INTEGER = re.compile(r"[+-]?[0-9]+")
_COUNTED = re.compile(r"\{([0-9]+)(?:,[0-9]*)?\}")


@dataclass(frozen=True, slots=True)
class Page:
    number: int
    size: int
    name: str | None
    use_regex: bool


def page_of(query: Mapping[str, str]) -> Page | None:
    """The page a query asks for (``page``, ``page_size``, ``name``, ``use_regex``), or None
    without ``page``; RabbitMQ's 400s for anything it would refuse."""
    number, size = _integer(query, "page"), _integer(query, "page_size")
    if number is None:
        return None
    if number < 1 or (size is not None and not 1 <= size <= MAX_PAGE_SIZE):
        shown = "undefined" if size is None else size
        raise HTTPError(400, "invalid_pagination_parameters",
                        f"Invalid pagination parameters: page number {number}, page size {shown}")
    return Page(number, size or DEFAULT_PAGE_SIZE, query.get("name") or None, query.get("use_regex") == "true")


def _integer(query: Mapping[str, str], key: str) -> int | None:
    text = query.get(key)
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise bad_request(INVALID)
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        raise bad_request(INVALID) from None


class Lister:
    """Shapes a handler's list (or object) into the answer its query asks for."""

    def __init__(self, regex_budget: float = REGEX_BUDGET) -> None:
        self.regex_budget = regex_budget
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop, at first use

    async def shape(self, result: Any, query: Mapping[str, str]) -> Any:
        if isinstance(result, list):
            return await self._shape_list(result, query)
        if isinstance(result, dict) and "columns" in query:
            return columns(result, _column_list(query))
        return result

    async def _shape_list(self, items: list[Any], query: Mapping[str, str]) -> Any:
        page = page_of(query)
        shaped = items if page is None or page.name is None else await self._named(items, page)
        if query.get("sort"):
            path = query["sort"]
            key = _natural_key if query.get("sort_natural") == "true" else _sort_key  # (ours: the web UI's)
            shaped = sorted(shaped, key=lambda item: key(dig(item, path)), reverse=query.get("sort_reverse") == "true")
        if "columns" in query:
            wanted = _column_list(query)
            shaped = [columns(item, wanted) for item in shaped]
        return shaped if page is None else _paged(shaped, page, len(items))

    async def _named(self, items: list[Any], page: Page) -> list[Any]:
        names = [str(item.get("name", "")) if isinstance(item, dict) else "" for item in items]
        if page.use_regex:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(1)  # one hostile pattern at a time
            kept = await anyio.to_thread.run_sync(search_all, page.name, names, self.regex_budget,
                                                  limiter=self._limiter)
        else:
            kept = [page.name in name for name in names]
        return [item for item, keep in zip(items, kept) if keep]


def search_all(pattern: str, names: list[str], budget: float) -> list[bool]:
    """Which names the pattern matches (``re.search`` semantics); in a worker thread. Raises a
    400 for a pattern that does not compile, is too large, or takes more than ``budget`` seconds."""
    compiled = _compile(pattern)
    deadline = time.monotonic() + budget
    kept = []
    try:
        for name in names:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            kept.append(compiled.search(name, timeout=left, concurrent=True) is not None)
    except TimeoutError:
        raise bad_request(TOO_SLOW) from None
    return kept


def _compile(pattern: str) -> Any:
    expansion = len(pattern)
    for count in _COUNTED.findall(pattern):
        expansion *= max(int(count), 1)
        if expansion > MAX_REGEX_EXPANSION:
            raise bad_request(INVALID)
    try:
        return regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError):
        raise bad_request(INVALID) from None


def _paged(items: list[Any], page: Page, total: int) -> dict[str, Any]:
    """One page, as RabbitMQ cuts it: a page that starts past the end (but for the one just
    after it) is a 400."""
    start = (page.number - 1) * page.size
    if start > len(items):
        raise HTTPError(400, "page_out_of_range",
                        f"Page out of range, page: {page.number} page size: {page.size}, len: {len(items)}")
    chunk = items[start:start + page.size]
    return {"filtered_count": len(items), "item_count": len(chunk), "items": chunk, "page": page.number,
            "page_count": -(-len(items) // page.size), "page_size": page.size, "total_count": total}


def _column_list(query: Mapping[str, str]) -> list[str]:
    return [column for column in query["columns"].split(",") if column]


def dig(item: Any, path: str) -> Any:
    """The value at a dotted path (``message_stats.publish``), or None."""
    for part in path.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def _sort_key(value: Any) -> tuple:
    """Missing values last, numbers before (and never compared with) anything else."""
    number = isinstance(value, (int, float))
    return (value is None, not number, value if number else str(value))


_DIGITS = re.compile(r"([0-9]+)")


def _natural_key(value: Any) -> tuple:
    """As ``_sort_key``, but runs of digits in text compare as numbers (``q_2`` before ``q_10``)."""
    if isinstance(value, str):
        parts = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(value) if part)
        return (False, True, parts)
    return _sort_key(value)


def columns(item: Any, wanted: list[str]) -> Any:
    """Only the wanted (dotted) columns of an item; a column below a value that is not an
    object is left out, as RabbitMQ leaves it."""
    if not isinstance(item, dict):
        return item
    out: dict[str, Any] = {}
    for column in wanted:
        *parents, last = column.split(".")
        target: Any = out
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target[last] = dig(item, column)
    return out
