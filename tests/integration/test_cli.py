"""The ``calsync`` command: new (from the suite templates), validate, sync (real and dry run,
against the Graph emulator on every OA database), accounts; and bin/calsync as a process."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.cli import main
from calsync.config import load_integrations
from calsync.oa import schema as t
from tests.airflow_env import ROOT
from tests.integration.conftest import INTEGRATION_YAML, TODAY

TYPES = ("office365_global", "office365_cn", "exchange", "alimail_v2")
REQUIRED = {
    "office365_global": {"connection_id": "calsync_o365_hq"},
    "office365_cn": {"connection_id": "calsync_o365_cn"},
    "exchange": {"connection_id": "calsync_ews", "exchange.server": "mail.example.com"},
    "alimail_v2": {"connection_id": "calsync_alimail"},
}


def calsync(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run the command in-process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:  # argparse
                rc = int(exc.code or 0)
    finally:
        sys.stdin = saved
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def fresh_include(tmp_path: Path) -> Path:
    """The shipped mappings and templates, no integration files."""
    include = tmp_path / "inc"
    shutil.copytree(ROOT / "include" / "mappings", include / "mappings")
    shutil.copytree(
        ROOT / "include" / "integrations" / "templates", include / "integrations" / "templates"
    )
    return include


# --- validate ----------------------------------------------------------------------------------


def test_validate_the_checkout():
    rc, out, err = calsync("validate", "--include", str(ROOT / "include"))
    assert rc == 0, err
    assert "DAG calsync_demo_office365" in out and "3 valid integration(s), 0 problem(s)" in out
    assert "template" not in out  # templates/ is not read as integrations


def test_validate_names_file_and_field(fresh_include: Path):
    integrations = fresh_include / "integrations"
    (integrations / "good.yaml").write_text(INTEGRATION_YAML)
    (integrations / "wide.yaml").write_text(
        INTEGRATION_YAML.replace("window_days: 3", "window_days: 30")
    )
    (integrations / "nomap.yaml").write_text(INTEGRATION_YAML.replace("office365_forward", "x"))
    (integrations / "good.yml").write_text(INTEGRATION_YAML)
    (fresh_include / "housekeeping.yaml").write_text("sync_log: {retention_days: 0}\n")
    rc, out, err = calsync("validate", "--include", str(fresh_include))
    assert rc == 1
    assert re.search(r"wide\.yaml: window_days: Input should be less than or equal to 15", err)
    assert re.search(r"nomap\.yaml: mapping: unknown mapping 'x'", err)
    assert "the integration id 'good' is also the name of" in err
    assert re.search(r"housekeeping\.yaml: sync_log\.retention_days: Input should be", err)
    assert "good.yaml: DAG calsync_good" in out
    assert "2 valid integration(s), 4 problem(s)" in out


# --- new ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", TYPES)
def test_new_from_each_template(fresh_include: Path, suite: str):
    sets = [f"--set={k}={v}" for k, v in REQUIRED[suite].items()]
    rc, out, err = calsync(
        "new", "--type", suite, "--name", f"HQ {suite}", "--include", str(fresh_include),
        "--no-input", *sets, "--set", "schedule=0 2 * * *", "--set", "scope.departments=[研发部]",
    )  # fmt: skip
    assert rc == 0, err
    written = fresh_include / "integrations" / f"hq_{suite}.yaml"
    assert f"wrote {written}" in out or "wrote " in out
    [loaded] = load_integrations(fresh_include / "integrations")  # the template is not read
    assert loaded.error is None, loaded.error
    config = loaded.config
    assert (config.id, config.name, config.type) == (f"hq_{suite}", f"HQ {suite}", suite)
    assert config.connection_id == REQUIRED[suite]["connection_id"]
    assert config.schedule == "0 2 * * *" and config.scope.departments == ["研发部"]
    if suite == "exchange":
        assert config.exchange.server == "mail.example.com"
    text = written.read_text()
    assert "{{" not in text and "calsync new --type" in text.splitlines()[1]
    assert "Credentials never go in this file" in text  # the template's comments stay
    rc, out, _ = calsync("validate", "--include", str(fresh_include))
    assert rc == 0 and "1 valid integration(s), 0 problem(s)" in out


def test_templates_hold_only_the_required_values():
    from calsync.cli.templates import placeholders, template_path

    for suite in TYPES:
        text = template_path(ROOT / "include", suite).read_text()
        keys = [p.key for p in placeholders(text)]
        assert keys == ["name", *REQUIRED[suite]], suite
        active = [
            line.split(":")[0].strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert set(active) <= {"name", "type", "connection_id", "exchange", "server"}, suite


def test_new_asks_for_what_is_missing(fresh_include: Path):
    rc, out, err = calsync(
        "new", "--type", "exchange", "--name", "总部", "--include", str(fresh_include),
        stdin="hq\ncalsync_ews_hq\n10.1.2.3\n",
    )  # fmt: skip
    assert rc == 0, err
    assert "integration id" in out and "exchange.server (EWS host or IP" in out
    config = load_integrations(fresh_include / "integrations")[0].config
    assert (config.id, config.name) == ("hq", "总部")
    assert (config.connection_id, config.exchange.server) == ("calsync_ews_hq", "10.1.2.3")


def test_new_refuses_overwrite_missing_and_invalid_values(fresh_include: Path):
    base = ["new", "--type", "office365_global", "--include", str(fresh_include), "--no-input"]
    rc, _, err = calsync(*base, "--name", "HQ")
    assert rc == 1 and "required value(s) missing: connection_id" in err
    assert "--set connection_id=" in err
    rc, _, err = calsync(
        *base, "--name", "HQ", "--set", "connection_id=c", "--set", "window_days=40"
    )
    assert rc == 1 and "hq.yaml: window_days: Input should be less than or equal to 15" in err
    assert "nothing written" in err
    rc, _, err = calsync(*base, "--name", "HQ", "--set", "connection_id=c", "--set", "secret=x")
    assert rc == 1 and "credentials must not be written" in err
    rc, _, err = calsync(*base, "--name", "研发", "--set", "connection_id=c")
    assert rc == 1 and "give --id" in err
    assert not list((fresh_include / "integrations").glob("*.yaml"))
    assert calsync(*base, "--name", "HQ", "--set", "connection_id=c")[0] == 0
    before = (fresh_include / "integrations" / "hq.yaml").read_text()
    rc, _, err = calsync(*base, "--name", "HQ", "--set", "connection_id=other")
    assert rc == 1 and "hq.yaml exists: not overwritten" in err
    assert (fresh_include / "integrations" / "hq.yaml").read_text() == before


def test_set_key_edits_lines_in_place():
    from calsync.cli.templates import set_key

    text = "a: 1\nsec:\n  x: 1   # the x\n  # y: 2   # the y\n# opt:\n#   z: 3\n"
    assert set_key(text, "sec.x", "5") == "a: 1\nsec:\n  x: 5" + " " * 32 + " # the x\n" + (
        "  # y: 2   # the y\n# opt:\n#   z: 3\n"
    )
    assert "  y: 7" in set_key(text, "sec.y", "7")
    uncommented = set_key(text, "opt.z", "9")
    assert "\nopt:\n  z: 9\n" in uncommented
    added = set_key(text, "sec.w", "true")
    assert "sec:\n  w: true\n  x: 1" in added
    assert set_key(text, "new.deep", "[]").endswith("new:\n  deep: []\n")


# --- sync --------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(include_dir: Path, airflow_oa: sa.Engine, graph: Any) -> sa.Engine:
    """The test integration's include/ ($CALSYNC_INCLUDE_DIR), its OA as an Airflow
    connection, the Graph emulator; yields the OA engine."""
    return airflow_oa


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the OA database, rows sorted."""
    with engine.connect() as conn:
        return {
            table.name: sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
            for table in t.metadata.sorted_tables
        }


