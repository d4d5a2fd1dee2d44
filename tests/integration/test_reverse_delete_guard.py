"""The reverse mass-deletion guard (E10) against the Graph emulator, on every OA database: an OA
bulk delete is held (creates and updates go on), logged, shown in the drain's result and the
sync-log overview, kept out of two-way forward sync, and released by ``confirm_deletes`` or
``calsync deletes release``; a small delete is never held."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.airflow.ui import queries
from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.conftest import INTEGRATION_YAML, ForwardRunner
from tests.integration.reverse_helpers import (
    ReverseRunner,
    deliveries,
    oa_create,
    oa_delete,
    oa_update,
    reverse_logs,
)
from tests.integration.test_reverse_sync import by_subject, reverse_config

ZHANG = "zhangwei@contoso.com"
LINA = "lina@contoso.com"
UTC = dt.UTC


def _start(day: int, hour: int) -> dt.datetime:
    base = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return base.replace(hour=hour) + dt.timedelta(days=day)


def _seed(engine: sa.Engine, reverse: ReverseRunner) -> tuple[list[int], int]:
    """Six schedules of Zhang's and one of Lina's, delivered."""
    zhang = [oa_create(engine, "zhangwei", f"guard Z{i}", _start(1, 1 + i)) for i in range(6)]
    lina = oa_create(engine, "lina", "guard L", _start(1, 9))
    assert reverse.counts(reverse()) == {"created": 7}
    return zhang, lina


def _statuses(engine: sa.Engine) -> dict[int, str]:
    return {d["schedule_id"]: d["status"] for d in deliveries(engine)}


def test_bulk_delete_is_held_others_flow_then_confirm_releases(seeded_oa: sa.Engine, graph: Any):
    reverse = ReverseRunner(seeded_oa, [reverse_config()])
    zhang, lina = _seed(seeded_oa, reverse)

    for sid in zhang[:5]:  # a bad OA job deletes five of Zhang's six schedules at once
        oa_delete(seeded_oa, sid)
    oa_update(seeded_oa, lina, title="guard L (edited)")
    new = oa_create(seeded_oa, "lina", "guard new", _start(2, 10))
    summary = reverse()
    report = summary["integrations"][0]
    assert report["counts"] == {"held": 5, "updated": 1, "created": 1}
    [held] = report["held"]
    assert (held["mailbox"], held["count"], held["total"]) == (ZHANG, 5, 5)
    assert "5 of 6 linked schedule(s)" in held["reason"]
    for i in range(6):  # nothing deleted in the suite
        assert len(by_subject(graph, ZHANG, f"guard Z{i}")) == 1
    assert len(by_subject(graph, LINA, "guard L (edited)")) == 1
    assert len(by_subject(graph, LINA, "guard new")) == 1
    statuses = _statuses(seeded_oa)
    assert [statuses[sid] for sid in zhang[:5]] == ["held"] * 5
    assert statuses[lina] == statuses[new] == "done"
    [record] = [r for r in reverse_logs(seeded_oa) if r["action"] == "held"]
    assert record["mailbox"] == ZHANG and record["integration_id"] == "it_rev"
    assert "5 suite deletion(s) held" in record["message"]
    assert "confirm_deletes" in record["message"]

    # the sync-log page's overview shows them
    with seeded_oa.connect() as conn:
        [item] = queries.overview(conn, ["it_rev"]).integrations
    assert item.held == 5 and item.pending == 0 and item.counts["held"] == 1

    # another drain neither deletes them nor logs them again; its result still lists them
    again = reverse()["integrations"][0]
    assert again["counts"] == {} and again["held"][0]["total"] == 5
    assert [r["action"] for r in reverse_logs(seeded_oa)].count("held") == 1
    assert len(graph.store.events(ZHANG)) >= 6

    # the admin checked: confirm_deletes releases them, and they are delivered
    summary = reverse(confirm_deletes=True)
    assert reverse.counts(summary) == {"released": 5, "deleted": 5}
    for i in range(5):
        assert by_subject(graph, ZHANG, f"guard Z{i}") == []
    assert len(by_subject(graph, ZHANG, "guard Z5")) == 1
    assert set(_statuses(seeded_oa).values()) == {"done"}
    released = [r for r in reverse_logs(seeded_oa) if r["action"] == "released"]
    assert len(released) == 1 and "5 held suite deletion(s)" in released[0]["message"]


def test_small_delete_is_not_held(seeded_oa: sa.Engine, graph: Any):
    reverse = ReverseRunner(seeded_oa, [reverse_config()])
    zhang, _ = _seed(seeded_oa, reverse)
    oa_delete(seeded_oa, zhang[0])
    oa_delete(seeded_oa, zhang[1])  # 2 of 6: not more than half
    assert reverse.counts(reverse()) == {"deleted": 2}
    assert by_subject(graph, ZHANG, "guard Z0") == []


def test_one_by_one_deletes_count_together(seeded_oa: sa.Engine, graph: Any):
    """A job deleting a few schedules per drain: the deletions delivered within the last hour
    count with the pending ones, so the rules still catch it."""
    reverse = ReverseRunner(seeded_oa, [reverse_config()])
    zhang, _ = _seed(seeded_oa, reverse)
    for sid in zhang[:2]:
        oa_delete(seeded_oa, sid)
    assert reverse.counts(reverse()) == {"deleted": 2}  # 2 of 6: fine on their own
    for sid in zhang[2:4]:
        oa_delete(seeded_oa, sid)
    report = reverse()["integrations"][0]
    assert report["counts"] == {"held": 2}
    assert "4 of 6 linked schedule(s)" in report["held"][0]["reason"]
    assert len(by_subject(graph, ZHANG, "guard Z3")) == 1


def test_count_limit_and_disabled_guard(seeded_oa: sa.Engine, graph: Any):
    extra = "delete_guard: {delete_count: 1, delete_share: 1.0}\n"
    reverse = ReverseRunner(seeded_oa, [reverse_config(extra=extra)])
    zhang, _ = _seed(seeded_oa, reverse)
    oa_delete(seeded_oa, zhang[0])
    oa_delete(seeded_oa, zhang[1])
    report = reverse()["integrations"][0]
    assert report["counts"] == {"held": 2}
    assert "exceed the limit of 1" in report["held"][0]["reason"]
    # a later single delete of the same mailbox joins the held ones
    oa_delete(seeded_oa, zhang[2])
    report = reverse()["integrations"][0]
    assert report["counts"] == {"held": 1} and report["held"][0]["total"] == 3

    off = ReverseRunner(seeded_oa, [reverse_config(extra="delete_guard: {enabled: false}\n")])
    oa_delete(seeded_oa, zhang[3])
    assert off.counts(off()) == {"deleted": 1}  # held ones stay held without a release
    assert [_statuses(seeded_oa)[sid] for sid in zhang[:3]] == ["held"] * 3


def test_two_way_forward_does_not_bring_held_deletes_back(seeded_oa: sa.Engine, graph: Any):
    # the demo calendars bring many more links: the count rule holds the five
    config = reverse_config("both", extra="delete_guard: {delete_count: 4}\n")
    reverse = ReverseRunner(seeded_oa, [config])
    forward = ForwardRunner(seeded_oa, config)
    zhang, _ = _seed(seeded_oa, reverse)
    forward()
    with seeded_oa.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(t.schedules)).scalar_one()
    for sid in zhang[:5]:
        oa_delete(seeded_oa, sid)
    assert reverse.counts(reverse())["held"] == 5
    forward()  # the events are still in the suite: they must not come back as new schedules
    with seeded_oa.connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(t.schedules)).scalar_one()
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert after == before - 5
    assert not {f"guard Z{i}" for i in range(5)} & titles


def test_cli_lists_and_releases(
    seeded_oa: sa.Engine, graph: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from calsync.cli import main
    from calsync.cli import sync as cli_sync

    reverse = ReverseRunner(seeded_oa, [reverse_config()])
    zhang, _ = _seed(seeded_oa, reverse)
    for sid in zhang[:4]:
        oa_delete(seeded_oa, sid)
    assert reverse.counts(reverse()) == {"held": 4}
    include = tmp_path / "inc"
    shutil.copytree(ROOT / "include" / "mappings", include / "mappings")
    (include / "integrations").mkdir()
    (include / "integrations" / "it_rev.yaml").write_text(INTEGRATION_YAML + "direction: reverse\n")
    monkeypatch.setattr(cli_sync, "oa_engine", lambda config: seeded_oa)

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main([*args, "--integration", "it_rev", "--include", str(include)])
        return rc, out.getvalue()

    rc, out = run("deletes", "list")
    assert rc == 0 and "4 held deletion(s) in it_rev" in out and "guard Z0" in out
    rc, out = run("deletes", "release")
    assert rc == 0 and out.startswith("4 held deletion(s) of it_rev released")
    assert reverse.counts(reverse()) == {"deleted": 4}
    assert by_subject(graph, ZHANG, "guard Z3") == []
