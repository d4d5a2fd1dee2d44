"""Housekeeping (F20): purge what calsync's OA tables no longer need, in bounded batches.

Run daily by the ``calsync_housekeeping`` DAG (one per OA database, see
:mod:`calsync.airflow.housekeeping_dag`); the purges below are plain functions over an engine,
testable without Airflow. What goes:

- **sync log** (``calsync_sync_log``): records older than their integration's
  ``log_retention_days``, else ``sync_log.retention_days`` of ``include/housekeeping.yaml``
  (which also covers records of integrations no longer configured). Nothing is purged where
  neither is set, nor for a config file that does not validate (its settings are unknown),
  nor at all while ``sync_log.enabled`` is false (the global switch: e.g. an audit hold).
- **reverse-sync tables**, older than ``reverse.retention_days``:
  done ``calsync_deliveries``; ``calsync_outbox`` rows that were routed and that no pending
  or dead delivery of their schedule may still read (a delete's row carries the creator and
  title the drain needs); link tombstones (``calsync_deleted_links``) whose schedule has no
  delivery left to make and no unrouted change. The newest outbox row always stays, so an id
  is never handed out twice (MariaDB before 10.2.4 reset AUTO_INCREMENT to max(id)+1 on
  restart). Unrouted outbox rows are purged only where no reverse or two-way integration (and
  no unreadable config, which might be one) uses the database: forward-only setups have no
  drain to route them, and their triggers would grow the outbox forever.
- **change-feed states** (``calsync_sync_state``): of integrations no longer configured or
  no longer forward, of mailboxes no longer in their integration's scope, and any not updated
  for ``sync_state.retention_days`` (a state is bound to a window that has long moved on);
  with them, kept calendar ids (``calsync_calendar_ids``) of integrations or calendar folders
  no longer configured, or not looked up again for as long (drains stop using an id after
  about a day: calsync.oa.calendar_ids).

Batches: each purge walks the table by primary key, ``batch_size`` matching rows at a time,
and deletes ``id > last AND id <= last_of_batch AND <condition>`` in its own short
transaction, pausing ``pause_s`` between batches so OA writers get the tables (SQLite has one
writer). A run that stops half-way leaves a consistent state and the next one continues.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from calsync.config import (
    SCHEDULE_PRESETS,
    IntegrationConfig,
    LoadedConfig,
    load_integrations,
    resolve_timezone,
)
from calsync.errors import ConfigError
from calsync.oa import schema as t

log = logging.getLogger("calsync")

SETTINGS_FILE = "housekeeping.yaml"  # in include/
DEFAULT_SCHEDULE = "30 3 * * *"
DEFAULT_TIMEZONE = "Asia/Shanghai"
SQLITE_READ = {"calsync_sqlite_begin": "DEFERRED"}  # reads never take SQLite's write lock
_IN_CHUNK = 500


# --- settings ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyncLogSettings(_Strict):
    # The global switch of F20: false keeps every sync-log record whatever the integrations'
    # log_retention_days say (an audit or legal hold, an investigation) without editing them.
    enabled: bool = True
    # For integrations without log_retention_days, and for records of integrations no longer
    # configured. None: such records are kept.
    retention_days: int | None = Field(None, ge=1, le=3650)


class ReverseSettings(_Strict):
    # Done deliveries, routed outbox rows and spent link tombstones older than this go.
    retention_days: int = Field(7, ge=1, le=3650)


class SyncStateSettings(_Strict):
    retention_days: int = Field(30, ge=1, le=3650)  # states not updated for this long go
    remove_unconfigured: bool = True  # states of removed integrations / out-of-scope mailboxes


class HousekeepingSettings(_Strict):
    """``include/housekeeping.yaml`` (optional: every field has a default)."""

    enabled: bool = True
    schedule: str = DEFAULT_SCHEDULE  # cron or preset, in ``timezone``
    timezone: str | None = None  # None: the zone of the integrations on the OA database
    batch_size: int = Field(5000, ge=100, le=100_000)  # rows per delete transaction
    pause_s: float = Field(0.05, ge=0, le=60)  # between batches
    sync_log: SyncLogSettings = SyncLogSettings()
    reverse: ReverseSettings = ReverseSettings()
    sync_state: SyncStateSettings = SyncStateSettings()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return resolve_timezone(value) if value else None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        value = SCHEDULE_PRESETS.get(value.strip(), value.strip())
        if not croniter.is_valid(value):
            raise ValueError(
                f"not a cron expression or preset: {value!r} (e.g. '30 3 * * *', '@daily')"
            )
        return value


def settings_path(include_dir: Path) -> Path:
    return Path(include_dir) / SETTINGS_FILE


def load_settings(include_dir: Path) -> HousekeepingSettings:
    """The housekeeping settings (defaults when the file is absent); raises ConfigError
    naming the file and the field."""
    from calsync.config import _display, _field_path

    path = settings_path(include_dir)
    if not path.is_file():
        return HousekeepingSettings()
    where = _display(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(where, at, f"invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(where, None, f"unreadable: {exc}") from None
    if data is None:
        return HousekeepingSettings()
    if not isinstance(data, dict):
        raise ConfigError(where, None, "expected a mapping of settings at the top level")
    try:
        return HousekeepingSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise ConfigError(where, _field_path(tuple(first["loc"])), msg + more) from None


def housekeeping_timezone(settings: HousekeepingSettings, configs: list[IntegrationConfig]) -> str:
    """The configured zone, else the most common among ``configs`` (ties: alphabetical)."""
    if settings.timezone:
        return settings.timezone
    counts = Counter(c.timezone for c in configs)
    if not counts:
        return DEFAULT_TIMEZONE
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


# --- what is configured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Inventory:
    """The integrations of ``include/integrations/``: the valid ones, and the ids (file stems)
    of those that do not validate — whose data housekeeping leaves alone."""

    configs: tuple[IntegrationConfig, ...] = ()
    unreadable: frozenset[str] = frozenset()

    @classmethod
    def from_loaded(cls, loaded: Iterable[LoadedConfig]) -> Inventory:
        configs, broken = [], set()
        for item in loaded:
            if item.config is not None:
                configs.append(item.config)
            else:
                broken.add(item.stem)
        return cls(tuple(configs), frozenset(broken))

    @classmethod
    def load(cls, include_dir: Path) -> Inventory:
        return cls.from_loaded(load_integrations(Path(include_dir) / "integrations"))

    @property
    def known_ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.configs) | self.unreadable

    def on(self, oa_connection_id: str) -> list[IntegrationConfig]:
        return [c for c in self.configs if c.oa_connection_id == oa_connection_id]


# --- reports ----------------------------------------------------------------------------------


@dataclass
class TableReport:
    table: str
    removed: dict[str, int] = field(default_factory=dict)  # per integration ("*": none)
    batches: int = 0
    note: str = ""

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "removed": dict(sorted(self.removed.items())),
            "total": self.total,
            "batches": self.batches,
            "note": self.note,
        }

    def describe(self) -> str:
        per = ", ".join(f"{k}={v}" for k, v in sorted(self.removed.items()) if v)
        text = f"{self.table}: removed {self.total} row(s) in {self.batches} batch(es)"
        text += f" ({per})" if per else ""
        return text + (f"; {self.note}" if self.note else "")


# --- the batch deleter ------------------------------------------------------------------------


def purge_in_batches(
    engine: sa.Engine,
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    *,
    batch_size: int,
    pause_s: float = 0.0,
    group_by: sa.Column[Any] | None = None,
    upper_id: int | None = None,
    report: TableReport | None = None,
) -> TableReport:
    """Delete the rows of ``table`` matching ``condition``, ``batch_size`` at a time, each
    batch in its own transaction, walking the primary key upwards: select the ids of the next
    ``batch_size`` matching rows, then delete ``id`` in (last, last of them] that still match.
    ``upper_id`` bounds the walk (rows above it are never looked at). Counts per ``group_by``
    value (else under ``*``)."""
    report = report or TableReport(table.name)
    pk = table.c.id
    last = 0
    columns = [pk] if group_by is None else [pk, group_by]
    while True:
        bounds = [pk > last] + ([pk <= upper_id] if upper_id is not None else [])
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(*columns).where(*bounds, condition).order_by(pk).limit(batch_size)
            ).all()
            if not rows:
                break
            high = rows[-1][0]
            deleted = conn.execute(
                sa.delete(table).where(pk > last, pk <= high, condition)
            ).rowcount
        report.batches += 1
        groups = Counter("*" if group_by is None else str(r[1]) for r in rows)
        if deleted != len(rows):  # rows changed in between: count what the database says
            groups = Counter({"*": deleted})
        for key, n in groups.items():
            report.removed[key] = report.removed.get(key, 0) + n
        if report.batches % 20 == 0:
            log.info("%s: %d row(s) removed so far", table.name, report.total)
        last = high
        if len(rows) < batch_size:
            break
        if pause_s:
            time.sleep(pause_s)
    return report


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _naive(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return _utcnow()
    return now.astimezone(dt.UTC).replace(tzinfo=None) if now.tzinfo else now


# --- the sync log -----------------------------------------------------------------------------


def log_cutoffs(
    settings: HousekeepingSettings, inventory: Inventory, now: dt.datetime
) -> tuple[dict[str, dt.datetime], dt.datetime | None]:
    """(cutoff per configured integration, cutoff for records of unconfigured ones)."""
    if not settings.sync_log.enabled:
        return {}, None
    default = settings.sync_log.retention_days
    per: dict[str, dt.datetime] = {}
    for config in inventory.configs:
        days = config.log_retention_days or default
        if days:
            per[config.id] = now - dt.timedelta(days=days)
    other = now - dt.timedelta(days=default) if default else None
    return per, other


def purge_sync_log(
    engine: sa.Engine,
    settings: HousekeepingSettings,
    inventory: Inventory,
    now: dt.datetime | None = None,
) -> TableReport:
    now = _naive(now)
    report = TableReport(t.sync_log.name)
    if not settings.sync_log.enabled:
        report.note = "sync_log.enabled is false: nothing purged"
        return report
    per, other = log_cutoffs(settings, inventory, now)
    sl = t.sync_log
    by_cutoff: dict[dt.datetime, list[str]] = {}
    for integration_id, cutoff in per.items():
        by_cutoff.setdefault(cutoff, []).append(integration_id)
    terms: list[sa.ColumnElement[bool]] = [
        sa.and_(sl.c.integration_id.in_(sorted(ids)), sl.c.logged_at < cutoff)
        for cutoff, ids in sorted(by_cutoff.items())
    ]
    if other is not None:
        known = sorted(inventory.known_ids)
        outside = sl.c.integration_id.not_in(known) if known else sa.true()
        terms.append(sa.and_(outside, sl.c.logged_at < other))
    if not terms:
        report.note = "no retention set (log_retention_days, sync_log.retention_days)"
        return report
    latest = max([*per.values(), *([other] if other is not None else [])])
    with engine.connect().execution_options(**SQLITE_READ) as conn:
        upper = conn.execute(sa.select(sa.func.max(sl.c.id)).where(sl.c.logged_at < latest))
        upper_id = upper.scalar()
    if upper_id is None:
        return report
    return purge_in_batches(
        engine,
        sl,
        sa.or_(*terms),
        batch_size=settings.batch_size,
        pause_s=settings.pause_s,
        group_by=sl.c.integration_id,
        upper_id=upper_id,
        report=report,
    )


# --- reverse-sync tables ----------------------------------------------------------------------


def purge_reverse_tables(
    engine: sa.Engine,
    settings: HousekeepingSettings,
    inventory: Inventory,
    oa_connection_id: str,
    now: dt.datetime | None = None,
) -> list[TableReport]:
    """Done deliveries, then delivered outbox rows, then spent link tombstones."""
    now = _naive(now)
    cutoff = now - dt.timedelta(days=settings.reverse.retention_days)
    d, ob, dl = t.deliveries, t.outbox, t.deleted_links
    opts = {"batch_size": settings.batch_size, "pause_s": settings.pause_s}

    deliveries = purge_in_batches(
        engine,
        d,
        sa.and_(d.c.status == "done", d.c.updated_at < cutoff),
        group_by=d.c.integration_id,
        **opts,
    )

    # A schedule with a delivery still to make (or dead, which a later edit revives) keeps its
    # outbox rows: a delete's row carries the creator and title the drain reads.
    open_deliveries = sa.select(d.c.schedule_id).where(d.c.status != "done")
    reverse_here = any(c.reverse for c in inventory.on(oa_connection_id))
    route_pending = reverse_here or bool(inventory.unreadable)
    delivered = sa.and_(ob.c.routed_at.is_not(None), ob.c.routed_at < cutoff)
    if not route_pending:  # nothing will ever route them (module docstring)
        delivered = sa.or_(delivered, sa.and_(ob.c.routed_at.is_(None), ob.c.changed_at < cutoff))
    with engine.connect().execution_options(**SQLITE_READ) as conn:
        newest = conn.execute(sa.select(sa.func.max(ob.c.id))).scalar()
    outbox_report = TableReport(ob.name)
    if newest is not None:
        outbox_report = purge_in_batches(
            engine,
            ob,
            sa.and_(delivered, ob.c.schedule_id.not_in(open_deliveries)),
            upper_id=newest - 1,  # the newest row stays (module docstring)
            report=outbox_report,
            **opts,
        )
    if not route_pending:
        outbox_report.note = "no reverse integration on this database: unrouted rows purged too"

    open_for_link = (
        sa.select(d.c.id)
        .where(
            d.c.integration_id == dl.c.integration_id,
            d.c.schedule_id == dl.c.schedule_id,
            d.c.status != "done",
        )
        .exists()
    )
    unrouted = sa.select(ob.c.schedule_id).where(ob.c.routed_at.is_(None))
    tombstones = purge_in_batches(
        engine,
        dl,
        sa.and_(dl.c.deleted_at < cutoff, ~open_for_link, dl.c.schedule_id.not_in(unrouted)),
        group_by=dl.c.integration_id,
        **opts,
    )
    return [deliveries, outbox_report, tombstones]


# --- change-feed states -----------------------------------------------------------------------


def stale_sync_states(
    conn: sa.Connection,
    settings: HousekeepingSettings,
    inventory: Inventory,
    oa_connection_id: str,
    now: dt.datetime,
) -> list[tuple[int, str, str]]:
    """(id, integration, reason) of every state row to remove."""
    from calsync.oa import store

    cutoff = now - dt.timedelta(days=settings.sync_state.retention_days)
    configs = {c.id: c for c in inventory.configs}
    here = {c.id for c in inventory.on(oa_connection_id)}
    scopes: dict[str, set[str]] = {}
    stale: list[tuple[int, str, str]] = []
    ss = t.sync_state
    rows = conn.execute(
        sa.select(ss.c.id, ss.c.integration_id, ss.c.mailbox, ss.c.updated_at).order_by(ss.c.id)
    ).all()
    for row in rows:
        reason = None
        config = configs.get(row.integration_id)
        if row.updated_at < cutoff:
            reason = f"not updated for {settings.sync_state.retention_days} days"
        elif not settings.sync_state.remove_unconfigured:
            pass
        elif row.integration_id in inventory.unreadable:
            pass  # its config does not validate: what it configures is unknown
        elif config is None:
            reason = "integration no longer configured"
        elif not config.forward:
            reason = "integration no longer syncs forward"
        elif config.id in here:
            if config.id not in scopes:
                scope = store.resolve_scope(conn, config.scope, config.binding)
                scopes[config.id] = {u.mailbox for u in scope.users}
            if row.mailbox not in scopes[config.id]:
                reason = "mailbox no longer in the integration's scope"
        if reason:
            stale.append((row.id, row.integration_id, reason))
    return stale


def purge_sync_states(
    engine: sa.Engine,
    settings: HousekeepingSettings,
    inventory: Inventory,
    oa_connection_id: str,
    now: dt.datetime | None = None,
) -> TableReport:
    now = _naive(now)
    with engine.connect().execution_options(**SQLITE_READ) as conn:
        stale = stale_sync_states(conn, settings, inventory, oa_connection_id, now)
    return _purge_rows(engine, t.sync_state, stale, settings, now)


def stale_calendar_ids(
    conn: sa.Connection, settings: HousekeepingSettings, inventory: Inventory, now: dt.datetime
) -> list[tuple[int, str, str]]:
    """(id, integration, reason) of every kept calendar id to remove: not looked up again
    for ``sync_state.retention_days`` (a mailbox no longer drained), of an integration no
    longer configured, or of a calendar folder it no longer writes to."""
    cutoff = now - dt.timedelta(days=settings.sync_state.retention_days)
    configs = {c.id: c for c in inventory.configs}
    ci = t.calendar_ids
    stale: list[tuple[int, str, str]] = []
    rows = conn.execute(
        sa.select(ci.c.id, ci.c.integration_id, ci.c.calendar, ci.c.updated_at).order_by(ci.c.id)
    )
    for row in rows:
        reason = None
        config = configs.get(row.integration_id)
        if row.updated_at < cutoff:
            reason = f"not looked up for {settings.sync_state.retention_days} days"
        elif not settings.sync_state.remove_unconfigured:
            pass
        elif row.integration_id in inventory.unreadable:
            pass  # its config does not validate: what it configures is unknown
        elif config is None:
            reason = "integration no longer configured"
        elif config.alimail is None or row.calendar != (config.alimail.calendar_folder or ""):
            reason = "calendar no longer configured"
        if reason:
            stale.append((row.id, row.integration_id, reason))
    return stale


def purge_calendar_ids(
    engine: sa.Engine,
    settings: HousekeepingSettings,
    inventory: Inventory,
    now: dt.datetime | None = None,
) -> TableReport:
    now = _naive(now)
    with engine.connect().execution_options(**SQLITE_READ) as conn:
        stale = stale_calendar_ids(conn, settings, inventory, now)
    return _purge_rows(engine, t.calendar_ids, stale, settings, now)


def _purge_rows(
    engine: sa.Engine,
    table: sa.Table,
    stale: list[tuple[int, str, str]],
    settings: HousekeepingSettings,
    now: dt.datetime,
) -> TableReport:
    """Delete ``stale`` rows (id, integration, reason) in batches; a row written again since
    it was read (``updated_at``) is no longer stale and stays."""
    report = TableReport(table.name)
    reasons = Counter(reason for _, _, reason in stale)
    for i in range(0, len(stale), settings.batch_size):
        batch = stale[i : i + settings.batch_size]
        deleted = 0
        with engine.begin() as conn:
            for j in range(0, len(batch), _IN_CHUNK):
                ids = [row_id for row_id, _, _ in batch[j : j + _IN_CHUNK]]
                # a row a sync run saved since it was read is no longer stale
                deleted += conn.execute(
                    sa.delete(table).where(table.c.id.in_(ids), table.c.updated_at < now)
                ).rowcount
        report.batches += 1
        groups = Counter(integration for _, integration, _ in batch)
        if deleted != len(batch):
            groups = Counter({"*": deleted})
        for key, n in groups.items():
            report.removed[key] = report.removed.get(key, 0) + n
        if settings.pause_s and i + settings.batch_size < len(stale):
            time.sleep(settings.pause_s)
    report.note = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
    return report


# --- everything -------------------------------------------------------------------------------


PARTS = ("sync_log", "reverse", "sync_state")


def run_part(
    part: str,
    engine: sa.Engine,
    settings: HousekeepingSettings,
    inventory: Inventory,
    oa_connection_id: str,
    now: dt.datetime | None = None,
) -> list[TableReport]:
    """One part of a housekeeping run (a task of the DAG); logs what it removed."""
    if part == "sync_log":
        reports = [purge_sync_log(engine, settings, inventory, now)]
    elif part == "reverse":
        reports = purge_reverse_tables(engine, settings, inventory, oa_connection_id, now)
    elif part == "sync_state":
        reports = [
            purge_sync_states(engine, settings, inventory, oa_connection_id, now),
            purge_calendar_ids(engine, settings, inventory, now),
        ]
    else:
        raise ValueError(f"unknown housekeeping part {part!r}; one of {', '.join(PARTS)}")
    for report in reports:
        log.info("housekeeping %s", report.describe())
    return reports


def run_all(
    engine: sa.Engine,
    settings: HousekeepingSettings,
    inventory: Inventory,
    oa_connection_id: str,
    now: dt.datetime | None = None,
) -> list[TableReport]:
    now = _naive(now)
    reports: list[TableReport] = []
    for part in PARTS:
        reports += run_part(part, engine, settings, inventory, oa_connection_id, now)
    return reports
