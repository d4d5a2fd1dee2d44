"""Turn ``include/`` into DAGs: one per valid integration, one visible error DAG per broken
file. Reads YAML files only (the dag-processor parses this every few seconds)."""

from __future__ import annotations

import logging
from pathlib import Path

from airflow.sdk import DAG

from calsync.config import IntegrationConfig, LoadedConfig, load_integrations
from calsync.errors import ConfigError

log = logging.getLogger("calsync")


def build_all(include_dir: Path) -> list[DAG]:
    from calsync.airflow.forward_dag import build_error_dag, build_forward_dag
    from calsync.airflow.housekeeping_dag import build_housekeeping_dags
    from calsync.airflow.reverse_dag import build_reverse_dag
    from calsync.mapping import MappingLibrary

    dags: list[DAG] = []
    library = None
    try:
        library = MappingLibrary.load(include_dir / "mappings")
    except ConfigError as exc:
        log.error("calsync: %s", exc)
        dags.append(build_error_dag(LoadedConfig(Path("mappings"), error=exc)))
    reverse: dict[str, list[IntegrationConfig]] = {}
    valid: list[IntegrationConfig] = []
    for loaded in load_integrations(include_dir / "integrations", library):
        if loaded.error is not None:
            log.error("calsync: %s", loaded.error)
            dags.append(build_error_dag(loaded))
            continue
        config = loaded.config
        if config is not None:
            valid.append(config)
        if config is not None and config.forward:
            dags.append(build_forward_dag(loaded, include_dir))
        if config is not None and config.reverse:
            reverse.setdefault(config.oa_connection_id, []).append(config)
    # One reverse DAG per OA database: its outbox serves every reverse integration on it.
    for oa_connection_id, configs in sorted(reverse.items()):
        dags.append(build_reverse_dag(oa_connection_id, configs, include_dir))
    # One housekeeping DAG per OA database in use (include/housekeeping.yaml, optional).
    dags.extend(build_housekeeping_dags(include_dir, valid))
    return dags
