"""The demo: an embedded SQLite OA seeded with demo users, three local suite emulators
seeded with their calendars — Office 365 (Graph), Exchange Server (EWS) and Alibaba Mail V2 —
and the three demo integrations (include/integrations/demo_*.yaml), one DAG each.

    python scripts/demo.py run         # each DAG once with dag.test(), then what each synced
    python scripts/demo.py standalone  # the same data under `airflow standalone` (:8080)
    python scripts/demo.py reset       # delete .demo/ (start over)

Everything lives under .demo/; `.demo/env.sh` gives a shell the same environment (source it to
use the airflow CLI from the checkout). One demo at a time per directory: both commands hold
`.demo/demo.lock`. The Exchange and Alibaba emulators listen on the ports their integration
files name (127.0.0.1:8444 and :8445), and every emulator serves a certificate of the private
CA in .demo/tls/ (demo_exchange.yaml's ca_bundle), whatever CALSYNC_DEMO_DIR says.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("CALSYNC_DEMO_DIR") or ROOT / ".demo").resolve()
TLS_DIR = ROOT / ".demo" / "tls"  # the emulators' private CA; demo_exchange.yaml trusts it
BIN = Path(sys.executable).parent
API_PORT = 8080
ADMIN = ("admin", "admin")  # the demo's UI/API login (simple auth manager, role admin)
QUIET_HOOK_LOGGER = "airflow.task.hooks.calsync.connectors.graph_hook.CloudGraphHook"
RUN_MARK = "=== calsync demo: running "  # the runner's separator between DAGs in its log

sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]


@dataclass(frozen=True)
class Suite:
    """One demo integration and the emulator it syncs from."""

    integration: str  # include/integrations/<integration>.yaml
    label: str
    emulator: str  # python -m emulators.<emulator>; .demo/<emulator>_{seed,state}.json

    @property
    def dag_id(self) -> str:
        return f"calsync_{self.integration}"


SUITES = (
    Suite("demo_office365", "Office 365", "graph"),
    Suite("demo_exchange", "Exchange Server", "ews"),
    Suite("demo_alimail", "Alibaba Mail V2", "alimail"),
)


def load_configs() -> dict[str, Any]:
    """The demo integrations as the DAG file will read them (a broken file stops the demo)."""
    from calsync.config import load_integrations

    loaded = {r.stem: r for r in load_integrations(ROOT / "include" / "integrations")}
    configs = {}
    for suite in SUITES:
        result = loaded.get(suite.integration)
        if result is None or result.config is None:
            sys.exit(f"include/integrations/{suite.integration}.yaml: {result and result.error}")
        configs[suite.integration] = result.config
    return configs


def _port(url: str) -> int:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
        raise ValueError(f"{url!r} is not a local address with a port (127.0.0.1:PORT)")
    return parts.port


def emulator_args(suite: Suite, config: Any) -> list[str]:
    """Command-line options of the suite's emulator: the port its integration file names
    (Graph: any free one, the connection carries it)."""
    if suite.emulator == "graph":
        return ["--port", os.environ.get("CALSYNC_DEMO_GRAPH_PORT", "0")]
    where = f"include/integrations/{suite.integration}.yaml"
    try:
        if suite.emulator == "ews":
            port = _port(config.exchange.server)
            ca = Path(config.exchange.ca_bundle or "")
            if (ROOT / ca).resolve() != (TLS_DIR / "ca.pem").resolve():
                sys.exit(f"{where}: exchange.ca_bundle must be {TLS_DIR.relative_to(ROOT)}/ca.pem")
        else:
            port = _port(config.alimail.endpoint)
    except ValueError as exc:
        sys.exit(f"{where}: the demo serves its emulator locally: {exc}")
    if not port_free(port):
        sys.exit(
            f"port {port} (the {suite.label} emulator, {where}) is in use: "
            f"another demo? `ss -ltnp | grep {port}`"
        )
    return ["--port", str(port)]


def start_emulators(seeds: dict[str, dict], configs: dict[str, Any]) -> dict[str, Any]:
    """Start every suite's emulator (at once), wait until each reports ready; returns
    {integration: (process, its state JSON)}."""
    from emulators.tls import ensure_tls

    ensure_tls(TLS_DIR)  # once, before three processes would race to make it
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for suite in SUITES:
            seed_file = DEMO / f"{suite.emulator}_seed.json"
            seed_file.write_text(json.dumps(seeds[suite.integration], ensure_ascii=False, indent=1))
            state = DEMO / f"{suite.emulator}_state.json"
            state.unlink(missing_ok=True)
            args = emulator_args(suite, configs[suite.integration])
            files = [
                "--tls-dir",
                str(TLS_DIR),
                "--seed",
                str(seed_file),
                "--state-file",
                str(state),
            ]
            proc = subprocess.Popen(
                [sys.executable, "-m", f"emulators.{suite.emulator}", *args, *files],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=open(DEMO / f"{suite.emulator}_emulator.log", "w"),  # noqa: SIM115
                process_group=0,  # a terminal's Ctrl-C goes to demo.py, which stops things in order
            )
            started[suite.integration] = (proc, state)
        ready: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        while len(ready) < len(started):
            for suite in SUITES:
                proc, state = started[suite.integration]
                if suite.integration in ready:
                    continue
                if state.exists() and state.read_text().strip():
                    ready[suite.integration] = (proc, json.loads(state.read_text()))
                elif proc.poll() is not None:
                    sys.exit(
                        f"the {suite.label} emulator did not start; "
                        f"see {DEMO / f'{suite.emulator}_emulator.log'}"
                    )
            if time.monotonic() > deadline:
                sys.exit("the emulators did not report ready within 15 s")
            time.sleep(0.1)
        return ready
    except BaseException:
        stop_emulators({k: (p, None) for k, (p, _) in started.items()})
        raise


def stop_emulators(emulators: dict[str, Any]) -> None:
    for proc, _ in emulators.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in emulators.values():
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def airflow_env(emulators: dict[str, Any], configs: dict[str, Any]) -> dict[str, str]:
    """Airflow's environment: the suites' connections from the emulators' state (credentials
    live in connections only), the OA connection, and a CA bundle with the demo CA."""
    ca_bundle = DEMO / "ca-bundle.pem"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    ca_bundle.write_text(
        (system.read_text() if system.exists() else "") + (TLS_DIR / "ca.pem").read_text()
    )
    connections = {}
    for suite in SUITES:
        conn_id = configs[suite.integration].connection_id
        connections[f"AIRFLOW_CONN_{conn_id.upper()}"] = emulators[suite.integration][1][
            "airflow_conn_json"
        ]
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
        **connections,
        "SSL_CERT_FILE": str(ca_bundle),
        "REQUESTS_CA_BUNDLE": str(ca_bundle),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    (DEMO / "env.sh").write_text(
        "# demo_exchange.yaml's ca_bundle is relative: run airflow from the checkout\n"
        + "".join(f"export {k}='{v}'\n" for k, v in env.items() if k != "PATH")
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

    proc = subprocess.Popen([BIN / "airflow", "standalone"], env=env, cwd=ROOT, process_group=0)
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
        print(f"\n{reason}: stopping Airflow (components first), then the emulators …", flush=True)
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


ACTIONS = ("created", "updated", "deleted", "linked", "unlinked", "relinked", "unchanged",
           "skipped", "failed")  # fmt: skip


def run_dags(dag_ids: list[str], results_file: Path) -> int:
    """The runner (``demo.py dags-test``, started with Airflow's environment): each DAG once
    with ``dag.test()``, as `airflow dags test` does, in one process (one Airflow start-up for
    the three). Writes {dag_id: {state, run_id, totals, error}} to ``results_file``."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    results: dict[str, dict[str, Any]] = {}
    for dag_id in dag_ids:
        print(f"{RUN_MARK}{dag_id}", flush=True)
        dag = bag.dags.get(dag_id)
        if dag is None:
            errors = "; ".join(f"{k}: {v}" for k, v in bag.import_errors.items())
            results[dag_id] = {"state": "missing", "error": errors or "no such DAG"}
            continue
        try:
            run = dag.test()
        except Exception as exc:  # report it with the others, then go on with the next DAG
            results[dag_id] = {"state": "error", "error": f"{type(exc).__name__}: {exc}"}
            continue
        summary = None
        with create_session() as session:
            rows = XComModel.get_many(
                run_id=run.run_id, key="return_value", task_ids="summary", dag_ids=dag_id
            ).with_only_columns(XComModel.value)
            value = session.execute(rows).first()
            if value is not None:
                summary = XComModel.deserialize_value(value)
        results[dag_id] = {
            "state": str(run.state),
            "run_id": run.run_id,
            "totals": (summary or {}).get("totals"),
            "failed_users": (summary or {}).get("failed_users"),
        }
    results_file.write_text(json.dumps(results, indent=1))
    return 0 if all(r["state"] == "success" for r in results.values()) else 1


def _when(s: Any) -> str:
    if s.all_day:
        last = s.end_date - dt.timedelta(days=1)
        return f"{s.start_date} (all day)" + (f" … {last}" if last > s.start_date else "")
    zone = dt.timezone(dt.timedelta(hours=8))
    start = s.start_utc.replace(tzinfo=dt.UTC).astimezone(zone)
    end = s.end_utc.replace(tzinfo=dt.UTC).astimezone(zone)
    return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} (UTC+8)"


