"""Scenario 5 of the scale benchmark: how long Airflow takes to parse the DAG file with 50
integration configs, and what parsing imports.

    .venv/bin/python bench/dag_parse.py [--configs 50] [--repeat 3]

A private include/ with ``--configs`` integration files (the three demo integrations over
and over, every fifth one two-way so the reverse and housekeeping DAGs are built too) and
the shipped mappings. Measured in fresh interpreters, as the dag-processor parses a file in
a fresh process: Airflow's own parse timing (``DagBag``'s ``dagbag_stats`` duration, what
``airflow dags report`` prints) with Airflow itself already imported — it is, in the
dag-processor — and ``python -X importtime`` of the calsync modules the DAG file imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DAG_FILE = ROOT / "dags" / "calsync_integrations.py"

PROBE = r"""
import json, sys, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
HEAVY = ("exchangelib", "msgraph", "kiota_abstractions", "psycopg", "pymysql",
         "calsync.connectors", "calsync.sync", "calsync.oa.store", "calsync.oa.db")
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
wall = time.perf_counter() - started
[stat] = bag.dagbag_stats
took = stat.duration
took = took.total_seconds() if hasattr(took, "total_seconds") else float(took)
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
print(json.dumps({"wall_s": wall, "dagbag_s": took, "dags": len(bag.dags),
                  "errors": len(bag.import_errors), "heavy": heavy}))
"""


def make_include(dest: Path, configs: int) -> None:
    shutil.copytree(ROOT / "include" / "mappings", dest / "mappings")
    (dest / "integrations").mkdir(parents=True)
    sources = sorted((ROOT / "include" / "integrations").glob("demo_*.yaml"))
    for i in range(configs):
        text = sources[i % len(sources)].read_text(encoding="utf-8")
        text = text.replace("connection_id: calsync_", f"connection_id: calsync{i:02d}_", 1)
        if i % 5 == 4:
            text = text.replace("direction: forward", "direction: both")
        (dest / "integrations" / f"integration_{i:02d}.yaml").write_text(text, encoding="utf-8")


def _env(include: Path, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "CALSYNC_INCLUDE_DIR": str(include),
    }


def importtime(env: dict[str, str]) -> dict[str, float]:
    """Cumulative import time (ms) of the calsync modules the DAG file needs, Airflow already
    imported: ``python -X importtime``."""
    code = (
        "import airflow.sdk, sys; sys.path.insert(0, sys.argv[1]); print('---', file=sys.stderr);"
        " import calsync.airflow.dag_loader, calsync.airflow.forward_dag,"
        " calsync.airflow.reverse_dag, calsync.airflow.housekeeping_dag, calsync.mapping"
    )
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, str(ROOT / "plugins")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = out.stderr.split("---", 1)[1]
    total_us = 0
    top: dict[str, float] = {}
    for line in after.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if not name[1:].startswith(" "):  # a top-level import (nested ones are indented)
            total_us += int(cumulative)
        if name.strip().startswith("calsync"):
            top[name.strip()] = int(cumulative) / 1000
    heaviest = dict(sorted(top.items(), key=lambda kv: -kv[1])[:5])
    return {"import_ms": round(total_us / 1000, 1), "heaviest_ms": heaviest}


def measure(workdir: Path | None = None, configs: int = 50, repeat: int = 3) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="calsync-parse-"))
    include = workdir / f"parse_include_{configs}"
    shutil.rmtree(include, ignore_errors=True)
    make_include(include, configs)
    env = _env(include, workdir / "parse_airflow_home")
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(DAG_FILE)],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    parse = [r["dagbag_s"] for r in runs]
    return {
        "configs": configs,
        "dags": runs[0]["dags"],
        "import_errors": runs[0]["errors"],
        "dagbag_s": round(statistics.median(parse), 3),
        "dagbag_min_s": round(min(parse), 3),  # the least disturbed by other load
        "dagbag_runs_s": [round(p, 3) for p in parse],
        "heavy_modules_imported": runs[0]["heavy"],
        **importtime(env),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result = measure(configs=args.configs, repeat=args.repeat)
    print(json.dumps(result, indent=1))
    return 0 if result["dagbag_s"] <= 1.0 and not result["heavy_modules_imported"] else 1


if __name__ == "__main__":
    sys.exit(main())
