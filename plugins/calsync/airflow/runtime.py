"""The bodies of the forward DAG's tasks. Each takes the Airflow context as a plain mapping,
so the logic is testable without a scheduler; nothing here runs at DAG-parse time."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from calsync.config import IntegrationConfig, parse_integration
from calsync.errors import CalsyncError, ConfigError, RangeError
from calsync.model import OAUser, Window
from calsync.sync.window import manual_window, scheduled_window

log = logging.getLogger("calsync")
RESULTS_KEY = "calsync_results"


def load_config(integration_file: str) -> IntegrationConfig:
    path = Path(integration_file)
    try:
        return parse_integration(path, path.read_text(encoding="utf-8"))
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


def check_mappings(config: IntegrationConfig, mappings_dir: str) -> None:
    """Fail the run's first task when the mapping library (or this config's references into
    it) is broken: every user's sync would fail on it after the run had started writing."""
    from calsync.config import check_references
    from calsync.mapping import MappingLibrary

    try:
        check_references(config, MappingLibrary.load(Path(mappings_dir)), config.id)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


def _now(context: Any) -> dt.datetime:
    dag_run = context.get("dag_run")
    for attr in ("run_after", "logical_date"):
        value = getattr(dag_run, attr, None) if dag_run is not None else None
        if value is not None:
            return value
    return dt.datetime.now(dt.UTC)


def resolve_window(
    integration_file: str, context: Any, mappings_dir: str | None = None
) -> dict[str, str]:
    config = load_config(integration_file)
    if mappings_dir is not None:
        check_mappings(config, mappings_dir)
    if not config.enabled:
        raise AirflowFailException(
            f"integration {config.id!r} is disabled (enabled: false in {integration_file}); "
            "enable it to sync"
        )
    params = context.get("params") or {}
    start, end = params.get("start"), params.get("end")
    now = _now(context)
    try:
        if start or end:
            window, kind = manual_window(start, end, now, config.timezone), "manual"
        else:
            window, kind = scheduled_window(now, config.timezone, config.window_days), "scheduled"
    except RangeError as exc:
        raise AirflowFailException(f"manual range refused: {exc}") from None
    log.info("window %s … %s (%s, %s)", window.start, window.end, window.timezone, kind)
    return {
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "timezone": window.timezone,
        "kind": kind,
    }


def window_from(data: dict[str, str]) -> Window:
    return Window(
        dt.date.fromisoformat(data["start"]), dt.date.fromisoformat(data["end"]), data["timezone"]
    )


def _engine(config: IntegrationConfig) -> Any:
    from calsync.oa.db import engine_from_airflow_connection
    from calsync.oa.migrate import current, head

    engine = engine_from_airflow_connection(config.oa_connection_id)
    have, want = current(engine), head()
    if have != want:
        raise AirflowFailException(
            f"the OA database of connection {config.oa_connection_id!r} is at schema revision "
            f"{have or 'none'}, calsync needs {want}: run `python -m calsync.oa.migrate`"
        )
    return engine


def _run_info(config: IntegrationConfig, context: Any) -> Any:
    from calsync.oa.store import RunInfo

    dag_run = context.get("dag_run")
    return RunInfo(
        integration_id=config.id,
        dag_id=getattr(dag_run, "dag_id", None),
        run_id=getattr(dag_run, "run_id", None),
        two_way=config.direction == "both",
        conflict_policy=config.conflict_policy,
    )


def resolve_users(
    integration_file: str, window: dict[str, str], context: Any
) -> list[list[dict[str, Any]]]:
    from calsync.oa import store

    config = load_config(integration_file)
    requested = [str(u).strip().lower() for u in (context.get("params") or {}).get("users") or []]
    requested = [u for u in requested if u]
    engine = _engine(config)
    with engine.connect() as conn:
        scope = store.resolve_scope(conn, config.scope, config.binding)
    users = scope.users
    skipped = scope.skipped
    if requested:
        known = {u.login: u for u in users} | {u.mailbox: u for u in users}
        unknown = [name for name in requested if name not in known]
        if unknown:
            raise AirflowFailException(
                f"unknown user(s) for integration {config.id!r}: {', '.join(unknown)} "
                "(not in the OA, inactive, out of scope, or without a mailbox)"
            )
        wanted = {known[name].id for name in requested}
        users = [u for u in users if u.id in wanted]
        skipped = []  # a run for named users reports on them only
    run = _run_info(config, context)
    if skipped:
        with engine.begin() as conn:
            store.write_logs(
                conn,
                [
                    store.log_row(run, "skipped", f"{name}: {why}", user_id=uid)
                    for uid, name, why in skipped
                ],
            )
        for uid, name, why in skipped:
            log.warning("user %s (%s) skipped: %s", name, uid, why)
    log.info("%d user(s) in scope, %d skipped", len(users), len(skipped))
    rows = [{"id": u.id, "mailbox": u.mailbox, "name": u.name, "login": u.login} for u in users]
    return config.execution.batches(rows)


def personal_accounts(config: IntegrationConfig, engine: Any, users: list[OAUser]) -> Any:
    """F21: for Exchange in ``user`` access mode, a mailbox → personal account lookup."""
    if config.type != "exchange" or config.exchange is None:
        return None
    if config.exchange.access_mode != "user":
        return None
    from calsync.accounts import AccountVault, load_accounts

    try:
        vault = AccountVault.from_environment()
    except CalsyncError as exc:
        raise AirflowFailException(str(exc)) from None
    with engine.connect() as conn:
        by_user = load_accounts(conn, vault, [u.id for u in users])
    by_mailbox = {u.mailbox: by_user.get(u.id) for u in users}
    return by_mailbox.get


