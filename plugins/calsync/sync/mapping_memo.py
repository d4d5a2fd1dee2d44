"""Remembered filter and mapping results of forward records, keyed by the fields they read.

An internal meeting reaches calsync once per attendee mailbox holding a copy, and the copies
differ only in fields no mapping reads (the item's id, its web link). Filters and mappings
are pure functions of the record's fields (and of the integration's variables, fixed for a
task), so a result computed for one copy is the result for every record that agrees on the
fields the filters and the mapping read: the memo is keyed by those fields' values. When a
formula or filter can read the record in ways the compiled check cannot list (``src`` passed
whole, ``src.get(x)``, ``src[x]``), nothing is remembered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import orjson

from calsync.errors import MappingError

MAX_ENTRIES = 4096
MAX_CHARS = 16_000_000  # keys and mapped texts held at most (a details field may be 1 MiB)


@dataclass(frozen=True, slots=True)
class Mapped:
    """What the filters and the mapping made of one record."""

    filter_error: str | None = None  # a filter condition failed (MappingError text)
    skip: str | None = None  # the first filter that matched: its reason
    fields: dict[str, str] | None = None  # the mapped target fields
    map_error: str | None = None  # the mapping failed (MappingError text)


class MappingMemo:
    """One task's memo (thread-safe; bounded to ``MAX_ENTRIES`` results and about
    ``MAX_CHARS`` characters: past either, it starts afresh)."""

    def __init__(self, mapping: Any, filters: Any) -> None:
        self._mapping = mapping
        self._filters = filters
        reads = [getattr(mapping, "source_fields", None), getattr(filters, "source_fields", None)]
        self._fields: tuple[str, ...] | None = (
            None if any(r is None for r in reads) else tuple(sorted(set().union(*reads)))
        )
        self._results: dict[bytes, Mapped] = {}
        self._chars = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def map(self, record: dict[str, Any], variables: dict[str, Any]) -> Mapped:
        if self._fields is None:
            return self._compute(record, variables)
        key = orjson.dumps(
            [[name in record, record.get(name)] for name in self._fields],
            default=repr,
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        )
        with self._lock:
            found = self._results.get(key)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
        result = self._compute(record, variables)
        size = len(key) + sum(map(len, (result.fields or {}).values()))
        with self._lock:
            if len(self._results) >= MAX_ENTRIES or self._chars + size > MAX_CHARS:
                self._results.clear()
                self._chars = 0
            self._results[key] = result
            self._chars += size
        return result

    def _compute(self, record: dict[str, Any], variables: dict[str, Any]) -> Mapped:
        try:
            reason = self._filters.skip_reason(record)
        except MappingError as exc:
            return Mapped(filter_error=str(exc))
        if reason is not None:
            return Mapped(skip=reason)
        try:
            return Mapped(fields=self._mapping.apply(record, variables))
        except MappingError as exc:
            return Mapped(map_error=str(exc))