def totals_of_plan(out: str) -> dict[str, int]:
    line = next(x for x in out.splitlines() if x.startswith("TOTAL ("))
    return {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", line.split(":", 1)[1])}


def totals_of_run(out: str) -> dict[str, int]:
    lines = out.splitlines()
    names = next(x for x in lines if x.startswith("mailbox ")).split()[1:]
    values = next(x for x in lines if x.startswith("TOTAL ")).split()[1:]
    return dict(zip(names, map(int, values), strict=True))


def check_prediction(plan: dict[str, int], run: dict[str, int]) -> None:
    for planned, done in [
        ("create", "created"),
        ("delete", "deleted"),
        ("unlink", "unlinked"),
        ("skip", "skipped"),
        ("fail", "failed"),
    ]:
        assert plan.get(planned, 0) == run.get(done, 0), (planned, plan, run)
    # which copy of a meeting creates it and which links it depends on the order of reads
    kept = {"link": "linked", "update": "updated", "unchanged": "unchanged", "relink": "relinked"}
    assert sum(plan.get(k, 0) for k in kept) == sum(run.get(k, 0) for k in kept.values())


def test_sync_dry_run_writes_nothing_and_predicts_the_run(cli_env: sa.Engine, graph: Any):
    before = snapshot(cli_env)
    rc, out, err = calsync("sync", "--integration", "it_o365", "--dry-run")
    assert rc == 0, err
    assert snapshot(cli_env) == before  # not a schedule, link, log record or feed state
    assert "\nDRY RUN, integration it_o365 (office365_global): " in "\n" + out
    assert "== zhangwei@contoso.com (张伟):" in out
    assert re.search(r"\n  create +\d{4}-\d\d-\d\d \d\d:\d\d–\d\d:\d\d +项目周会", out)
    assert re.search(r"\n  link .*copy of a meeting created above from", out)
    assert "dry run: nothing was written" in out
    plan = totals_of_plan(out)
    assert plan["create"] > 3

    rc, out, err = calsync("sync", "--integration", "it_o365")
    assert rc == 0, err
    check_prediction(plan, totals_of_run(out))
    with cli_env.connect() as conn:
        runs = set(conn.execute(sa.select(t.sync_log.c.run_id)).scalars())
    assert len(runs) == 1 and next(iter(runs)).startswith("calsync-cli__")

    # edits in the suite: the plan names them with their titles, and still writes nothing
    zhang = "zhangwei@contoso.com"
    mine = [e for e in graph.store.events(zhang) if e.get("isOrganizer")]
    renamed, gone = mine[0], mine[1]
    graph.store.update_event(zhang, renamed["id"], {"subject": "改名 renamed"})
    graph.store.delete_event(zhang, gone["id"], deliver=False)
    before = snapshot(cli_env)
    rc, out, err = calsync("sync", "--integration", "it_o365", "--dry-run", "--users", "zhangwei")
    assert rc == 0, err
    assert snapshot(cli_env) == before
    assert re.search(rf"\n  update .*改名 renamed  \[schedule \d+, was '{renamed['subject']}'", out)
    assert re.search(rf"\n  (delete|unlink) +{re.escape(gone['subject'])}  \[", out)
    assert "== lina@contoso.com" not in out  # --users
    plan = totals_of_plan(out)
    rc, out, err = calsync("sync", "--integration", "it_o365", "--users", "zhangwei@contoso.com")
    assert rc == 0, err
    check_prediction(plan, totals_of_run(out))


def test_sync_refusals(cli_env: sa.Engine, include_dir: Path):
    far = TODAY.replace(year=TODAY.year + 1).isoformat()
    rc, _, err = calsync("sync", "--integration", "it_o365", "--start", far, "--end", far)
    assert rc == 1 and "range refused: start" in err and "outside today ± 15 days" in err
    rc, _, err = calsync("sync", "--integration", "it_o365", "--users", "nobody", "--dry-run")
    assert rc == 1 and "unknown user(s) for integration 'it_o365': nobody" in err
    rc, _, err = calsync("sync", "--integration", "missing")
    assert rc == 1 and "no integration 'missing'" in err
    (include_dir / "integrations" / "off.yaml").write_text(INTEGRATION_YAML + "enabled: false\n")
    rc, _, err = calsync("sync", "--integration", "off")
    assert rc == 1 and "disabled" in err
    (include_dir / "integrations" / "other.yaml").write_text(
        INTEGRATION_YAML.replace("calsync_oa_test", "calsync_oa_nowhere")
    )
    rc, _, err = calsync("sync", "--integration", "other", "--dry-run")
    assert rc == 1 and "calsync_oa_nowhere" in err
    with cli_env.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.sync_log)).scalar() == 0