def summaries(logfile: Path) -> dict[str, list[str]]:
    """The "calsync run summary" table each DAG's summary task logged, by DAG id."""
    found: dict[str, list[str]] = {}
    current, printing = "", False
    for line in logfile.read_text(errors="replace").splitlines():
        if line.startswith(RUN_MARK):
            current, printing = line[len(RUN_MARK) :].strip(), False
            continue
        if "calsync run summary" in line:
            printing = True
            line = "calsync run summary, " + line.split("calsync run summary, ", 1)[1]
        if printing:
            found.setdefault(current, []).append(line.split(" [calsync]")[0])
            printing = not line.startswith("TOTAL")
    return found


def _logged_totals(table: list[str]) -> dict[str, int]:
    """The TOTAL row of a logged summary table (a failed run has no summary XCom)."""
    header = next((line.split()[1:] for line in table if line.startswith("mailbox")), [])
    total = next((line.split()[1:] for line in table if line.startswith("TOTAL")), [])
    return {k: int(v) for k, v in zip(header, total, strict=False) if v.isdigit()}


def report(url: str, results: dict[str, dict[str, Any]], logfile: Path) -> None:
    """Per integration: its run's summary table, its OA schedules and its sync-log records;
    then one line per integration with what its run did."""
    import sqlalchemy as sa

    from calsync.oa import schema as t
    from calsync.oa.db import engine_from_url

    tables = summaries(logfile)
    engine = engine_from_url(url)
    with engine.connect() as conn:
        users = dict(conn.execute(sa.select(t.users.c.id, t.users.c.display_name)).all())
        rooms = dict(conn.execute(sa.select(t.rooms.c.id, t.rooms.c.name)).all())
        people: dict[int, list[str]] = {}
        for p in conn.execute(sa.select(t.participants)):
            label = users.get(p.user_id, "") if p.kind == "user" else p.email
            if p.kind == "room":
                label = f"[{rooms.get(p.room_id, p.email)}]"
            people.setdefault(p.schedule_id, []).append(label)
        held: dict[str, int] = {}
        for suite in SUITES:
            result = results.get(suite.dag_id, {"state": "not run"})
            schedules = sorted(
                conn.execute(
                    sa.select(t.schedules).where(
                        t.schedules.c.source_integration == suite.integration
                    )
                ).all(),
                key=lambda s: (s.start_date or s.start_utc.date(), s.start_utc or dt.datetime.min),
            )
            held[suite.integration] = len(schedules)
            run_id = result.get("run_id")
            log = conn.execute(
                sa.select(t.sync_log.c.action, sa.func.count())
                .where(t.sync_log.c.integration_id == suite.integration)
                .where(t.sync_log.c.run_id == run_id)
                .group_by(t.sync_log.c.action)
                .order_by(t.sync_log.c.action)
            ).all()
            notes = conn.execute(
                sa.select(t.sync_log.c.mailbox, t.sync_log.c.title, t.sync_log.c.message).where(
                    t.sync_log.c.integration_id == suite.integration,
                    t.sync_log.c.run_id == run_id,
                    t.sync_log.c.action.in_(["skipped", "failed"]),
                )
            ).all()
            print(f"\n##### {suite.label}: {suite.dag_id} ({result['state']}) #####")
            if result.get("error"):
                print(f"  {result['error']}")
            for line in tables.get(suite.dag_id, []):
                print(line)
            print(f"\n=== OA schedules synced from {suite.label} ({len(schedules)}) ===")
            for s in schedules:
                room = f" @{rooms[s.room_id]}" if s.room_id else ""
                by = users.get(s.creator_id)
                print(f"- {_when(s)}  {s.title}{room}  by {by}  colour {s.color}")
                if people.get(s.id):
                    print(f"    participants: {', '.join(people[s.id])}")
            print(f"\n=== sync log of this run ({run_id}): records per action ===")
            for action, count in log:
                print(f"  {action:10} {count}")
            for row in notes:
                print(f"  - {row.mailbox or '-'} {row.title or ''}: {row.message}")
    engine.dispose()
    print("\n##### What each integration synced in this run #####")
    width = max(len(s.dag_id) for s in SUITES)
    print(f"{'DAG':{width}} {'run':>8} " + " ".join(f"{a:>9}" for a in ACTIONS) + "  in the OA")
    for suite in SUITES:
        result = results.get(suite.dag_id, {"state": "not run"})
        totals = result.get("totals") or _logged_totals(tables.get(suite.dag_id, []))
        counts = " ".join(f"{totals.get(a, 0):>9}" for a in ACTIONS)
        in_oa = held[suite.integration]
        print(f"{suite.dag_id:{width}} {result['state']:>8} {counts}  {in_oa:>10}")


