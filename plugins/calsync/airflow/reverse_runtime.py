"""The body of the reverse DAG's task: route and deliver the OA's changes (calsync.sync.reverse).

The integrations are read again at run time, so an edited config applies to the next drain.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from calsync.config import IntegrationConfig, load_integrations
from calsync.errors import CalsyncError, ConfigError

log = logging.getLogger("calsync")


def reverse_configs(include_dir: Path, oa_connection_id: str) -> list[IntegrationConfig]:
    configs = []
    for loaded in load_integrations(include_dir / "integrations"):
        if loaded.error is not None:
            log.error("skipped (invalid): %s", loaded.error)
        elif loaded.config is not None and loaded.config.oa_connection_id == oa_connection_id:
            configs.append(loaded.config)
    return configs


def drain_outbox(include_dir: str, oa_connection_id: str, context: Any) -> dict[str, Any]:
    from calsync.airflow.runtime import _engine, personal_accounts
    from calsync.connectors.base import connector_for
    from calsync.mapping import MappingLibrary
    from calsync.oa import store
    from calsync.sync.reverse import drain

    root = Path(include_dir)
    configs = reverse_configs(root, oa_connection_id)
    active = [c for c in configs if c.enabled and c.reverse]
    try:
        library = MappingLibrary.load(root / "mappings")
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None
    if not configs:
        raise AirflowFailException(f"no integration uses the OA connection {oa_connection_id!r}")
    engine = _engine(configs[0])
    dag_run = context.get("dag_run")
    ti = context.get("ti")
    run = store.RunInfo(
        integration_id="*",
        dag_id=getattr(dag_run, "dag_id", None),
        run_id=getattr(dag_run, "run_id", None),
    )
    worker = f"{run.run_id or 'local'}#{getattr(ti, 'try_number', 1)}"

    def factory(config: IntegrationConfig) -> Any:
        users: list[Any] = []
        if config.type == "exchange":
            with engine.connect() as conn:
                users = store.resolve_scope(conn, config.scope, config.binding).users
        return connector_for(config, accounts=personal_accounts(config, engine, users))

    confirm_deletes = bool((context.get("params") or {}).get("confirm_deletes"))
    if confirm_deletes:
        log.warning("confirm_deletes: suite deletions held by the mass-deletion guard are released")
    summary = asyncio.run(
        drain(
            engine, configs, library, factory, run, worker=worker, confirm_deletes=confirm_deletes
        )
    )
    routed = summary["routed"]
    log.info(
        "routed %d outbox row(s): %d delivery(ies), %d calsync echo(es) ignored, "
        "%d out of every scope; %d reverse integration(s)",
        routed["rows"],
        routed["deliveries"],
        routed["echoes"],
        routed["out_of_scope"],
        len(active),
    )
    from calsync.airflow.metrics import emit

    emit("reverse", "all", {"routed": routed["rows"], "echoes": routed["echoes"]})
    broken = []
    for report in summary["integrations"]:
        emit("reverse", report["integration"], report["counts"])
        counts = ", ".join(f"{k}={v}" for k, v in sorted(report["counts"].items()))
        log.info("%s: %s", report["integration"], counts or "nothing to deliver")
        for held in report.get("held", []):
            log.warning(
                "%s: %d suite deletion(s) of %s held: %s — check, then trigger this DAG with "
                "confirm_deletes",
                report["integration"],
                held["total"],
                held["mailbox"],
                held["reason"],
            )
        for error in report["errors"][:20]:
            log.warning("%s: %s", report["integration"], error)
        if report["errors"] and not report["counts"]:
            broken.append(f"{report['integration']}: {report['errors'][0]}")
    if broken:
        # a whole integration could not drain (e.g. its connection is missing): retry the task
        raise CalsyncError("; ".join(broken))
    return summary
