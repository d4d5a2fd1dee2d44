"""The reverse drain SIGKILLed at random moments (before, during and after suite writes, inside
OA transactions), then resumed by another drain once its claims lapse: every schedule ends up
in the suite exactly once, linked once, its delivery done (issue 4; issue 7 scales it up)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.reverse_helpers import ReverseRunner, deliveries, oa_create

LOGINS = ["zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4"]
MAILBOX = {login: f"{login}@contoso.com" for login in LOGINS} | {"zhao4": "zhao4b@contoso.com"}
TRIALS = int(os.environ.get("CALSYNC_CRASH_TRIALS", "3"))


@pytest.mark.parametrize("seed", range(TRIALS))
def test_killed_drain_resumes_without_duplicates(
    seed: int, seeded_oa: sa.Engine, graph: Any, tmp_path: Path
):
    rng = random.Random(seed)
    graph.faults.update(latency_ms=40)
    config_file = tmp_path / "it_rev.yaml"
    from tests.integration.conftest import INTEGRATION_YAML

    config_file.write_text(
        INTEGRATION_YAML.replace("execution: {concurrency: 4, retries: 0}", "")
        + "direction: reverse\n"
        + "execution: {concurrency: 4, retries: 0, retry_backoff_s: 0, claim_lease_s: 0.5}\n"
    )
    titles = {}
    for i in range(24):
        login = LOGINS[i % len(LOGINS)]
        titles[f"crash {seed}-{i}"] = login
        oa_create(seeded_oa, login, f"crash {seed}-{i}", attendees=(LOGINS[(i + 1) % 6],))
    env = os.environ.copy()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.reverse_worker",
            str(seeded_oa.url.render_as_string(hide_password=False)),
            str(config_file),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # the worker needs ~2-4 s to import and start; kill it somewhere in its work
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not graph.stats.snapshot()["by_kind"].get(
        "events_create"
    ):
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.1))
    alive = proc.poll() is None
    made = graph.stats.snapshot()["by_kind"].get("events_create", 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    from calsync.config import parse_integration

    config = parse_integration(config_file, config_file.read_text())
    time.sleep(0.6)  # the killed drain's claims lapse
    runner = ReverseRunner(seeded_oa, [config])
    for _ in range(3):
        runner()
        if all(d["status"] == "done" for d in deliveries(seeded_oa)):
            break
        time.sleep(0.6)
    assert {d["status"] for d in deliveries(seeded_oa)} == {"done"}
    for title, login in titles.items():
        found = [e for e in graph.store.events(MAILBOX[login]) if e.get("subject") == title]
        assert len(found) == 1, (title, len(found))
    with seeded_oa.connect() as conn:
        links = conn.execute(
            sa.select(t.links.c.schedule_id, sa.func.count()).group_by(t.links.c.schedule_id)
        ).all()
    assert len(links) == len(titles) and all(n == 1 for _, n in links)
    print(f"seed {seed}: killed {'mid-run' if alive else 'after the end'}, {made} create(s) before")
