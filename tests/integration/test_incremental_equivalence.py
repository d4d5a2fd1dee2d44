"""Incremental runs end where a full sync does (issue 3, E7): over random suite-side change
sequences, the OA after a series of scheduled (delta) runs equals the OA after one fresh full
sync of the same window into an empty OA.

Each example starts from an emptied Graph emulator and a copy of a seeded SQLite OA, makes one
or two meetings, runs the scheduled path (a new delta round: a full read), then applies one to
four steps — suite-side changes (the operations of ``test_forward_properties``), an extra
scheduled run, or the expiry of every delta token (410, E15) — with a scheduled run at the end.
After each scheduled run the OA's content is compared with that of a fresh OA synced in full:
schedules, participants, meetings and links, keyed by meeting identity (database ids and
timestamps left out).

The harness is suite-neutral (``harness_factory``, ``Harness.expire_feeds``, ``step_kinds``):
``test_incremental_exchange`` runs it over Exchange's SyncFolderItems.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from calsync.config import IntegrationConfig, parse_integration
from calsync.oa import schema as t
from tests.integration.conftest import INTEGRATION_YAML, ForwardRunner
from tests.integration.test_forward_properties import (  # noqa: F401  (oa_template: a fixture)
    DAYS,
    MAILBOXES,
    PEOPLE,
    ROOM,
    UNGUARDED,
    CreateMeeting,
    CreateSeries,
    Delete,
    Example,
    Move,
    Occurrence,
    RemoveCopy,
    Update,
    When,
    attendee_lists,
    indexes,
    locations,
    oa_copy,
    oa_template,
    reset_mailboxes,
    subjects,
)
from tests.integration.test_incremental_graph import IncrementalRunner

SHANGHAI = "Asia/Shanghai"


@dataclass(frozen=True)
class Scheduled:
    """A scheduled (incremental) run, compared with a fresh full sync."""


@dataclass(frozen=True)
class ExpireTokens:
    """Graph forgets every delta token: the next run gets 410 and reads in full."""


@st.composite
def whens(draw: Any, series: bool = False) -> When:
    all_day = draw(st.booleans())
    return When(
        day=draw(st.sampled_from(DAYS)),
        hour=draw(st.integers(0, 23)),
        minute=draw(st.sampled_from([0, 30])),
        minutes=draw(st.sampled_from([0, 30, 90] if series else [0, 30, 90, 25 * 60])),
        zone=draw(st.sampled_from((SHANGHAI, "UTC", "America/New_York", "Pacific/Auckland"))),
        all_day=all_day,
        days=1 if series else draw(st.integers(1, 3)),
    )


occurrences = st.builds(
    Occurrence,
    target=indexes,
    index=st.integers(0, 4),
    cancel=st.booleans(),
    subject=st.none() | subjects,
    shift_hours=st.sampled_from([0, 3, -5, 30]),
    shift_days=st.sampled_from([0, 1, -2]),
)
creates = st.one_of(
    st.builds(
        CreateMeeting,
        organiser=st.sampled_from(MAILBOXES),
        subject=subjects,
        when=whens(),
        attendees=attendee_lists,
        external=st.booleans(),
        room=st.booleans(),
        location=locations,
    ),
    st.builds(
        CreateSeries,
        organiser=st.sampled_from(MAILBOXES),
        subject=subjects,
        when=whens(series=True),
        count=st.integers(2, 5),
        attendees=attendee_lists,
        exception=st.none() | occurrences,
    ),
)
# Each kind of step (by operation); a suite without one of them leaves it out.
step_kinds: dict[type, st.SearchStrategy[Any]] = {
    CreateMeeting: creates,
    Occurrence: occurrences,
    Update: st.builds(
        Update,
        target=indexes,
        subject=st.none() | subjects,
        when=st.none() | whens(),
        location=st.none() | locations,
        attendees=st.none() | attendee_lists,
    ),
    Delete: st.builds(Delete, target=indexes),
    RemoveCopy: st.builds(RemoveCopy, target=indexes, attendee=indexes),
    Move: st.builds(Move, target=indexes, who=indexes),
    Scheduled: st.just(Scheduled()),
    ExpireTokens: st.just(ExpireTokens()),
}
steps = st.one_of(*step_kinds.values())


def scripts_of(step: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """At most 2 + 4 steps; a scheduled run follows the creates and ends every script."""
    return st.tuples(
        st.lists(creates, min_size=1, max_size=2), st.lists(step, min_size=1, max_size=4)
    ).map(lambda parts: [*parts[0], Scheduled(), *parts[1], Scheduled()])


scripts = scripts_of(steps)


def oa_content(engine: sa.Engine, integration_id: str) -> dict[str, Any]:
    """What forward sync wrote, without database ids and timestamps: schedules (with their
    participants) by meeting identity, meetings, and links pointing at identities."""
    skip = {"id", "created_at", "updated_at"}
    with engine.connect() as conn:
        meetings = conn.execute(
            sa.select(t.meetings).where(t.meetings.c.integration_id == integration_id)
        ).all()
        identity_of = {m.schedule_id: m.identity_key for m in meetings}
        people: dict[int, list[tuple[Any, ...]]] = {}
        for p in conn.execute(sa.select(t.participants)):
            people.setdefault(p.schedule_id, []).append(
                (p.kind, p.user_id, p.room_id, p.email, p.name, p.response)
            )
        schedules: dict[str, Any] = {}
        unlinked: list[Any] = []
        for row in conn.execute(sa.select(t.schedules)):
            values = {k: v for k, v in row._mapping.items() if k not in skip}
            values["participants"] = sorted(people.get(row.id, []), key=repr)
            if row.id in identity_of:
                schedules[identity_of[row.id]] = values
            elif row.source_integration == integration_id:
                unlinked.append(values)  # a schedule of ours without a meeting: never expected
        links = sorted(
            (
                (
                    link.mailbox,
                    link.suite_id,
                    link.ical_uid,
                    link.identity_key,
                    link.change_key,
                    link.content_hash,
                    link.event_start_utc,
                    link.event_end_utc,
                    link.event_start_date,
                    link.event_end_date,
                    identity_of.get(link.schedule_id, f"no meeting: {link.schedule_id}"),
                )
                for link in conn.execute(
                    sa.select(t.links).where(t.links.c.integration_id == integration_id)
                )
            ),
            key=repr,
        )
    return {
        "schedules": schedules,
        "unlinked_schedules": unlinked,
        "meetings": sorted((m.identity_key, m.owner_mailbox, m.content_hash) for m in meetings),
        "links": links,
    }


class Harness:
    def __init__(
        self,
        example: Example,
        scheduled: IncrementalRunner,
        full: ForwardRunner,
        template: Path,
        tmp_path: Path,
    ) -> None:
        self.example = example
        self.config = example.config
        self.scheduled = scheduled
        self.scheduled.engine = example.engine
        self.full = full
        self.template = template
        self.tmp_path = tmp_path
        self.window = scheduled.window()
        self.fresh = itertools.count()
        self.runs = 0
        self.compared = True  # nothing happened since the last comparison

    def apply(self, op: Any) -> None:
        if isinstance(op, Scheduled):
            self.run()
            return
        self.compared = False
        if isinstance(op, ExpireTokens):
            self.expire_feeds()
        else:
            self.example.apply(op)

    def expire_feeds(self) -> None:
        """The suite forgets every change-feed state it handed out (Graph: delta tokens)."""
        self.example.graph.store.expire_delta_tokens()

    def run(self) -> None:
        result = self.scheduled(self.window)
        self.runs += 1
        errors = {m: r.error for m, r in result["results"].items() if r.error}
        assert not errors, f"scheduled run failed for {errors}"
        assert "failed" not in result["totals"], result["totals"]
        if self.runs > 1:
            event(f"a later run: {'/'.join(sorted(result['totals'])) or 'nothing to do'}")
        if self.compared and self.runs > 1:
            assert set(result["totals"]) <= {"unchanged", "skipped"}, result["totals"]
            return  # a run right after a compared one: nothing to compare again
        got = oa_content(self.example.engine, self.config.id)
        want = self.full_sync_into_an_empty_oa()
        for part in ("schedules", "unlinked_schedules", "meetings", "links"):
            assert got[part] == want[part], f"after scheduled run {self.runs}: {part} differ"
        self.compared = True

    def full_sync_into_an_empty_oa(self) -> dict[str, Any]:
        with oa_copy(self.template, self.tmp_path / f"fresh_{next(self.fresh)}.db") as engine:
            self.full.engine = engine
            result = self.full(self.window)
            assert not any(r.error for r in result["results"].values())
            return oa_content(engine, self.config.id)


def harness_factory(
    server: Any,
    config: IntegrationConfig,
    reset: Callable[[Any], None],
    oa_template: Path,  # noqa: F811
    tmp_path: Path,
    example: type[Example] = Example,
    harness: type[Harness] = Harness,
) -> Callable[[], contextlib.AbstractContextManager[Harness]]:
    """A factory of harnesses over one suite emulator: ``reset`` empties it and adds the
    mailboxes; each harness gets a fresh copy of the OA template."""
    counter = itertools.count()
    # one mapping library for every example: the runners' engines are set per example
    scheduled = IncrementalRunner(sa.create_engine("sqlite://"), config)
    full = ForwardRunner(sa.create_engine("sqlite://"), config)

    @contextlib.contextmanager
    def make() -> Iterator[Harness]:
        reset(server)
        try:
            with oa_copy(oa_template, tmp_path / f"oa_{next(counter)}.db") as engine:
                yield harness(
                    example(server, engine, config), scheduled, full, oa_template, tmp_path
                )
        finally:
            server.reset()

    return make


@pytest.fixture
def harnesses(graph_server: Any, oa_template: Path, tmp_path: Path):  # noqa: F811
    config: IntegrationConfig = parse_integration(
        Path("it_o365.yaml"), INTEGRATION_YAML + UNGUARDED
    )
    return harness_factory(graph_server, config, reset_mailboxes, oa_template, tmp_path)


@settings(
    max_examples=int(os.environ.get("CALSYNC_INCREMENTAL_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=scripts)
def test_incremental_runs_equal_a_fresh_full_sync(harnesses: Any, script: list[Any]) -> None:
    with harnesses() as harness:
        for op in script:
            harness.apply(op)
