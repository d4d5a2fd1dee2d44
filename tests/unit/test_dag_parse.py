"""Parsing the DAG file (what the dag-processor does every few seconds) reads the configuration
files and nothing else: no database connection, no socket, and none of the connector or
engine modules (exchangelib, the Graph SDK, the OA store...) imported.

Parsed by Airflow's own ``DagBag`` in a fresh interpreter with every integration type, both
directions (so the reverse and housekeeping DAGs are built too) and guards that raise on any
connection attempt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Modules a DAG-file parse must not import: the connectors' client libraries, calsync's I/O
# layers, the OA database drivers.
HEAVY = (
    "exchangelib",
    "msgraph",
    "msgraph_core",
    "kiota_abstractions",
    "azure.identity",
    "msal",
    "psycopg",
    "pymysql",
    "calsync.connectors",
    "calsync.sync",
    "calsync.oa.store",
    "calsync.oa.db",
    "calsync.oa.outbox",
    "calsync.airflow.runtime",
    "calsync.airflow.reverse_runtime",
)

PROBE = r"""
import json, socket, sqlite3, sys

def refuse(*args, **kwargs):
    raise AssertionError(f"I/O while parsing the DAG file: {args[:2]!r}")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
sqlite3.connect = refuse

import sqlalchemy.engine
sqlalchemy.engine.Engine.connect = refuse
sqlalchemy.engine.Engine.raw_connection = refuse

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
names = json.loads(sys.argv[2])
heavy = [m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in names)]
print(json.dumps({
    "dags": sorted(bag.dags),
    "errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
    "heavy": sorted(heavy),
}))
"""


def make_include(dest: Path) -> None:
    shutil.copytree(ROOT / "include" / "mappings", dest / "mappings")
    (dest / "integrations").mkdir()
    for source in sorted((ROOT / "include" / "integrations").glob("demo_*.yaml")):
        text = source.read_text(encoding="utf-8")
        (dest / "integrations" / source.name).write_text(text, encoding="utf-8")
        both = text.replace("direction: forward", "direction: both")
        assert both != text, source.name
        (dest / "integrations" / f"{source.stem}_both.yaml").write_text(both, encoding="utf-8")


def test_parsing_the_dag_file_does_no_io_and_imports_no_connector(tmp_path: Path) -> None:
    include = tmp_path / "include"
    make_include(include)
    env = {**os.environ, "CALSYNC_INCLUDE_DIR": str(include)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(ROOT / "dags" / "calsync_integrations.py"),
            json.dumps(HEAVY),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    # 6 forward DAGs, one reverse DAG and one housekeeping DAG for the shared OA connection
    assert len(result["dags"]) == 8, result["dags"]
    assert "calsync_reverse" in result["dags"]
    assert "calsync_housekeeping" in result["dags"]
    assert result["heavy"] == []
