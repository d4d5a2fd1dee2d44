"""The sync-log page in a real browser (issue 5, F19/E8): Airflow's api-server (the component
that serves the UI, the login and the plugin) against an OA with 3,000 sync-log records,
driven by headless Debian Chromium through Playwright.

Anonymous → the 401 page → Airflow's login form → back on the page; filter, read rows, page,
switch language; the same page inside the Airflow UI (``/plugin/calsync``); a user without
DAG access gets the 403 page. Script titles show as text and never run. Screenshots go to
``.artifacts/`` (build artifacts).

Needs /usr/bin/chromium (``make test`` installs Debian's chromium, chromium-driver and
fonts-wqy-microhei) and the ``playwright`` package (no ``playwright install``): skipped
without them locally, a failure under CI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from calsync.oa.seed import seed_demo
from tests.airflow_env import ROOT
from tests.integration.synclog_data import XSS_TITLE, Seeded, seed_sync_log

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / ".artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
PASSWORDS = {"admin": "admin", "nobody": "nobody"}


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser test must run: {why}", pytrace=False)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def oa(sqlite_oa_engine: sa.Engine) -> Seeded:
    seed_demo(sqlite_oa_engine)
    return seed_sync_log(sqlite_oa_engine, count=3000)


@pytest.fixture
def airflow_server(
    airflow_db: Path, oa: Seeded, sqlite_oa_engine: sa.Engine, tmp_path: Path
) -> Iterator[str]:
    """``airflow api-server`` on a free port (its own process group, stopped at teardown)
    with users admin (role admin) and nobody (no role); yields its base URL."""
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,nobody:",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "calsync-browser-test-" + "9d1e" * 16,
        "AIRFLOW__API__SECRET_KEY": "calsync-browser-test-secret-key",
        "AIRFLOW_CONN_CALSYNC_OA": json.dumps(
            {"conn_type": "sqlite", "host": sqlite_oa_engine.url.database}
        ),
        "CALSYNC_UI_TIMEZONE": "Asia/Shanghai",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    for name in ("CALSYNC_INCLUDE_DIR", "CALSYNC_UI_OA_CONNECTIONS"):
        env.pop(name, None)  # the shipped include/: demo integrations on calsync_oa
    log_file = tmp_path / "api-server.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [Path(sys.executable).parent / "airflow", "api-server", "-H", "127.0.0.1",
             "-p", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/calsync/", timeout=2).status_code == 401:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-3000:]
                pytest.fail(f"airflow api-server did not come up:\n{tail}")
            time.sleep(0.3)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, user: str) -> None:
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.keyboard.press("Enter")


def rows(frame: Any) -> list[dict[str, str]]:
    """The records table as the user sees it."""
    return frame.locator("#records tbody tr[data-id]").evaluate_all(
        """trs => trs.map(tr => ({
            id: tr.dataset.id, action: tr.dataset.action, integration: tr.dataset.integration,
            title: tr.querySelector('td.title').innerText,
            user: tr.children[4].innerText}))"""
    )


def test_sync_log_page_in_chromium(airflow_server: str, browser: Any, oa: Seeded) -> None:
    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1440, "height": 900})
    dialogs: list[str] = []
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # anonymous: no data, the 401 page links to Airflow's login, which brings us back
    response = page.goto(f"{airflow_server}/calsync/")
    assert response.status == 401
    assert "请先登录" in page.inner_text("body") and "demo_office365" not in page.content()
    assert context.request.get(f"{airflow_server}/calsync/api/log").status == 401
    page.click("#login")
    log_in(page, "admin")
    page.wait_for_url(f"{airflow_server}/calsync/")

    # the page: overview and the newest records first
    assert page.inner_text("h1").startswith("日历同步")
    total = len(oa.rows)
    assert page.inner_text("#total").startswith(f"{total} 条记录")
    shown = rows(page)
    assert [int(r["id"]) for r in shown] == [r["id"] for r in oa.match()[:50]]
    assert shown[0]["title"] == XSS_TITLE  # the script is text on the page…
    assert page.evaluate("typeof window.__calsync_xss") == "undefined"  # …and never ran
    overview = page.locator("#overview tr[data-integration=demo_exchange]").inner_text()
    assert "3" in overview and "演示 Exchange Server" in overview

    # filter: one integration's failures of users matching "li", from 7 days ago (Shanghai)
    zone = ZoneInfo("Asia/Shanghai")
    day = (oa.now.replace(tzinfo=dt.UTC).astimezone(zone) - dt.timedelta(days=7)).date()
    since = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC).replace(tzinfo=None)
    page.select_option("#f-integration", "demo_exchange")
    page.select_option("#f-action", "failed")
    page.fill("#f-user", "li")
    page.fill("#f-since", day.isoformat())
    page.click("#apply")
    page.wait_for_load_state()
    expected = oa.match(integration="demo_exchange", actions={"failed"}, user="li", since=since)
    assert expected, "the seed should give the filter something to find"
    assert page.inner_text("#total").startswith(f"{len(expected)} 条记录")
    shown = rows(page)
    assert [int(r["id"]) for r in shown] == [r["id"] for r in expected[:50]]
    assert {(r["integration"], r["action"]) for r in shown} == {("demo_exchange", "failed")}
    assert all("li" in r["user"].lower() for r in shown)
    run_link = page.locator("#records a.run").first.get_attribute("href")
    assert run_link.startswith("/dags/calsync_") and "/runs/" in run_link
    page.screenshot(path=str(ARTIFACTS / "synclog_filtered.png"), full_page=True)

    # free text over titles and messages, then the second page
    page.goto(f"{airflow_server}/calsync/?q=%E5%AE%A2%E6%88%B7&size=20")  # 客户
    expected = oa.match(text="客户")
    assert page.inner_text("#total").startswith(f"{len(expected)} 条记录")
    page.click("#next")
    page.wait_for_load_state()
    assert [int(r["id"]) for r in rows(page)] == [r["id"] for r in expected[20:40]]

    # English
    page.click("#lang-en")
    page.wait_for_load_state()
    assert page.inner_text("h1").startswith("Calendar sync")
    assert page.inner_text("#total").startswith(f"{len(expected)} records")

    # inside the Airflow UI: Browse (浏览) → Calendar sync / 日历同步 frames the page
    page.goto(f"{airflow_server}/")
    page.get_by_role("button", name="浏览").click()
    page.get_by_text("Calendar sync / 日历同步").click()
    page.wait_for_url(f"{airflow_server}/plugin/calsync")
    frame = page.frame_locator("iframe")
    assert frame.locator("#total").inner_text(timeout=20_000).startswith(f"{total} 条记录")
    assert frame.locator("td.title").first.inner_text() == XSS_TITLE
    page.screenshot(path=str(ARTIFACTS / "synclog_in_airflow_ui.png"))
    assert dialogs == []  # no alert() ever ran
    # a record's run link opens the DAG run in the whole window, not inside the frame
    newest = oa.match()[0]
    frame.locator("#records a.run").first.click()
    page.wait_for_url(
        f"{airflow_server}/dags/{newest['dag_id']}/runs/{quote(newest['run_id'], safe='')}"
    )
    # the Airflow UI's router took it: our frame is gone, no UI nested inside a frame
    page.wait_for_function("document.querySelectorAll('iframe').length === 0", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "synclog_run_link.png"))
    context.close()

    # a user without DAG access: Airflow logs them in, the page refuses them
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(f"{airflow_server}/auth/login?next=/calsync/")
    log_in(page, "nobody")
    page.wait_for_url(f"{airflow_server}/calsync/")
    assert "无权查看" in page.inner_text("body") and "demo_office365" not in page.content()
    assert context.request.get(f"{airflow_server}/calsync/api/log").status == 403
    context.close()
    assert time.monotonic() - started < 60
