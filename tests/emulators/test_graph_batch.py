"""The Graph emulator's JSON batching (``POST /v1.0/$batch``): per-request answers, the
per-mailbox concurrency limit and Retry-After counted per sub-request, malformed batches."""

from __future__ import annotations

import time
from typing import Any

from emulators.graph import GraphEmulator
from tests.emulators.conftest import GraphClient

A, B = "alice@contoso.com", "bob@contoso.com"
WINDOW = "startDateTime=2026-12-01T00:00:00Z&endDateTime=2026-12-08T00:00:00Z"


def _event(subject: str) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": "2026-12-02T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-02T10:00:00", "timeZone": "UTC"},
    }


def _batch(client: GraphClient, requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    response = client.call("POST", "$batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    return {entry["id"]: entry for entry in response.json()["responses"]}


def test_batch_answers_each_request_on_its_own(client: GraphClient, emu: GraphEmulator) -> None:
    answers = _batch(
        client,
        [
            {"id": "1", "method": "POST", "url": f"/users/{A}/events", "body": _event("a")},
            {"id": "2", "method": "GET", "url": f"/users/{B}/calendarView?{WINDOW}"},
            {"id": "3", "method": "GET", "url": "/users/nobody@contoso.com/calendarView?" + WINDOW},
            {"id": "4", "method": "DELETE", "url": f"users/{A}/events/AAMk-missing"},
        ],
    )
    assert answers["1"]["status"] == 201 and answers["1"]["body"]["subject"] == "a"
    assert answers["2"]["status"] == 200 and answers["2"]["body"]["value"] == []
    assert answers["3"]["status"] == 404
    assert answers["4"]["status"] == 404 and "body" in answers["4"]
    stats = emu.stats.snapshot()
    assert stats["requests"] == 1 + 4  # the token and the batched requests
    assert stats["batched_requests"] == 4
    assert stats["by_kind"]["events_create"] == 1 and stats["batches"] == 1
    assert sum(stats["by_kind"].values()) == 4 + 1  # the sub-requests and the token
    assert stats["by_mailbox"][A] == 2


def test_mailbox_limit_and_retry_after_count_per_sub_request(
    client: GraphClient, emu: GraphEmulator
) -> None:
    emu.faults.retry_after_s = 0.3
    view = {"method": "GET", "url": f"/users/{A}/calendarView?{WINDOW}"}
    view_b = {"method": "GET", "url": f"/users/{B}/calendarView?{WINDOW}"}
    answers = _batch(client, [{"id": str(i), **view} for i in range(6)] + [{"id": "b", **view_b}])
    statuses = sorted(answers[str(i)]["status"] for i in range(6))
    assert statuses == [200, 200, 200, 200, 429, 429]
    refused = [answers[str(i)] for i in range(6) if answers[str(i)]["status"] == 429]
    assert {r["body"]["error"]["code"] for r in refused} == {"ApplicationThrottled"}
    assert {r["headers"]["Retry-After"] for r in refused} == {"0.3"}
    assert answers["b"]["status"] == 200  # another mailbox in the same batch is not refused
    assert emu.stats["retry_after_violations"] == 0  # one batch is not "coming back early"
    # Inside the Retry-After window A's sub-request is a violation; B's is not.
    early = _batch(client, [{"id": "a", **view}, {"id": "b", **view_b}])
    assert early["a"]["status"] == 429 and early["b"]["status"] == 200
    assert emu.stats["retry_after_violations"] == 1
    time.sleep(0.65)
    assert _batch(client, [{"id": "a", **view}])["a"]["status"] == 200


def test_injected_faults_hit_the_sub_request_they_name(
    client: GraphClient, emu: GraphEmulator
) -> None:
    emu.faults.fail_next = [(f"users/{B}/events", 503)]
    answers = _batch(
        client,
        [
            {"id": "a", "method": "POST", "url": f"/users/{A}/events", "body": _event("a")},
            {"id": "b", "method": "POST", "url": f"/users/{B}/events", "body": _event("b")},
        ],
    )
    assert answers["a"]["status"] == 201
    assert answers["b"]["status"] == 503 and answers["b"]["headers"]["Retry-After"] == "1"
    assert emu.faults.fail_next == []


def test_malformed_batches_are_refused_whole(client: GraphClient, emu: GraphEmulator) -> None:
    one = {"method": "GET", "url": f"/users/{A}/calendarView?{WINDOW}"}
    too_many = [{"id": str(i), **one} for i in range(21)]
    for body in (
        {"requests": too_many},
        {"requests": [{"id": "1", **one}, {"id": "1", **one}]},
        {"requests": [{"id": "1", **one, "dependsOn": ["0"]}]},
        {"requests": []},
    ):
        response = client.call("POST", "$batch", json=body)
        assert response.status_code == 400, body
    assert (
        client.call(
            "POST", "$batch", json={"requests": [{"id": "1", **one}]}, auth=False
        ).status_code
        == 401
    )
    assert emu.stats["batched_requests"] == 0
