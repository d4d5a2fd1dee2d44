"""The scale benchmark harness (bench/scale.py) at toy size, so it cannot rot: a tenant of
3 users × 10 events (a series, singles, rooms, attendees) on one suite emulator, scenarios 1–3
by the engine and the naive baseline, whose OA results must be the same; then the table and
the JSON. The heavy runs stay in bench/ (make bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("processes", [1, 2])
def test_scale_harness_runs_and_the_baseline_writes_the_same_oa(
    tmp_path: Path, processes: int
) -> None:
    """Also with the users split over two sync processes (as two mapped tasks)."""
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scale.py"),
            *("--suite", "alimail", "--users", "3", "--events", "10"),
            *("--scenarios", "1,2,3", "--processes", str(processes), "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "alimail   1 first full sync" in run.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    forward = report["suites"]["alimail"]["forward"]
    assert forward["oa_match"] is True
    assert forward["oa"]["engine"]["schedules"] == 30
    assert forward["oa"]["engine"]["links"] == 30
    runs = forward["runs"]
    assert runs["1"]["engine"]["counts"].get("created") == 30
    assert runs["1"]["naive"]["counts"].get("created") == 30
    assert runs["2"]["engine"]["counts"].get("created", 0) == 0
    assert runs["3"]["engine"]["counts"].get("updated") == forward["changed_events"] == 1
    # the OA writer's busy time is reported; an unchanged re-sync of 3 users may take < 1 ms
    assert runs["1"]["engine"]["oa_apply_s"] > 0
    for scenario in ("1", "2", "3"):
        assert runs[scenario]["engine"].get("processes", 1) == processes
        assert isinstance(runs[scenario]["engine"]["oa_apply_s"], float)
        assert runs[scenario]["engine"]["oa_apply_s"] >= 0
        assert runs[scenario]["engine"]["requests"] > 0
        assert runs[scenario]["engine"]["failed_users"] == 0
        assert forward["floor"][scenario]["floor_s"] > 0
