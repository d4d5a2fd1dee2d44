"""The demo: an embedded SQLite OA seeded with demo users, a local Office 365 (Graph)
emulator seeded with their calendars, and the integration DAG run once.

    python scripts/demo.py run         # `airflow dags test` once, then print what was synced
    python scripts/demo.py standalone  # the same data under `airflow standalone` (:8080)
    python scripts/demo.py env         # print the environment (source it to use the CLI)

Everything lives under .demo/ (delete it to start over).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("CALSYNC_DEMO_DIR") or ROOT / ".demo").resolve()
BIN = Path(sys.executable).parent
DAG_ID = "calsync_demo_office365"
GRAPH_CONN = "calsync_o365_demo"
QUIET_HOOK_LOGGER = "airflow.task.hooks.calsync.connectors.graph_hook.CloudGraphHook"

sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]


def start_emulator(seed: dict) -> tuple[subprocess.Popen, dict]:
    (DEMO / "graph_seed.json").write_text(json.dumps(seed, ensure_ascii=False, indent=1))
    state = DEMO / "graph_state.json"
    state.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.graph",
            "--port",
            os.environ.get("CALSYNC_DEMO_GRAPH_PORT", "0"),
            "--tls-dir",
            str(DEMO / "tls"),
            "--seed",
            str(DEMO / "graph_seed.json"),
            "--state-file",
            str(state),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(DEMO / "graph_emulator.log", "w"),  # noqa: SIM115 - lives with the process
    )
    for _ in range(100):
        if state.exists() and state.read_text().strip():
            return proc, json.loads(state.read_text())
        if proc.poll() is not None:
            sys.exit(f"the Graph emulator did not start; see {DEMO / 'graph_emulator.log'}")
        time.sleep(0.1)
    proc.terminate()
    sys.exit("the Graph emulator did not report ready within 10 s")


def prepare_oa() -> str:
    from calsync.oa.db import engine_from_url
    from calsync.oa.migrate import upgrade
    from calsync.oa.seed import seed_demo

    url = f"sqlite:///{DEMO / 'oa.db'}"
    engine = engine_from_url(url)
    upgrade(engine)
    seed_demo(engine)
    return url


def demo_people() -> list[tuple[str, str]]:
    from calsync.oa.seed import DEMO_USERS

    return [(u["email"], u["name"]) for u in DEMO_USERS if u.get("email") and u.get("active", True)]


def airflow_env(emulator: dict) -> dict[str, str]:
    ca_bundle = DEMO / "ca-bundle.pem"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    ca_bundle.write_text(
        (system.read_text() if system.exists() else "") + Path(emulator["ca_file"]).read_text()
    )
    env = {
        "AIRFLOW_HOME": str(DEMO / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "CALSYNC_INCLUDE_DIR": str(ROOT / "include"),
        # The msgraph hook logs every request URL at INFO; keep its warnings only.
        "AIRFLOW__LOGGING__NAMESPACE_LEVELS": f"{QUIET_HOOK_LOGGER}=WARNING",
        "AIRFLOW_CONN_CALSYNC_OA": json.dumps({"conn_type": "sqlite", "host": str(DEMO / "oa.db")}),
        f"AIRFLOW_CONN_{GRAPH_CONN.upper()}": emulator["airflow_conn_json"],
        "SSL_CERT_FILE": str(ca_bundle),
        "REQUESTS_CA_BUNDLE": str(ca_bundle),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    (DEMO / "env.sh").write_text(
        "".join(f"export {k}='{v}'\n" for k, v in env.items() if k != "PATH")
        + f"export PATH='{BIN}':\"$PATH\"\n"
    )
    return env


def report(url: str) -> None:
    import sqlalchemy as sa

    from calsync.oa import schema as t
    from calsync.oa.db import engine_from_url

    engine = engine_from_url(url)
    with engine.connect() as conn:
        users = dict(conn.execute(sa.select(t.users.c.id, t.users.c.display_name)).all())
        rooms = dict(conn.execute(sa.select(t.rooms.c.id, t.rooms.c.name)).all())
        schedules = sorted(
            conn.execute(sa.select(t.schedules)).all(),
            key=lambda s: (s.start_date or s.start_utc.date(), s.start_utc or dt.datetime.min),
        )
        last_run = conn.execute(
            sa.select(t.sync_log.c.run_id).order_by(t.sync_log.c.id.desc()).limit(1)
        ).scalar()
        people: dict[int, list[str]] = {}
        for p in conn.execute(sa.select(t.participants)):
            label = users.get(p.user_id, "") if p.kind == "user" else p.email
            if p.kind == "room":
                label = f"[{rooms.get(p.room_id, p.email)}]"
            people.setdefault(p.schedule_id, []).append(label)
        log = conn.execute(
            sa.select(t.sync_log.c.action, sa.func.count())
            .where(t.sync_log.c.run_id == last_run)
            .group_by(t.sync_log.c.action)
            .order_by(t.sync_log.c.action)
        ).all()
        skipped = conn.execute(
            sa.select(t.sync_log.c.mailbox, t.sync_log.c.title, t.sync_log.c.message).where(
                t.sync_log.c.action.in_(["skipped", "failed"]), t.sync_log.c.run_id == last_run
            )
        ).all()
    print(f"\n=== OA schedules synced from Office 365 ({len(schedules)}) ===")
    for s in schedules:
        if s.all_day:
            last = s.end_date - dt.timedelta(days=1)
            when = f"{s.start_date} (all day)" + (f" … {last}" if last > s.start_date else "")
        else:
            start = s.start_utc.replace(tzinfo=dt.UTC).astimezone(
                dt.timezone(dt.timedelta(hours=8))
            )
            end = s.end_utc.replace(tzinfo=dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8)))
            when = f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} (UTC+8)"
        room = f" @{rooms[s.room_id]}" if s.room_id else ""
        print(f"- {when}  {s.title}{room}  by {users.get(s.creator_id)}  colour {s.color}")
        if people.get(s.id):
            print(f"    participants: {', '.join(people[s.id])}")
    print(f"\n=== sync log of this run ({last_run}): records per action ===")
    for action, count in log:
        print(f"  {action:10} {count}")
    for row in skipped:
        print(f"  - {row.mailbox or '-'} {row.title or ''}: {row.message}")


def run(standalone: bool) -> int:
    DEMO.mkdir(exist_ok=True)
    from scripts.demo_data import graph_seed

    url = prepare_oa()
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    emulator_proc, emulator = start_emulator(graph_seed(today, demo_people()))
    env = {**os.environ, **airflow_env(emulator)}
    try:
        subprocess.run(
            [BIN / "airflow", "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        if standalone:
            print(f"Graph emulator on {emulator['base_url']}; OA at {DEMO / 'oa.db'}")
            print("Airflow UI: http://localhost:8080 (admin/admin); Ctrl-C stops everything.")
            return subprocess.call([BIN / "airflow", "standalone"], env=env)
        print(f"Running {DAG_ID} once with `airflow dags test` …", flush=True)
        logfile = DEMO / "dags_test.log"
        with open(logfile, "w") as out:
            rc = subprocess.call(
                [BIN / "airflow", "dags", "test", DAG_ID],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        printing = False
        for line in logfile.read_text(errors="replace").splitlines():
            if "calsync run summary" in line:
                printing = True
                line = "calsync run summary, " + line.split("calsync run summary, ", 1)[1]
            if printing:
                print(line.split(" [calsync]")[0])
                printing = not line.startswith("TOTAL")
        report(url)
        print(f"\nAirflow's log of the run: {logfile}")
        if rc != 0:
            print(f"`airflow dags test` exited {rc}", file=sys.stderr)
        return rc
    finally:
        emulator_proc.send_signal(signal.SIGTERM)
        try:
            emulator_proc.wait(5)
        except subprocess.TimeoutExpired:
            emulator_proc.kill()


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        return run(standalone=False)
    if command == "standalone":
        return run(standalone=True)
    if command == "reset":
        shutil.rmtree(DEMO, ignore_errors=True)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
