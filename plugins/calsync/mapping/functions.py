"""The filters, tests and globals formulas and filter conditions may use: a whitelist.

Everything that can build large values checks the size first, so no expression can allocate
more than MAX_TEXT characters in one step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from jinja2 import filters as jf
from jinja2 import tests as jt
from jinja2.exceptions import SecurityError

from calsync.mapping import regexsafe, text

MAX_TEXT = text.MAX_TEXT
MAX_FORMAT = 100


def check_size(size: int) -> None:
    if size > MAX_TEXT:
        raise SecurityError(f"the result would exceed {MAX_TEXT} characters")


def replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    """``str.replace`` with a size check (``old=""`` inserts at every position)."""
    s, old, new = str(value), str(old), str(new)
    hits = len(s) + 1 if old == "" else s.count(old)
    if count is not None:
        hits = min(hits, max(0, int(count)))
    check_size(len(s) + hits * max(0, len(new) - len(old)))
    return s.replace(old, new, -1 if count is None else int(count))


def join(value: Iterable[Any], separator: str = "") -> str:
    """Join items as text with a size check."""
    pieces = [str(item) for item in value]
    check_size(sum(map(len, pieces)) + len(str(separator)) * max(0, len(pieces) - 1))
    return str(separator).join(pieces)


def truncate(value: Any, length: int = 255, end: str = "…") -> str:
    """At most ``length`` characters, ending with ``end`` when cut."""
    s, length = str(value), max(0, int(length))
    if len(s) <= length:
        return s
    return s[: max(0, length - len(end))] + end


def dateformat(value: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """``strftime`` for the dates and datetimes of a record (empty for None)."""
    if value is None:
        return ""
    if not isinstance(value, dt.date | dt.time):
        raise TypeError(f"dateformat needs a date or datetime, not {type(value).__name__}")
    if len(str(fmt)) > MAX_FORMAT:
        raise SecurityError(f"a date format longer than {MAX_FORMAT} characters")
    return value.strftime(str(fmt))


def _person(item: Any) -> str:
    if isinstance(item, dict):
        email, name = item.get("email", ""), item.get("name", "")
    else:
        email, name = getattr(item, "email", ""), getattr(item, "name", "")
    email, name = text.one_line(str(email or "")), text.one_line(str(name or ""))
    if name and email and name.lower() != email.lower():
        return f"{name} <{email}>"
    return email or name


def format_attendees(value: Iterable[Any], separator: str = ", ") -> str:
    """People ({email, name} dicts) as ``name <email>`` joined with ``separator``."""
    return join((p for p in map(_person, value) if p), separator)


# Jinja's own filters that only read or make bounded values.
_BUILTIN_FILTERS = (
    "lower", "upper", "trim", "capitalize", "title", "default", "d", "string", "int", "float",
    "round", "abs", "length", "count", "wordcount", "first", "last", "min", "max", "sum",
    "list", "sort", "unique", "reverse", "map", "select", "reject", "selectattr", "rejectattr",
)  # fmt: skip


def filters(lookup: Callable[[str, Any], Any]) -> dict[str, Callable[..., Any]]:
    """The filter whitelist; ``lookup(rule, value)`` is the rule library's lookup."""
    found: dict[str, Callable[..., Any]] = {name: jf.FILTERS[name] for name in _BUILTIN_FILTERS}
    found.update(
        {
            "replace": replace,
            "truncate": truncate,
            "join": join,
            "strip_html": text.strip_html,
            "tidy": text.tidy_text,
            "oneline": text.one_line,
            "regex_match": regex_match_filter,
            "regex_search": regex_search_filter,
            "regex_replace": regex_replace_filter,
            "format_attendees": format_attendees,
            "dateformat": dateformat,
            "lookup": lambda value, rule: lookup(rule, value),
        }
    )
    return found


def regex_match_filter(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return regexsafe.regex_match(value, pattern, ignorecase)


def regex_search_filter(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return regexsafe.regex_search(value, pattern, ignorecase)


def regex_replace_filter(
    value: Any, pattern: str, replacement: str = "", ignorecase: bool = False
) -> str:
    return regexsafe.regex_replace(value, pattern, replacement, ignorecase)


def tests() -> dict[str, Callable[..., bool]]:
    """The test whitelist (``x is defined``, ``x is regex_search(p)``...)."""
    allowed = (
        "defined", "undefined", "none", "boolean", "true", "false", "string", "number",
        "integer", "float", "mapping", "sequence", "iterable", "lower", "upper", "divisibleby",
        "even", "odd", "in", "eq", "ne", "lt", "le", "gt", "ge", "==", "!=", "<", "<=", ">",
        ">=", "sameas",
    )  # fmt: skip
    found = {name: jt.TESTS[name] for name in allowed}
    found["regex_match"] = regex_match_filter
    found["regex_search"] = regex_search_filter
    return found


def globals_(lookup: Callable[[str, Any], Any]) -> dict[str, Callable[..., Any]]:
    """The global functions; nothing else (no range, dict, cycler, lipsum, namespace...)."""
    return {
        "lookup": lookup,
        "regex_match": regex_match_filter,
        "regex_search": regex_search_filter,
        "regex_replace": regex_replace_filter,
        "strip_html": text.strip_html,
    }
