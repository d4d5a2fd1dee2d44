"""``forward.source_hash``: equal for events mapping reads alike, different when anything it
could read differs — any field of the event, or the mapping context."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from calsync.model import Attendee, SuiteEvent
from calsync.sync.forward import source_hash

ROOT = Path(__file__).resolve().parents[2]
START = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)


def event(**changes: Any) -> SuiteEvent:
    base = SuiteEvent(
        suite_id="AAMk1",
        ical_uid="uid-1",
        subject="周会 Weekly",
        start=START,
        end=START + dt.timedelta(hours=1),
        organizer=Attendee("a@contoso.com", "A", "required", "organizer"),
        attendees=[Attendee("b@contoso.com", "B")],
        categories=["blue"],
        extra={"b": 1, "a": [1, 2]},
    )
    return dataclasses.replace(base, **changes)


# one different value per field (each must change the hash)
OTHER: dict[str, Any] = {
    "suite_id": "AAMk2",
    "ical_uid": "uid-2",
    "subject": "周会 Weekly!",
    "start": START + dt.timedelta(minutes=1),
    "end": START + dt.timedelta(hours=2),
    "all_day": True,
    "start_date": dt.date(2026, 12, 1),
    "end_date": dt.date(2026, 12, 2),
    "timezone": "Asia/Shanghai",
    "location": "会议室01",
    "body": "<p>agenda</p>",
    "body_type": "html",
    "organizer": Attendee("a@contoso.com", "A", "required", "accepted"),
    "attendees": [Attendee("b@contoso.com", "B", "optional")],
    "series_id": "master-1",
    "original_start": START,
    "event_type": "occurrence",
    "is_cancelled": True,
    "sensitivity": "private",
    "show_as": "free",
    "importance": "high",
    "categories": ["red"],
    "change_key": "ck-2",
    "last_modified": START,
    "calsync_key": "calsync:it:1",
    "extra": {"b": 2, "a": [1, 2]},
}


def test_every_field_is_covered() -> None:
    assert set(OTHER) == {f.name for f in dataclasses.fields(SuiteEvent)}


@pytest.mark.parametrize("name", sorted(OTHER))
def test_any_field_changes_it(name: str) -> None:
    assert source_hash("ctx", event(**{name: OTHER[name]})) != source_hash("ctx", event())


def test_equal_events_and_contexts_give_equal_hashes() -> None:
    assert source_hash("ctx", event()) == source_hash("ctx", event())
    # the order a suite's extra fields came in does not matter
    assert source_hash("ctx", event(extra={"a": [1, 2], "b": 1})) == source_hash("ctx", event())
    assert source_hash("ctx2", event()) != source_hash("ctx", event())


def test_it_is_the_same_in_another_process() -> None:
    """Stored on links and compared by later tasks: no per-process salt (str hashing)."""
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from tests.unit.test_source_hash import event\n"
        "from calsync.sync.forward import source_hash\n"
        "print(source_hash('ctx', event()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "plugins"), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == source_hash("ctx", event())