def describe_batch(batch: list[dict[str, Any]]) -> str:
    if not batch:
        return "(empty)"
    first = batch[0]["mailbox"]
    return first if len(batch) == 1 else f"{first} +{len(batch) - 1}"


def sync_batch(
    integration_file: str,
    mappings_dir: str,
    batch: list[dict[str, Any]],
    window: dict[str, str],
    context: Any,
) -> list[dict[str, Any]]:
    from calsync.connectors.base import connector_for
    from calsync.mapping import MappingLibrary
    from calsync.sync.forward import sync_users

    config = load_config(integration_file)
    try:
        library = MappingLibrary.load(Path(mappings_dir))
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None
    engine = _engine(config)
    users = [
        OAUser(u["id"], u["mailbox"], u.get("name", ""), None, u.get("login", "")) for u in batch
    ]
    run = _run_info(config, context)

    accounts = personal_accounts(config, engine, users)
    # E7: the scheduled run continues each mailbox's change feed where it can; a manual range
    # is always read in full and leaves the stored feed state alone.
    incremental = window.get("kind") == "scheduled"
    confirm_deletes = bool((context.get("params") or {}).get("confirm_deletes"))
    if confirm_deletes:
        log.warning("confirm_deletes: deletions the mass-deletion guard would hold are applied")

    async def go() -> list[Any]:
        async with connector_for(config, accounts=accounts) as connector:
            return await sync_users(
                engine,
                config,
                library,
                connector,
                users,
                window_from(window),
                run,
                incremental=incremental,
                confirm_deletes=confirm_deletes,
            )

    results = [r.as_dict() for r in asyncio.run(go())]
    ti = context.get("ti")
    if ti is not None:
        ti.xcom_push(key=RESULTS_KEY, value=results)
    for r in results:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(r["counts"].items()) if v)
        if r["error"]:
            log.error("%s: FAILED: %s", r["mailbox"], r["error"])
        else:
            log.info("%s: %s", r["mailbox"], counts or "nothing to do")
    failed = [r for r in results if r["error"]]
    if failed:
        text = "; ".join(f"{r['mailbox']}: {r['error']}" for r in failed)
        if all(not r["retriable"] for r in failed):
            raise AirflowFailException(f"{len(failed)} user(s) failed: {text}")
        raise CalsyncError(f"{len(failed)} user(s) failed: {text}")  # Airflow retries if it may
    return results


def _user_results(pulled: Any) -> list[dict[str, Any]]:
    """Flatten what xcom_pull gives for a mapped task: one task's list of user results, or a
    list of such lists (one per map index, None where a task pushed nothing)."""
    if isinstance(pulled, dict):
        return [pulled]
    out: list[dict[str, Any]] = []
    for item in pulled or []:
        out.extend(_user_results(item) if not isinstance(item, dict) else [item])
    return out


def summarize(integration_file: str, window: dict[str, str] | None, context: Any) -> dict[str, Any]:
    if not window:
        # A leaf that is merely skipped would let Airflow mark the run a success.
        raise AirflowFailException("the run stopped before syncing: see resolve_window's log")
    config = load_config(integration_file)
    ti = context.get("ti")
    users: dict[str, dict[str, Any]] = {}
    if ti is not None:
        for r in _user_results(ti.xcom_pull(task_ids="sync_users", key=RESULTS_KEY)):
            users[r["mailbox"]] = r
    batches = ti.xcom_pull(task_ids="resolve_users") if ti is not None else None
    if batches is None:
        raise AirflowFailException("the run stopped before syncing: see resolve_users' log")
    for batch in batches:
        for user in batch:
            if user["mailbox"] not in users:  # its task died before reporting (or was skipped)
                users[user["mailbox"]] = {
                    "mailbox": user["mailbox"],
                    "counts": {},
                    "error": "no result: its sync_users task did not finish",
                }
    totals: dict[str, int] = {}
    for r in users.values():
        for key, value in r["counts"].items():
            totals[key] = totals.get(key, 0) + value
    failed = sorted(m for m, r in users.items() if r["error"])
    summary = {
        "integration": config.id,
        "window": f"{window['start']} … {window['end']} ({window['timezone']}, {window['kind']})",
        "users": len(users),
        "totals": totals,
        "failed_users": failed,
        "held_users": sorted(m for m, r in users.items() if r["counts"].get("held")),
        "per_user": {m: r["counts"] for m, r in sorted(users.items())},
    }
    from calsync.sync.forward import count_table

    lines = count_table([(m, r["counts"]) for m, r in sorted(users.items())])
    log.info("calsync run summary, %s\n%s", summary["window"], "\n".join(lines))
    from calsync.airflow.metrics import emit

    emit(
        "forward",
        config.id,
        totals,
        {"failed_users": len(failed), "held_users": len(summary["held_users"])},
    )
    if summary["held_users"]:
        log.warning(
            "deletions held by the mass-deletion guard (E10) for %s: check these calendars, "
            "then trigger a manual run with confirm_deletes to apply them",
            ", ".join(summary["held_users"]),
        )
    if failed:
        raise AirflowFailException(
            f"{len(failed)} of {len(users)} user(s) failed: {', '.join(failed)}; "
            "clear their sync_users task to retry just them"
        )
    return summary
