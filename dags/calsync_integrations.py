"""calsync: one forward-sync DAG per file in include/integrations/ (see calsync.airflow).

Thin on purpose: no network and no database I/O here, only the configuration files are read.
"""

import os
from pathlib import Path

from calsync.airflow.dag_loader import build_all

INCLUDE_DIR = Path(
    os.environ.get("CALSYNC_INCLUDE_DIR") or Path(__file__).resolve().parent.parent / "include"
)

for _dag in build_all(INCLUDE_DIR):
    globals()[_dag.dag_id] = _dag
