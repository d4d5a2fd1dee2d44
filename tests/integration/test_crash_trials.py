"""Crash anywhere (issue 7, E1/E5): forward sync and reverse drain SIGKILLed at seeded points —
before, during and after suite writes, during mailbox reads, inside and right after OA commits —
over many trials per direction, each followed by a normal re-run. Then both sides must equal
the expected state: no duplicate, no lost change, no orphan link.

The killed process is a child forked from one long-lived server (crash_zygote.py), so a trial
costs a fork instead of an interpreter start. ``CALSYNC_CRASH_TRIALS`` sets the number of
trials per direction (default 100). SQLite OA copies (a fresh one per trial); the Graph
emulator runs in this process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import parse_integration
from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.conftest import INTEGRATION_YAML, TODAY, ForwardRunner, people
from tests.integration.crash_zygote import REPLY
from tests.integration.reverse_helpers import ReverseRunner, oa_create, oa_delete, oa_update
from tests.integration.test_forward_properties import (  # noqa: F401  (oa_template: a fixture)
    oa_copy,
    oa_template,
    reset_mailboxes,
)
from tests.integration.test_incremental_equivalence import oa_content

TRIALS = int(os.environ.get("CALSYNC_CRASH_TRIALS", "100"))
FORWARD_POINTS = ("oa_commit", "oa_after_commit", "suite_read_during")
REVERSE_POINTS = (
    "suite_write_before",
    "suite_write_during",
    "suite_write_after",
    "oa_commit",
    "oa_after_commit",
)
LOGINS = ["zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4"]
MAILBOX = {login: f"{login}@contoso.com" for login in LOGINS} | {"zhao4": "zhao4b@contoso.com"}
EXECUTION = "execution: {concurrency: 4, retries: 0, retry_backoff_s: 0, claim_lease_s: 60}\n"


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.crash_zygote"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        raise RuntimeError(f"the crash zygote stopped (exit {self.proc.wait(5)})")

    def trial(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote(graph_server: Any) -> Iterator[Zygote]:
    z = Zygote()  # started after the emulator fixture set the connection's env var
    yield z
    z.close()


def write_config(path: Path, direction: str) -> Path:
    text = INTEGRATION_YAML.replace("execution: {concurrency: 4, retries: 0}", "")
    path.write_text(text + f"direction: {direction}\n" + EXECUTION)
    return path


def test_forward_killed_anywhere_then_rerun_equals_a_clean_sync(
    graph_server: Any,
    oa_template: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
    zygote: Zygote,
):
    from scripts.demo_data import graph_seed

    config_file = write_config(tmp_path / "it_o365.yaml", "forward")
    config = parse_integration(config_file, config_file.read_text())
    outcomes: Counter[str] = Counter()
    for seed in range(TRIALS):
        rng = random.Random(seed)
        reset_mailboxes(graph_server)
        graph_server.seed(graph_seed(TODAY, people()))
        with (
            oa_copy(oa_template, tmp_path / "crash.db") as engine,
            oa_copy(oa_template, tmp_path / "clean.db") as clean,
        ):
            if rng.random() < 0.5:  # half the trials crash an update run, not a first sync
                ForwardRunner(engine, config)()
                boxes = [m for m in graph_server.store.mailboxes() if "meeting" not in m]
                for mailbox in rng.sample(boxes, 2):
                    items = graph_server.store.events(mailbox)
                    if items:
                        graph_server.store.update_event(
                            mailbox, items[0]["id"], {"subject": f"changed {seed}"}
                        )
            point = rng.choice(FORWARD_POINTS)
            reply = zygote.trial(
                direction="forward",
                oa_url=str(engine.url),
                config=str(config_file),
                point=point,
                # a run commits to the OA about twice (group commit: the mailboxes read so far
                # in one transaction), and reads each mailbox once
                count=rng.randint(1, 2) if point.startswith("oa_") else rng.randint(1, 6),
                delay_ms=rng.uniform(0, 30),
            )
            assert reply["killed"] or reply["exit"] == 0, reply
            outcomes[f"{point}:{'killed' if reply['killed'] else 'finished'}"] += 1
            engine.dispose()
            ForwardRunner(engine, config)()  # the re-run
            ForwardRunner(clean, config)()
            assert oa_content(engine, config.id) == oa_content(clean, config.id), (seed, point)
    print("forward crash trials:", dict(sorted(outcomes.items())))
    assert sum(n for k, n in outcomes.items() if k.endswith("killed")) >= TRIALS // 2


def reverse_state(engine: sa.Engine, graph: Any, config_id: str) -> list[str]:
    """Problems, if any: every live in-scope schedule exactly once in its creator's mailbox
    with its current title, linked once; none of the deleted ones left; all deliveries done."""
    problems: list[str] = []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.schedules.c.id, t.schedules.c.title, t.users.c.login_name).join(
                t.users, t.users.c.id == t.schedules.c.creator_id
            )
        ).all()
        links = Counter(
            conn.execute(
                sa.select(t.links.c.schedule_id).where(t.links.c.integration_id == config_id)
            ).scalars()
        )
        statuses = set(conn.execute(sa.select(t.deliveries.c.status)).scalars())
    if statuses - {"done"}:
        problems.append(f"deliveries not done: {statuses}")
    live = {}
    for sid, title, login in rows:
        if login not in MAILBOX:
            continue
        live[f"calsync:{config_id}:{sid}"] = (title, MAILBOX[login], sid)
    found: Counter[str] = Counter()
    for mailbox in set(MAILBOX.values()):
        for event in graph.store.events(mailbox):
            key = next(
                (
                    p.get("value")
                    for p in event.get("singleValueExtendedProperties") or []
                    if str(p.get("value", "")).startswith("calsync:")
                ),
                None,
            )
            if key is None:
                continue
            found[key] += 1
            if key not in live:
                problems.append(f"{mailbox}: event of a deleted schedule left: {key}")
            elif (event["subject"], mailbox) != live[key][:2]:
                problems.append(f"{key}: suite has {event['subject']!r} in {mailbox}")
    for key, (title, _mailbox, sid) in live.items():
        if found[key] != 1:
            problems.append(f"{title!r} ({key}) is in the suite {found[key]} time(s)")
        if links[sid] != 1:
            problems.append(f"{title!r} has {links[sid]} link(s)")
    return problems


def test_reverse_killed_anywhere_then_rerun_converges(
    graph_server: Any,
    oa_template: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
    zygote: Zygote,
):
    config_file = write_config(tmp_path / "it_rev.yaml", "reverse")
    config = parse_integration(config_file, config_file.read_text())
    outcomes: Counter[str] = Counter()
    for seed in range(TRIALS):
        rng = random.Random(1000 + seed)
        reset_mailboxes(graph_server)
        graph_server.faults.update(latency_ms=10)
        with oa_copy(oa_template, tmp_path / "crash.db") as engine:
            with engine.begin() as conn:  # the template's OA-made schedule is not this test's
                conn.execute(sa.delete(t.schedules))
            start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
            ids = [
                oa_create(
                    engine,
                    LOGINS[i % 6],
                    f"crash {seed}-{i}",
                    start + dt.timedelta(days=1, hours=i),
                    attendees=(LOGINS[(i + 1) % 6],),
                    room="会议室01" if i % 4 == 0 else None,
                )
                for i in range(10)
            ]
            if rng.random() < 0.5:  # half the trials crash a run of updates and deletes
                ReverseRunner(engine, [config])()
                for sid in rng.sample(ids, 3):
                    oa_update(engine, sid, title=f"edited {seed}-{sid}")
                for sid in rng.sample(ids, 2):
                    oa_delete(engine, sid)
            point = rng.choice(REVERSE_POINTS)
            reply = zygote.trial(
                direction="reverse",
                oa_url=str(engine.url),
                config=str(config_file),
                point=point,
                count=rng.randint(1, 12),
                delay_ms=rng.uniform(0, 10),
            )
            assert reply["killed"] or reply["exit"] == 0, reply
            outcomes[f"{point}:{'killed' if reply['killed'] else 'finished'}"] += 1
            engine.dispose()
            with engine.begin() as conn:  # the killed drain's claims lapse
                conn.execute(sa.update(t.deliveries).values(claim_expires_at=None))
            for _ in range(3):
                ReverseRunner(engine, [config])()
            problems = reverse_state(engine, graph_server, config.id)
            assert not problems, (seed, point, reply, problems)
    print("reverse crash trials:", dict(sorted(outcomes.items())))
    assert sum(n for k, n in outcomes.items() if k.endswith("killed")) >= TRIALS // 2