def test_read_only_transaction_refuses_writes(oa_engine: sa.Engine):
    from calsync.cli.sync import read_only

    row = {"logged_at": dt.datetime(2026, 1, 1), "integration_id": "x", "direction": "forward",
           "action": "created", "message": ""}  # fmt: skip
    with read_only(oa_engine) as conn, pytest.raises(sa.exc.DBAPIError):
        conn.execute(sa.insert(t.sync_log).values(row))
    for _ in range(3):  # the pooled connections are writable again
        with oa_engine.begin() as conn:
            conn.execute(sa.insert(t.sync_log).values(row))
    with oa_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.sync_log)).scalar() == 3


# --- accounts ----------------------------------------------------------------------------------


def test_accounts_set_and_rotate(sqlite_oa_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch):
    from cryptography.fernet import Fernet

    from calsync.accounts import AccountVault, load_accounts
    from calsync.oa.seed import seed_demo

    seed_demo(sqlite_oa_engine)
    url = sqlite_oa_engine.url.render_as_string(hide_password=False)
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("CALSYNC_ACCOUNT_KEYS", old)
    rc, out, err = calsync(
        "accounts", "--url", url, "set", "--user", "zhao4", "--login", "zhao4@exchange.com",
        "--password-stdin", stdin="pa55-word\n",
    )  # fmt: skip
    assert rc == 0, err
    assert "account of zhao4 set (login zhao4@exchange.com)" in out
    # the default OA connection, calsync_oa, when no --url / --conn-id is given
    monkeypatch.setenv(
        "AIRFLOW_CONN_CALSYNC_OA", json.dumps({"conn_type": "sqlite", "host": url[10:]})
    )
    monkeypatch.setenv("CALSYNC_ACCOUNT_KEYS", f"{new},{old}")
    rc, out, err = calsync("accounts", "rotate")
    assert rc == 0, err
    assert "re-encrypted 1 account(s)" in out
    with sqlite_oa_engine.connect() as conn:
        user = conn.execute(sa.select(t.users.c.id).where(t.users.c.login_name == "zhao4")).scalar()
        [account] = load_accounts(conn, AccountVault([new]), [user]).values()
    assert (account.login, account.password) == ("zhao4@exchange.com", "pa55-word")


