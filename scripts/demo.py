"""The demo: an embedded SQLite OA seeded with demo users, a local Office 365 (Graph)
emulator seeded with their calendars, and the integration DAG run once.

    python scripts/demo.py run         # `airflow dags test` once, then print what was synced
    python scripts/demo.py standalone  # the same data under `airflow standalone` (:8080)
    python scripts/demo.py reset       # delete .demo/ (start over)

Everything lives under .demo/; `.demo/env.sh` gives a shell the same environment (source it to
use the airflow CLI). One demo at a time per directory: both commands hold `.demo/demo.lock`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("CALSYNC_DEMO_DIR") or ROOT / ".demo").resolve()
BIN = Path(sys.executable).parent
DAG_ID = "calsync_demo_office365"
GRAPH_CONN = "calsync_o365_demo"
API_PORT = 8080
ADMIN = ("admin", "admin")  # the demo's UI/API login (simple auth manager, role admin)
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
        process_group=0,  # a terminal's Ctrl-C goes to demo.py, which stops things in order
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
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN[0]}:admin",  # user:role
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        # The UI/API listen on this machine only: the demo's password is no secret.
        "AIRFLOW__API__HOST": os.environ.get("AIRFLOW__API__HOST", "127.0.0.1"),
        "AIRFLOW__API__PORT": str(API_PORT),
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


def set_demo_password() -> None:
    """The simple auth manager generates a random password per user unless its password file
    already has one: give the demo's admin the documented password."""
    home = DEMO / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    path = home / "simple_auth_manager_passwords.json.generated"
    try:
        passwords = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        passwords = {}
    passwords[ADMIN[0]] = ADMIN[1]
    path.write_text(json.dumps(passwords) + "\n")


def take_lock() -> object:
    """One demo per checkout: a second `make demo`/`make standalone` while one runs would
    re-seed the OA, replace env.sh and the emulator's state file, and share Airflow's
    metadata DB. The lock is released when the process ends, however it ends."""
    DEMO.mkdir(exist_ok=True)
    handle = open(DEMO / "demo.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        sys.exit(
            f"{DEMO} is in use by {holder}: stop it first (Ctrl-C in its terminal). "
            f"While `make standalone` runs, use `source {DEMO / 'env.sh'}` and the airflow CLI."
        )
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv)})\n")
    handle.flush()
    return handle


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_standalone(env: dict[str, str]) -> int:
    """`airflow standalone` in its own process group, stopped in the order that leaves
    nothing behind: SIGTERM to its components (scheduler, api-server, dag-processor,
    triggerer), then to it. A scheduler that gets the terminal's SIGINT itself, or whose
    parent is killed first, can hang for good with its LocalExecutor workers."""
    import psutil

    proc = subprocess.Popen([BIN / "airflow", "standalone"], env=env, process_group=0)
    stop_on = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, _raise_stop) for s in stop_on}
    try:
        try:
            rc = proc.wait()
        except _Stop as exc:
            reason = str(exc)
        else:
            print(f"`airflow standalone` exited {rc}", file=sys.stderr)
            return rc or 1
        for s in stop_on:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        print(f"\n{reason}: stopping Airflow (components first), then the emulator …", flush=True)
        try:
            parent = psutil.Process(proc.pid)
            components, everything = parent.children(), parent.children(recursive=True)
        except psutil.NoSuchProcess:
            parent, components, everything = None, [], []
        _terminate(components, timeout=60)
        if parent is not None:
            _terminate([parent], timeout=15)
        for p in everything + ([parent] if parent is not None else []):
            if _alive(p):
                print(f"  killing leftover {p.pid} {_cmdline(p)}", file=sys.stderr)
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        proc.wait()
        print("Airflow stopped.", flush=True)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _alive(p: Any) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: Any) -> str:
    try:
        return " ".join(p.cmdline())[:80]
    except Exception:
        return "?"


def _terminate(procs: list[Any], timeout: float) -> None:
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.2)


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
    lock = take_lock()  # noqa: F841 - held until the process ends
    if standalone and not port_free(API_PORT):
        sys.exit(f"port {API_PORT} is in use (another Airflow?): `ss -ltnp | grep {API_PORT}`")
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
            set_demo_password()
            print(f"Graph emulator on {emulator['base_url']}; OA at {DEMO / 'oa.db'}")
            print(
                f"Airflow UI: http://localhost:{API_PORT} ({ADMIN[0]}/{ADMIN[1]}); "
                "Ctrl-C stops everything.",
                flush=True,
            )
            return run_standalone(env)
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
