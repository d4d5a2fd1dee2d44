"""The Azure provider's real msgraph hook (``KiotaRequestAdapterHook``) against the emulator.

Found by running it (Airflow 3.3.2, task SDK 1.3.2, providers-microsoft-azure 15.2.1,
kiota-http 1.12.3, azure-identity 1.27):

- No running task is needed. ``get_async_connection`` goes to ``BaseHook.aget_connection``
  and the task SDK's secrets chain; without a supervisor (``SUPERVISOR_COMMS``) that is the
  fallback chain — environment variables and configured backends, no metadata DB — so an
  ``AIRFLOW_CONN_<ID>`` variable is enough (a connection only in the metadata DB is not found).
- Extras: ``tenant_id``; ``authority`` (https); ``allowed_hosts`` = the bare host (without it
  the hook hands kiota the authority URL, and kiota raises ValueError "Allowed host value
  cannot contain 'https://'"); ``base_url`` with port and ``/v1.0/``; ``verify`` = the CA
  file. ``verify`` covers both the token request (azure-identity's ``connection_verify``) and
  the Graph calls (httpx; the hook sets ``trust_env`` False, so SSL_CERT_FILE is ignored
  there). SSL_CERT_FILE / REQUESTS_CA_BUNDLE are not needed; with them but without
  ``verify`` the token is fetched and the Graph call fails with CERTIFICATE_VERIFY_FAILED.
- The async credential asks for no discovery document: one POST to
  ``{authority}/{tenant}/oauth2/v2.0/token``, then Graph calls.
- ``KiotaRequestAdapterHook.cached_request_adapters`` is a class-level cache by conn_id that
  outlives the hook: close it (``await hook.close()``) or use a fresh conn_id per emulator.
- Throttling: kiota retries 429/503/504 up to 3 times. A positive integer Retry-After is slept
  as given (one 429 with Retry-After 1: two requests, ~1 s, no violation); 0 or none means
  exponential backoff with a 3 s base; a fractional Retry-After ("0.05") makes kiota raise
  ValueError (it parses non-integers as an HTTP date), which the hook re-raises after dropping
  its cached adapter. Graph itself sends whole seconds; use integer ``retry_after_s`` here.
- A token that stops working fails one call with PermissionError (the hook drops its adapter);
  the next call fetches a new token.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import pytest

from emulators.graph import GraphEmulator

A = "alice@contoso.com"
WINDOW = {"startDateTime": "2026-12-01T00:00:00Z", "endDateTime": "2026-12-02T00:00:00Z"}


@pytest.fixture
def conn_id(emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh msgraph connection (env var) to the emulator; SSL variables cleared."""
    name = f"graph_emu_{secrets.token_hex(4)}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", emu.airflow_conn_json())
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    return name


def _hook(conn_id: str) -> Any:
    from airflow.providers.microsoft.azure.hooks.msgraph import KiotaRequestAdapterHook

    return KiotaRequestAdapterHook(conn_id=conn_id)


async def _read_all(hook: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    url: str | None = f"users/{A}/calendarView"
    query: dict[str, str] | None = {**WINDOW, "$top": "5", "$select": "subject,start,end"}
    events: list[dict[str, Any]] = []
    try:
        while url:
            page = await hook.run(url=url, query_parameters=query, headers=headers)
            events.extend(page["value"])
            url, query = page.get("@odata.nextLink"), None  # absolute: the hook accepts it
    finally:
        await hook.close()
    return events


@pytest.mark.parametrize("with_ssl_env", [False, True], ids=["extras-only", "plus-SSL_CERT_FILE"])
def test_real_hook_reads_a_paged_calendar_view(
    emu: GraphEmulator, conn_id: str, monkeypatch: pytest.MonkeyPatch, with_ssl_env: bool
) -> None:
    if with_ssl_env:
        monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emu.ca_file))
    for hour in range(12):
        emu.store.add_event(
            A,
            {
                "subject": f"e{hour:02}",
                "start": {
                    "dateTime": f"2026-12-01T{hour + 8:02}:00:00",
                    "timeZone": "Asia/Shanghai",
                },
                "end": {"dateTime": f"2026-12-01T{hour + 8:02}:30:00", "timeZone": "Asia/Shanghai"},
            },
        )
    headers = {"Prefer": 'outlook.timezone="UTC"'}
    events = asyncio.run(_read_all(_hook(conn_id), headers))
    assert [e["subject"] for e in events] == [f"e{h:02}" for h in range(12)]
    assert events[0]["start"] == {"dateTime": "2026-12-01T00:00:00.0000000", "timeZone": "UTC"}
    stats = emu.stats.snapshot()
    assert stats["by_kind"] == {"token": 1, "calendarView": 3}  # 12 events, pages of 5
    assert stats["by_status"] == {"200": 4}


def test_real_hook_needs_allowed_hosts(emu: GraphEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = json.loads(emu.airflow_conn_json())
    del conn["extra"]["allowed_hosts"]
    name = f"graph_emu_{secrets.token_hex(4)}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(conn))
    with pytest.raises(ValueError, match="Allowed host value cannot contain"):
        asyncio.run(_read_all(_hook(name), {}))


async def _timed_call(hook: Any) -> tuple[str, float]:
    started = time.monotonic()
    try:
        await hook.run(url=f"users/{A}/calendarView", query_parameters=WINDOW)
        outcome = "ok"
    except Exception as exc:
        outcome = type(exc).__name__
    finally:
        await hook.close()
    return outcome, time.monotonic() - started


def test_kiota_retries_honour_an_integer_retry_after(emu: GraphEmulator, conn_id: str) -> None:
    emu.faults.retry_after_s = 1
    emu.faults.fail_next = [("calendarView", 429)]
    outcome, seconds = asyncio.run(_timed_call(_hook(conn_id)))
    assert outcome == "ok" and 1.0 <= seconds < 2.5
    stats = emu.stats.snapshot()
    assert stats["by_kind"]["calendarView"] == 2 and stats["throttled_429"] == 1
    assert stats["retry_after_violations"] == 0

    emu.stats.reset()
    emu.faults.rate_429 = 1.0  # always throttled: 1 try + 3 retries, then the 429 surfaces
    outcome, seconds = asyncio.run(_timed_call(_hook(conn_id)))
    assert outcome == "AirflowException" and 3.0 <= seconds < 5
    stats = emu.stats.snapshot()
    assert stats["by_kind"]["calendarView"] == 4 and stats["throttled_429"] == 4
    assert stats["retry_after_violations"] == 0


def test_kiota_cannot_parse_a_fractional_retry_after(emu: GraphEmulator, conn_id: str) -> None:
    emu.faults.retry_after_s = 0.05
    emu.faults.fail_next = [("calendarView", 503)]
    outcome, _ = asyncio.run(_timed_call(_hook(conn_id)))
    assert outcome == "ValueError"  # "Invalid date value or format": no retry happens
    assert emu.stats.snapshot()["by_kind"]["calendarView"] == 1


def test_real_hook_recovers_from_an_expired_token(emu: GraphEmulator, conn_id: str) -> None:
    async def scenario() -> list[str]:
        hook = _hook(conn_id)
        await hook.run(url=f"users/{A}/calendarView", query_parameters=WINDOW)
        emu.expire_tokens()
        outcomes = []
        for _ in range(2):
            try:
                await hook.run(url=f"users/{A}/calendarView", query_parameters=WINDOW)
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        await hook.close()
        return outcomes

    assert asyncio.run(scenario()) == ["PermissionError", "ok"]
    assert emu.stats.snapshot()["by_kind"] == {"token": 2, "calendarView": 3}