# --- bin/calsync -------------------------------------------------------------------------------


def test_bin_calsync_reads_connections_from_airflow_home(
    airflow_db: Path, include_dir: Path, sqlite_oa_engine: sa.Engine, graph: Any
):
    """As a process, with the OA connection only in AIRFLOW_HOME's metadata database (as
    `airflow connections add` leaves it): the dry run finds it, and writes nothing."""
    from airflow.models import Connection
    from airflow.settings import Session

    from calsync.oa.seed import seed_demo

    cli_env = sqlite_oa_engine
    seed_demo(cli_env)
    url = cli_env.url.render_as_string(hide_password=False)
    with Session() as session:
        session.query(Connection).filter(Connection.conn_id == "calsync_oa_test").delete()
        session.add(
            Connection(
                conn_id="calsync_oa_test",
                conn_type="generic",
                extra=json.dumps({"sqlalchemy_url": url}),
            )
        )
        session.commit()
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_CALSYNC_OA_TEST"}
    before = snapshot(cli_env)
    proc = subprocess.run(
        [str(ROOT / "bin" / "calsync"), "sync", "--integration", "it_o365", "--dry-run"],
        env={**env, "CALSYNC_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("DRY RUN, integration it_o365"), proc.stdout  # no log lines
    assert "TOTAL (" in proc.stdout and "create" in proc.stdout
    assert snapshot(cli_env) == before
    assert "Unclosed client session" not in proc.stderr and "[info" not in proc.stderr
    proc = subprocess.run(
        [str(ROOT / "bin" / "calsync"), "validate"],
        env={**env, "CALSYNC_PYTHON": sys.executable, "CALSYNC_INCLUDE_DIR": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "mapping directory not found" in proc.stderr
