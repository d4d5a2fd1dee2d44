"""Regular expressions for formulas and filters, with bounds so that a pattern cannot hang a
sync (Python's ``re`` has no timeout of its own).

Three layers: the input and the pattern have bounded lengths; patterns with the shapes that
backtrack exponentially (a repetition inside a repetition, a back-reference under a
repetition) are refused; and in the main thread, where Airflow runs a task, each call gets a
wall-clock deadline through SIGALRM (``re`` checks for signals while it matches). An outer
timer already armed (e.g. Airflow's execution_timeout) is suspended meanwhile and re-armed with
the time it has left.
"""

from __future__ import annotations

import functools
import re
import re._parser as sre_parse  # the stdlib's own pattern parser, used to inspect a pattern
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MAX_PATTERN = 1_000
MAX_INPUT = 200_000
MAX_OUTPUT = 2_000_000
DEADLINE_SECONDS = 1.0

_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


class RegexError(ValueError):
    """A pattern was refused, could not be compiled, or took too long."""


class _Deadline(BaseException):
    # BaseException so that nothing between the signal and us swallows it.
    pass


def _risky(items: Any, in_repeat: bool) -> str | None:
    for op, av in items:
        if op in _REPEATS:
            _lo, hi, sub = av
            repeats = hi > 1
            if repeats and in_repeat:
                return "a repetition inside a repetition"
            found = _risky(sub, in_repeat or repeats)
            if found:
                return found
        elif op is sre_parse.GROUPREF and in_repeat:
            return "a back-reference under a repetition"
        elif op is sre_parse.SUBPATTERN:
            found = _risky(av[-1], in_repeat)
            if found:
                return found
        elif op is sre_parse.BRANCH:
            for branch in av[1]:
                found = _risky(branch, in_repeat)
                if found:
                    return found
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT, sre_parse.ATOMIC_GROUP):
            found = _risky(av[-1] if op is not sre_parse.ATOMIC_GROUP else av, in_repeat)
            if found:
                return found
        elif op is sre_parse.GROUPREF_EXISTS:
            for branch in av[1:]:
                if branch is not None:
                    found = _risky(branch, in_repeat)
                    if found:
                        return found
    return None


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str, ignorecase: bool = False) -> re.Pattern[str]:
    """Compile a checked pattern (cached)."""
    if not isinstance(pattern, str):
        raise RegexError(f"the pattern must be text, not {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"the pattern is longer than {MAX_PATTERN} characters")
    flags = re.IGNORECASE if ignorecase else 0
    try:
        risk = _risky(sre_parse.parse(pattern, flags), False)
        compiled = re.compile(pattern, flags)
    except re.error as exc:
        raise RegexError(f"invalid regular expression {pattern!r}: {exc}") from None
    if risk:
        raise RegexError(f"pattern {pattern!r} refused: {risk} can backtrack without end")
    return compiled


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    outer, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    previous = signal.getsignal(signal.SIGALRM)
    if (outer and outer <= seconds) or previous is None:
        # An outer timer fires first anyway, or a handler we could not put back.
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _Deadline

    started = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Deadline:
        raise RegexError(f"the regular expression took longer than {seconds}s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # re-arm the outer timer (e.g. Airflow's execution_timeout) with what is left
            left = max(outer - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _checked_input(text: object) -> str:
    text = "" if text is None else str(text)
    if len(text) > MAX_INPUT:
        raise RegexError(f"text longer than {MAX_INPUT} characters is not matched")
    return text


def regex_match(text: object, pattern: str, ignorecase: bool = False) -> bool:
    """Whether the pattern matches at the start of the text (``re.match``)."""
    compiled = compile_pattern(pattern, ignorecase)
    subject = _checked_input(text)
    with _deadline(DEADLINE_SECONDS):
        return compiled.match(subject) is not None


def regex_search(text: object, pattern: str, ignorecase: bool = False) -> bool:
    """Whether the pattern matches anywhere in the text (``re.search``)."""
    compiled = compile_pattern(pattern, ignorecase)
    subject = _checked_input(text)
    with _deadline(DEADLINE_SECONDS):
        return compiled.search(subject) is not None


def regex_replace(
    text: object, pattern: str, replacement: str = "", ignorecase: bool = False
) -> str:
    """Replace every match (``re.sub``; ``\\1``/``\\g<name>`` allowed in the replacement),
    refusing results larger than MAX_OUTPUT characters."""
    compiled = compile_pattern(pattern, ignorecase)
    subject = _checked_input(text)
    budget = [MAX_OUTPUT - len(subject)]

    def expand(match: re.Match[str]) -> str:
        piece = match.expand(str(replacement))
        budget[0] -= len(piece)
        if budget[0] < 0:
            raise RegexError(f"the replacement result exceeds {MAX_OUTPUT} characters")
        return piece

    replace: Callable[[re.Match[str]], str] = expand
    try:
        with _deadline(DEADLINE_SECONDS):
            return compiled.sub(replace, subject)
    except re.error as exc:
        raise RegexError(f"invalid replacement {replacement!r}: {exc}") from None
