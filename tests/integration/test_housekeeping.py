"""Housekeeping (F20) on SQLite, PostgreSQL and MariaDB: what goes, what must survive, a
large purge in bounded batches, and the DAG built per OA database and run with dag.test()."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig, parse_integration
from calsync.housekeeping import (
    HousekeepingSettings,
    Inventory,
    purge_calendar_ids,
    purge_reverse_tables,
    purge_sync_log,
    purge_sync_states,
    run_all,
)
from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.conftest import INTEGRATION_YAML

NOW = dt.datetime(2026, 12, 1, 3, 30)
OA = "calsync_oa_test"


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def integration(name: str, extra: str = "", oa_connection: str = OA) -> IntegrationConfig:
    text = INTEGRATION_YAML.replace(
        f"oa_connection_id: {OA}\n", f"oa_connection_id: {oa_connection}\n"
    )
    return parse_integration(Path(f"{name}.yaml"), text + extra)


def settings(**kw: Any) -> HousekeepingSettings:
    return HousekeepingSettings.model_validate({"pause_s": 0, **kw})


def log_rows(integration_id: str, days: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "logged_at": ago(d),
            "integration_id": integration_id,
            "direction": "forward",
            "action": "created",
            "title": f"{integration_id} {d}",
            "message": "",
        }
        for d in days
    ]


def remaining_logs(engine: sa.Engine) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with engine.connect() as conn:
        for row in conn.execute(sa.select(t.sync_log.c.integration_id, t.sync_log.c.logged_at)):
            age = round((NOW - row.logged_at).total_seconds() / 86400, 1)
            out.setdefault(row.integration_id, []).append(age)
    return {k: sorted(v) for k, v in out.items()}


# --- sync log ----------------------------------------------------------------------------------


def test_sync_log_per_integration_retention_default_and_switch(oa_engine: sa.Engine):
    inventory = Inventory(
        configs=(
            integration("short", "log_retention_days: 10\n"),
            integration("plain"),  # no retention of its own: the default
        ),
        unreadable=frozenset({"broken"}),  # invalid file: its records are kept
    )
    ages = [1, 9.9, 10.1, 15, 40]
    with oa_engine.begin() as conn:
        for name in ("short", "plain", "broken", "removed"):
            conn.execute(sa.insert(t.sync_log), log_rows(name, ages))

    # no default retention: only `short` has one
    report = purge_sync_log(oa_engine, settings(), inventory, NOW)
    assert report.removed == {"short": 3}
    # the global switch off: nothing, whatever the integrations say
    off = settings(sync_log={"enabled": False, "retention_days": 5})
    assert purge_sync_log(oa_engine, off, inventory, NOW).total == 0
    # a default of 30 days for `plain` and for the records of removed integrations
    report = purge_sync_log(oa_engine, settings(sync_log={"retention_days": 30}), inventory, NOW)
    assert report.removed == {"plain": 1, "removed": 1}
    assert remaining_logs(oa_engine) == {
        "short": [1, 9.9],
        "plain": [1, 9.9, 10.1, 15],
        "broken": ages,
        "removed": [1, 9.9, 10.1, 15],
    }


def test_large_sync_log_purge_runs_in_bounded_batches(oa_engine: sa.Engine):
    """12,000 expired records among 600 young ones and 600 of a kept integration, purged
    1,000 per transaction: 12 batches, no statement deleting more, every young record kept."""
    inventory = Inventory(
        configs=(integration("big", "log_retention_days: 30\n"), integration("keep"))
    )
    rows = []
    for i in range(12_600):
        young = i % 21 == 0  # 600 young records spread among the old ones
        rows += log_rows("big", [1 if young else 31 + i / 1000])
        if i % 21 == 1:
            rows += log_rows("keep", [400])
    with oa_engine.begin() as conn:
        conn.execute(sa.insert(t.sync_log), rows)

    deletes: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(cursor.rowcount)

    sa.event.listen(oa_engine, "after_cursor_execute", count)
    try:
        report = purge_sync_log(oa_engine, settings(batch_size=1000), inventory, NOW)
    finally:
        sa.event.remove(oa_engine, "after_cursor_execute", count)
    assert report.removed == {"big": 12_000}
    assert report.batches == 12
    assert len(deletes) == 12 and max(deletes) == 1000
    left = remaining_logs(oa_engine)
    assert left == {"big": [1] * 600, "keep": [400] * 600}
    # a second run finds nothing
    assert purge_sync_log(oa_engine, settings(batch_size=1000), inventory, NOW).total == 0


# --- reverse-sync tables -----------------------------------------------------------------------


def _reverse_fixture(engine: sa.Engine) -> None:
    """Outbox rows, deliveries and tombstones of schedules 1–8 in every situation."""
    outbox, deliveries, tombstones = [], [], []

    def change(sid: int, routed_days: float | None, changed_days: float = 12, op: str = "update"):
        outbox.append(
            {
                "schedule_id": sid,
                "op": op,
                "origin": "oa",
                "changed_at": ago(changed_days),
                "routed_at": ago(routed_days) if routed_days is not None else None,
            }
        )

    def delivery(integration_id: str, sid: int, status: str, days: float) -> None:
        deliveries.append(
            {
                "integration_id": integration_id,
                "schedule_id": sid,
                "outbox_id": 0,
                "status": status,
                "attempts": 0,
                "next_attempt_at": ago(days),
                "created_at": ago(days),
                "updated_at": ago(days),
            }
        )

    def tombstone(integration_id: str, sid: int, days: float) -> None:
        tombstones.append(
            {
                "integration_id": integration_id,
                "schedule_id": sid,
                "mailbox": "zhangwei@contoso.com",
                "suite_id": f"AAMk{sid}{integration_id}",
                "identity_key": f"uid-{sid}",
                "deleted_at": ago(days),
            }
        )

    # 1: delivered and done long ago → everything goes
    change(1, 10)
    change(1, 10, op="delete")
    delivery("rev", 1, "done", 10)
    tombstone("rev", 1, 10)
    # 2: still pending → its outbox rows (the delete carries creator and title), delivery and
    #    tombstone stay
    change(2, 10, op="delete")
    delivery("rev", 2, "pending", 10)
    tombstone("rev", 2, 10)
    # 3: dead (a later edit would revive it) → kept likewise
    change(3, 10)
    delivery("rev", 3, "dead", 10)
    tombstone("rev", 3, 10)
    # 4: done, but recently → kept
    change(4, 1)
    delivery("rev", 4, "done", 1)
    # 5: an old change nobody routed yet, and its tombstone
    change(5, None, changed_days=10, op="delete")
    tombstone("rev", 5, 10)
    # 6: routed, no delivery at all (out of every scope), tombstone of a forward-only one
    change(6, 10, op="delete")
    tombstone("fwd", 6, 10)
    # 7: done for `rev`, pending for `other`: the schedule's rows stay, rev's bits go
    change(7, 10)
    delivery("rev", 7, "done", 10)
    delivery("other", 7, "pending", 10)
    tombstone("rev", 7, 10)
    tombstone("other", 7, 10)
    # 8: the newest outbox row: routed and done long ago, yet it stays (ids never reused)
    change(8, 10)
    delivery("rev", 8, "done", 10)
    with engine.begin() as conn:
        conn.execute(sa.insert(t.outbox), outbox)
        conn.execute(sa.insert(t.deliveries), deliveries)
        conn.execute(sa.insert(t.deleted_links), tombstones)


def _reverse_state(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "outbox": sorted(conn.execute(sa.select(t.outbox.c.schedule_id)).scalars()),
            "deliveries": sorted(
                (r.integration_id, r.schedule_id) for r in conn.execute(sa.select(t.deliveries))
            ),
            "tombstones": sorted(
                (r.integration_id, r.schedule_id) for r in conn.execute(sa.select(t.deleted_links))
            ),
        }


def test_reverse_tables_keep_what_a_delivery_still_needs(oa_engine: sa.Engine):
    _reverse_fixture(oa_engine)
    inventory = Inventory(configs=(integration("rev", "direction: both\n"),))
    reports = purge_reverse_tables(oa_engine, settings(), inventory, OA, NOW)
    assert [r.table for r in reports] == [
        "calsync_deliveries",
        "calsync_outbox",
        "calsync_deleted_links",
    ]
    deliveries, outbox, tombstones = reports
    assert deliveries.removed == {"rev": 3}  # of schedules 1, 7 and 8
    assert _reverse_state(oa_engine) == {
        "outbox": [2, 3, 4, 5, 7, 8],  # 1 and 6 went; 5 is not routed yet
        "deliveries": [("other", 7), ("rev", 2), ("rev", 3), ("rev", 4)],
        "tombstones": [("other", 7), ("rev", 2), ("rev", 3), ("rev", 5)],
    }
    assert outbox.total == 3 and tombstones.removed == {"rev": 2, "fwd": 1}


def test_reverse_tables_without_reverse_integrations_purge_unrouted_rows(oa_engine: sa.Engine):
    """Forward-only: nothing routes the outbox, so old unrouted rows go too (else the
    triggers would grow it forever) — unless a config that might be reverse is unreadable."""
    _reverse_fixture(oa_engine)
    unsure = Inventory(configs=(integration("fwd"),), unreadable=frozenset({"broken"}))
    purge_reverse_tables(oa_engine, settings(), unsure, OA, NOW)
    assert 5 in _reverse_state(oa_engine)["outbox"]
    forward_only = Inventory(configs=(integration("fwd"),))
    reports = purge_reverse_tables(oa_engine, settings(), forward_only, OA, NOW)
    state = _reverse_state(oa_engine)
    assert state["outbox"] == [2, 3, 4, 7, 8]
    assert ("rev", 5) not in state["tombstones"]
    assert "unrouted rows purged" in reports[1].note


# --- change-feed states ------------------------------------------------------------------------


def test_stale_sync_states(seeded_oa: sa.Engine):
    scope = "scope: {departments: [研发部]}\n"  # 李娜, 王芳, 刘洋
    inventory = Inventory(
        configs=(
            integration("fwd", scope),
            integration("rev", scope + "direction: reverse\n"),
            integration("elsewhere", oa_connection="calsync_oa_branch"),
        ),
        unreadable=frozenset({"broken"}),
    )

    def state(integration_id: str, mailbox: str, days: float) -> dict[str, Any]:
        return {
            "integration_id": integration_id,
            "mailbox": mailbox,
            "window_start": dt.date(2026, 11, 28),
            "window_end": dt.date(2026, 12, 4),
            "state": "{}",
            "updated_at": ago(days),
        }

    rows = [
        state("fwd", "lina@contoso.com", 1),  # kept
        state("fwd", "wangfang@contoso.com", 45),  # not updated for 30 days
        state("fwd", "zhangwei@contoso.com", 1),  # out of scope (总经办)
        state("rev", "lina@contoso.com", 1),  # reverse only: no feed
        state("gone", "lina@contoso.com", 1),  # integration removed
        state("broken", "lina@contoso.com", 1),  # unreadable config: kept
        state("elsewhere", "nobody@contoso.com", 1),  # another OA connection's: scope unknown
    ]
    with seeded_oa.begin() as conn:
        conn.execute(sa.insert(t.sync_state), rows)

    def left() -> list[tuple[str, str]]:
        with seeded_oa.connect() as conn:
            return sorted(
                (r.integration_id, r.mailbox.split("@")[0])
                for r in conn.execute(sa.select(t.sync_state))
            )

    only_age = settings(sync_state={"remove_unconfigured": False})
    assert purge_sync_states(seeded_oa, only_age, inventory, OA, NOW).removed == {"fwd": 1}
    report = purge_sync_states(seeded_oa, settings(), inventory, OA, NOW)
    assert report.removed == {"fwd": 1, "rev": 1, "gone": 1}
    assert "mailbox no longer in the integration's scope" in report.note
    assert left() == [("broken", "lina"), ("elsewhere", "nobody"), ("fwd", "lina")]


def test_stale_calendar_ids(oa_engine: sa.Engine):
    def alimail(name: str, section: str = "") -> IntegrationConfig:
        text = INTEGRATION_YAML.replace("type: office365_global", "type: alimail_v2")
        text = text.replace("office365: {page_size: 10}", f"alimail: {{{section}}}")
        return parse_integration(Path(f"{name}.yaml"), text)

    inventory = Inventory(
        configs=(alimail("ali"), alimail("folder", "calendar_folder: 项目"), integration("graph")),
        unreadable=frozenset({"broken"}),
    )

    def kept(integration_id: str, calendar: str, days: float, box: str = "a") -> dict[str, Any]:
        return {
            "integration_id": integration_id,
            "mailbox": f"{box}@contoso.com",
            "calendar": calendar,
            "calendar_id": "cal",
            "updated_at": ago(days),
        }

    with oa_engine.begin() as conn:
        conn.execute(
            sa.insert(t.calendar_ids),
            [
                kept("ali", "", 1),  # kept
                kept("ali", "", 45, box="b"),  # not looked up for 30 days
                kept("ali", "项目", 1),  # a folder it no longer writes to
                kept("folder", "项目", 1),  # kept
                kept("graph", "", 1),  # no longer an Alibaba Mail integration
                kept("gone", "", 1),  # integration removed
                kept("broken", "", 1),  # unreadable config: kept
            ],
        )

    def left() -> list[tuple[str, str, str]]:
        ci = t.calendar_ids.c
        with oa_engine.connect() as conn:
            found = conn.execute(sa.select(ci.integration_id, ci.mailbox, ci.calendar))
            return sorted((r.integration_id, r.mailbox[0], r.calendar) for r in found)

    only_age = settings(sync_state={"remove_unconfigured": False})
    assert purge_calendar_ids(oa_engine, only_age, inventory, NOW).removed == {"ali": 1}
    report = purge_calendar_ids(oa_engine, settings(), inventory, NOW)
    assert report.removed == {"ali": 1, "graph": 1, "gone": 1}
    assert "calendar no longer configured" in report.note
    assert left() == [("ali", "a", ""), ("broken", "a", ""), ("folder", "a", "项目")]


def test_run_all_reports_every_table(oa_engine: sa.Engine, caplog: pytest.LogCaptureFixture):
    with oa_engine.begin() as conn:
        conn.execute(sa.insert(t.sync_log), log_rows("it", [1, 100]))
    inventory = Inventory(configs=(integration("it", "log_retention_days: 7\n"),))
    with caplog.at_level("INFO", logger="calsync"):
        reports = run_all(oa_engine, settings(), inventory, OA, NOW)
    assert [r.table for r in reports] == [
        "calsync_sync_log",
        "calsync_deliveries",
        "calsync_outbox",
        "calsync_deleted_links",
        "calsync_sync_state",
        "calsync_calendar_ids",
    ]
    assert reports[0].removed == {"it": 1}
    assert "calsync_sync_log: removed 1 row(s) in 1 batch(es) (it=1)" in caplog.text


# --- the DAG -----------------------------------------------------------------------------------


def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_one_housekeeping_dag_per_oa_database_and_templates_ignored(airflow_db, include_dir):
    import shutil

    integrations = include_dir / "integrations"
    (integrations / "branch.yaml").write_text(
        INTEGRATION_YAML.replace(OA, "calsync_oa_branch").replace("Asia/Shanghai", "Europe/Berlin")
    )
    shutil.copytree(ROOT / "include" / "integrations" / "templates", integrations / "templates")
    (include_dir / "housekeeping.yaml").write_text("schedule: '15 4 * * *'\n")
    bag = dagbag()
    assert bag.import_errors == {}
    assert {d for d in bag.dag_ids if "housekeeping" in d} == {
        "calsync_housekeeping__calsync_oa_test",
        "calsync_housekeeping__calsync_oa_branch",
    }
    assert not [d for d in bag.dag_ids if "template" in d or "invalid" in d]
    dag = bag.dags["calsync_housekeeping__calsync_oa_branch"]
    assert dag.timetable.expression == "15 4 * * *"
    assert (
        str(getattr(dag.timetable.timezone, "name", dag.timetable.timezone)) == "Europe/Berlin"
    )  # the integrations' zone
    assert list(dag.task_dict) == ["purge_sync_log", "purge_reverse_tables", "purge_sync_states"]

    (include_dir / "housekeeping.yaml").write_text("batch_size: 10\n")
    bag = dagbag()
    assert "calsync_housekeeping__invalid_config" in bag.dag_ids
    assert "batch_size: Input should be greater than or equal to 100" in (
        bag.dags["calsync_housekeeping__invalid_config"].description
    )


def test_housekeeping_dag_run(airflow_db, include_dir, airflow_oa: sa.Engine):
    (include_dir / "integrations" / "it_o365.yaml").write_text(
        INTEGRATION_YAML + "log_retention_days: 30\n"
    )
    (include_dir / "housekeeping.yaml").write_text("batch_size: 100\npause_s: 0\n")
    real_now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with airflow_oa.begin() as conn:
        conn.execute(
            sa.insert(t.sync_log),
            [
                {
                    "logged_at": real_now - dt.timedelta(days=31 if i % 2 else 1),
                    "integration_id": "it_o365",
                    "direction": "forward",
                    "action": "created",
                    "message": "",
                }
                for i in range(500)
            ],
        )
    dag = dagbag().dags["calsync_housekeeping__calsync_oa_test"]
    assert dag.timetable.expression == "30 3 * * *"
    run = dag.test()
    assert str(run.state) == "success"
    with airflow_oa.connect() as conn:
        ages = conn.execute(sa.select(t.sync_log.c.logged_at)).scalars().all()
    assert len(ages) == 250 and min(ages) > real_now - dt.timedelta(days=2)
