"""Turn ``include/`` into DAGs: one per valid integration, one visible error DAG per broken
file. Reads YAML files only (the dag-processor parses this every few seconds)."""

from __future__ import annotations

import logging
from pathlib import Path

from airflow.sdk import DAG

from calsync.config import LoadedConfig, load_integrations
from calsync.errors import ConfigError

log = logging.getLogger("calsync")


def build_all(include_dir: Path) -> list[DAG]:
    from calsync.airflow.forward_dag import build_error_dag, build_forward_dag
    from calsync.mapping import MappingLibrary

    dags: list[DAG] = []
    library = None
    try:
        library = MappingLibrary.load(include_dir / "mappings")
    except ConfigError as exc:
        log.error("calsync: %s", exc)
        dags.append(build_error_dag(LoadedConfig(Path("mappings"), error=exc)))
    for loaded in load_integrations(include_dir / "integrations", library):
        if loaded.error is not None:
            log.error("calsync: %s", loaded.error)
            dags.append(build_error_dag(loaded))
        elif loaded.config is not None and loaded.config.forward:
            dags.append(build_forward_dag(loaded, include_dir))
    return dags