def run(standalone: bool) -> int:
    lock = take_lock()  # noqa: F841 - held until the process ends
    if standalone and not port_free(API_PORT):
        sys.exit(f"port {API_PORT} is in use (another Airflow?): `ss -ltnp | grep {API_PORT}`")
    from scripts.demo_data import alimail_seed, exchange_seed, graph_seed

    configs = load_configs()
    url = prepare_oa()
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    people = demo_people()
    seeds = {
        "demo_office365": graph_seed(today, people),
        "demo_exchange": exchange_seed(today, people),
        "demo_alimail": alimail_seed(today, people),
    }
    emulators = start_emulators(seeds, configs)
    env = {**os.environ, **airflow_env(emulators, configs)}
    try:
        subprocess.run(
            [BIN / "airflow", "db", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for suite in SUITES:
            state = emulators[suite.integration][1]
            where = state.get("base_url") or state.get("service_endpoint") or state["endpoint"]
            print(f"{suite.label} emulator on {where}")
        if standalone:
            set_demo_password()
            print(f"OA at {DEMO / 'oa.db'}; DAGs {', '.join(s.dag_id for s in SUITES)}")
            print(
                f"Airflow UI: http://localhost:{API_PORT} ({ADMIN[0]}/{ADMIN[1]}); "
                "Ctrl-C stops everything.",
                flush=True,
            )
            return run_standalone(env)
        dag_ids = [s.dag_id for s in SUITES]
        print(f"Running {', '.join(dag_ids)} once each (dag.test()) …", flush=True)
        logfile, results_file = DEMO / "dags_test.log", DEMO / "dags_test.json"
        results_file.unlink(missing_ok=True)
        with open(logfile, "w") as out:
            rc = subprocess.call(
                [sys.executable, __file__, "dags-test", str(results_file), *dag_ids],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
        report(url, results, logfile)
        print(f"\nAirflow's log of the runs: {logfile}")
        failed = [d for d in dag_ids if results.get(d, {}).get("state") != "success"]
        if failed or rc != 0:
            print(f"failed: {', '.join(failed) or f'the runner exited {rc}'}", file=sys.stderr)
            return rc or 1
        return 0
    finally:
        stop_emulators(emulators)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        return run(standalone=False)
    if command == "standalone":
        return run(standalone=True)
    if command == "dags-test":  # internal: the runner `run` starts with Airflow's environment
        return run_dags(sys.argv[3:], Path(sys.argv[2]))
    if command == "reset":
        shutil.rmtree(DEMO, ignore_errors=True)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
