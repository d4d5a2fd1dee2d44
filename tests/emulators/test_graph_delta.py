"""The Graph emulator's calendarView delta over real HTTPS: a round's paging, what a deltaLink
returns after creates, updates, deletes and moves, thin occurrences of a series, 410 for an
unknown or expired token, and tokens bound to their mailbox and window."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from emulators.graph import GraphEmulator
from emulators.graph.store import GraphError
from tests.emulators.conftest import GraphClient
from tests.emulators.test_graph_emulator import event, person

A, B = "alice@contoso.com", "bob@contoso.com"
WINDOW = ("2026-12-01T00:00:00Z", "2026-12-08T00:00:00Z")
PREFER = 'outlook.timezone="UTC"'


def at(subject: str, day: int, hour: int = 9, **fields: Any) -> dict[str, Any]:
    """A one-hour UTC event on 2026-12-<day>."""
    return (
        event(
            subject,
            f"2026-12-{day:02d}T{hour:02d}:00:00",
            f"2026-12-{day:02d}T{hour + 1:02d}:00:00",
        )
        | fields
    )


def delta(
    client: GraphClient, mailbox: str, link: str | None = None, size: int = 50, **params: str
) -> tuple[list[dict[str, Any]], list[httpx.Response], str]:
    """One round: (entries of every page, the responses, the deltaLink)."""
    url = link or f"users/{mailbox}/calendarView/delta"
    query: dict[str, str] | None = None
    if link is None:
        query = {"startDateTime": WINDOW[0], "endDateTime": WINDOW[1], **params}
    entries: list[dict[str, Any]] = []
    pages: list[httpx.Response] = []
    while True:
        response = client.call(
            "GET", url, prefer=f"{PREFER}, odata.maxpagesize={size}", params=query
        )
        assert response.status_code == 200, response.text
        pages.append(response)
        body = response.json()
        entries.extend(body["value"])
        assert len(pages) < 50, "paging does not end"
        if "@odata.nextLink" in body:
            assert "@odata.deltaLink" not in body
            url, query = body["@odata.nextLink"], None
            continue
        return entries, pages, body["@odata.deltaLink"]


def upserts(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in entries if "@removed" not in e}


def removed(entries: list[dict[str, Any]]) -> set[str]:
    return {e["id"] for e in entries if "@removed" in e}


def test_a_round_pages_by_skiptoken_and_ends_with_a_delta_link(
    client: GraphClient, emu: GraphEmulator
) -> None:
    for day in range(1, 8):
        emu.store.add_event(A, at(f"day {day}", day))
    emu.store.add_event(A, at("outside", 9))
    entries, pages, link = delta(client, A, size=3)
    assert len(pages) == 3
    for page in pages[:-1]:
        assert "$skiptoken=" in page.json()["@odata.nextLink"]
        assert "/v1.0/users/" in page.json()["@odata.nextLink"]
    assert "$deltatoken=" in link and "calendarView/delta" in link
    assert pages[0].headers["Preference-Applied"].count("odata.maxpagesize=3") == 1
    view, _ = client.view(A, *WINDOW, prefer=PREFER)
    assert [e["id"] for e in entries] == [e["id"] for e in view]  # each once, none outside
    assert all(e["@odata.type"] == "#microsoft.graph.event" for e in entries)
    assert entries[0]["subject"] == "day 1" and entries[0]["start"]["timeZone"] == "UTC"
    assert entries[0]["start"]["dateTime"] == "2026-12-01T09:00:00.0000000"
    assert emu.stats.by_kind["calendarView_delta"] == 3

    # nothing changed: one request, no entries, a new deltaLink
    again, pages, link2 = delta(client, A, link, size=3)
    assert again == [] and len(pages) == 1 and link2 != link


def test_a_delta_link_returns_what_changed_in_its_window(
    client: GraphClient, emu: GraphEmulator
) -> None:
    keep = emu.store.add_event(A, at("unchanged", 2))
    edit = emu.store.add_event(A, at("to edit", 3))
    gone = emu.store.add_event(A, at("to delete", 4))
    out = emu.store.add_event(A, at("to move out", 5))
    moved = emu.store.add_event(A, at("to get a new id", 6))
    _, _, link = delta(client, A)

    new = emu.store.add_event(A, at("new", 7))
    emu.store.add_event(A, at("created outside", 10))
    emu.store.update_event(A, edit["id"], {"subject": "edited"})
    emu.store.delete_event(A, gone["id"])
    emu.store.update_event(A, out["id"], at("moved out", 12))
    new_id = emu.store.move_event(A, moved["id"])
    entries, _, link2 = delta(client, A, link, size=2)
    changed = upserts(entries)
    assert set(changed) == {new["id"], edit["id"], new_id}
    assert changed[edit["id"]]["subject"] == "edited"
    assert removed(entries) == {gone["id"], out["id"], moved["id"]}
    assert all(e["@removed"] == {"reason": "deleted"} for e in entries if "@removed" in e)
    assert keep["id"] not in {e["id"] for e in entries}

    # a change outside the window is not reported; back into the window, it is
    emu.store.update_event(A, out["id"], {"subject": "still outside"})
    assert delta(client, A, link2)[0] == []
    emu.store.update_event(A, out["id"], at("back in", 5))
    entries, _, _ = delta(client, A, link2)
    assert set(upserts(entries)) == {out["id"]}


def test_an_older_delta_link_stays_valid_and_reports_since_its_own_round(
    client: GraphClient, emu: GraphEmulator
) -> None:
    first = emu.store.add_event(A, at("first", 2))
    _, _, link1 = delta(client, A)
    second = emu.store.add_event(A, at("second", 3))
    _, _, link2 = delta(client, A, link1)
    emu.store.update_event(A, first["id"], {"subject": "first, edited"})
    # e.g. the state of the later round was never stored: the older link still works
    assert set(upserts(delta(client, A, link1)[0])) == {first["id"], second["id"]}
    assert set(upserts(delta(client, A, link2)[0])) == {first["id"]}


def test_series_occurrences_come_thin_exceptions_in_full(
    client: GraphClient, emu: GraphEmulator
) -> None:
    master = emu.store.add_event(
        A,
        at(
            "Stand-up",
            1,
            attendees=[person(B)],
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2026-12-01", "numberOfOccurrences": 4},
            },
        ),
    )
    emu.store.modify_occurrence(A, master["id"], "2026-12-02", {"subject": "Stand-up (special)"})
    entries, _, link = delta(client, A)
    assert [e["type"] for e in entries] == ["occurrence", "exception", "occurrence", "occurrence"]
    thin = entries[0]
    assert set(thin) == {
        "@odata.type",
        "@odata.etag",
        "id",
        "seriesMasterId",
        "type",
        "start",
        "end",
    }
    assert thin["seriesMasterId"] == master["id"]
    assert thin["start"] == {"dateTime": "2026-12-01T09:00:00.0000000", "timeZone": "UTC"}
    exception = entries[1]
    assert exception["subject"] == "Stand-up (special)"
    assert exception["originalStart"] == "2026-12-02T09:00:00Z" and exception["iCalUId"]
    # the full occurrence is one request away, through the series' instances
    instances = client.call(
        "GET",
        f"users/{A}/events/{master['id']}/instances",
        params={"startDateTime": WINDOW[0], "endDateTime": WINDOW[1]},
    ).json()["value"]
    assert instances[0]["id"] == thin["id"] and instances[0]["subject"] == "Stand-up"

    emu.store.cancel_occurrence(A, master["id"], "2026-12-03")
    entries, _, link = delta(client, A, link)
    cancelled = [e["id"] for e in entries if "@removed" in e]
    assert len(cancelled) == 1 and cancelled[0] == next(
        i["id"] for i in instances if i["start"]["dateTime"].startswith("2026-12-03")
    )
    # Bob's copy keeps the occurrence, as a cancelled exception (a new round shows it so)
    bob, _, _ = delta(client, B)
    assert [e.get("isCancelled") for e in bob if e["type"] == "exception"] == [False, True]


def test_unknown_or_expired_tokens_answer_410(client: GraphClient, emu: GraphEmulator) -> None:
    emu.store.add_event(A, at("one", 2))
    emu.store.add_event(A, at("two", 3))
    _, _, link = delta(client, A)
    first = client.call(
        "GET",
        f"users/{A}/calendarView/delta",
        prefer="odata.maxpagesize=1",
        params=dict(startDateTime=WINDOW[0], endDateTime=WINDOW[1]),
    )
    next_link = first.json()["@odata.nextLink"]

    for url in (
        f"users/{A}/calendarView/delta?$deltatoken=nonsense",
        f"users/{A}/calendarView/delta?$skiptoken=nonsense",
    ):
        response = client.call("GET", url)
        assert response.status_code == 410, response.text
        assert response.json()["error"]["code"] == "SyncStateNotFound"

    assert emu.store.expire_delta_tokens() >= 1
    for url in (link, next_link):
        response = client.call("GET", url)
        assert response.status_code == 410 and response.json()["error"]["code"] == (
            "SyncStateNotFound"
        )
    # a new round works at once
    entries, _, _ = delta(client, A)
    assert len(entries) == 2
    emu.reset()  # resetting the emulator forgets tokens too
    emu.store.add_mailbox(A)
    assert client.call("GET", link).status_code == 410


def test_tokens_are_bound_to_their_mailbox_and_window(
    client: GraphClient, emu: GraphEmulator
) -> None:
    emu.store.add_event(A, at("one", 2))
    _, _, link = delta(client, A)
    token = link.split("$deltatoken=")[1]
    other_mailbox = client.call("GET", f"users/{B}/calendarView/delta?$deltatoken={token}")
    assert other_mailbox.status_code == 410
    other_window = client.call(
        "GET", f"{link}&startDateTime=2026-12-02T00:00:00Z&endDateTime={WINDOW[1]}"
    )
    assert other_window.status_code == 400
    assert "another startDateTime" in other_window.json()["error"]["message"]
    same_window = client.call("GET", f"{link}&startDateTime={WINDOW[0]}&endDateTime={WINDOW[1]}")
    assert same_window.status_code == 200 and same_window.json()["value"] == []


def test_delta_refuses_what_graph_does_not_support(client: GraphClient) -> None:
    no_window = client.call("GET", f"users/{A}/calendarView/delta")
    assert no_window.status_code == 400
    expand = client.call(
        "GET",
        f"users/{A}/calendarView/delta",
        params={"startDateTime": WINDOW[0], "endDateTime": WINDOW[1], "$expand": "attachments"},
    )
    assert expand.status_code == 400 and "$expand" in expand.json()["error"]["message"]
    post = client.call("POST", f"users/{A}/calendarView/delta", json={})
    assert post.status_code == 405


def test_a_move_to_another_calendar_and_back_keeps_the_immutable_id(
    client: GraphClient, emu: GraphEmulator
) -> None:
    """E11: out of the default calendar an item leaves its view and delta (removed); back, it
    returns under the same immutable id, iCalUId and extended properties."""
    item = emu.store.add_event(A, at("to move away", 3))
    _, _, link = delta(client, A)
    assert emu.store.move_to_calendar(A, item["id"], "项目日历") == item["id"]
    assert item["id"] not in {e["id"] for e in emu.store.events(A)}
    entries, _, link = delta(client, A, link)
    assert removed(entries) == {item["id"]} and upserts(entries) == {}
    assert emu.store.move_to_calendar(A, item["id"], "default") == item["id"]
    entries, _, _ = delta(client, A, link)
    [back] = upserts(entries).values()
    assert (back["id"], back["iCalUId"]) == (item["id"], item["iCalUId"])
    with pytest.raises(GraphError, match="not found"):
        emu.store.move_to_calendar(A, "no-such-id", "default")
