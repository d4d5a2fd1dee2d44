"""Demo calendar data for the Office 365 emulator, relative to "today" so the demo's window
always has something in it: meetings with in-scope, external and room attendees (delivered to
every attendee's mailbox, as Exchange does), all-day and multi-day events, a recurring series
with a moved and a cancelled occurrence, a private event, one the title filter skips, CJK,
emoji and HTML bodies, an event created in New York time, and one outside the window."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

ZONE = "Asia/Shanghai"


def _at(day: dt.date, hour: int, minute: int = 0, zone: str = ZONE) -> dict[str, str]:
    return {"dateTime": f"{day.isoformat()}T{hour:02d}:{minute:02d}:00", "timeZone": zone}


def _day(day: dt.date) -> dict[str, str]:
    return {"dateTime": f"{day.isoformat()}T00:00:00", "timeZone": ZONE}


def _person(email: str, name: str, kind: str = "required") -> dict[str, Any]:
    return {
        "type": kind,
        "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
        "emailAddress": {"address": email, "name": name},
    }


def graph_seed(today: dt.date, people: list[tuple[str, str]]) -> dict[str, Any]:
    """Seed JSON for ``emulators.graph``: ``people`` are (mailbox, display name) pairs of the
    OA users who have a mailbox; rooms meeting01/02@contoso.com are mailboxes too."""
    (a, an), (b, bn), (c, cn), (d, dn), (e, en) = people[:5]
    day = dt.timedelta(days=1)
    mailboxes: dict[str, dict[str, list[dict[str, Any]]]] = {
        email: {"events": []} for email, _ in people
    }
    mailboxes["meeting01@contoso.com"] = {"events": []}
    mailboxes["meeting02@contoso.com"] = {"events": []}

    def add(owner: str, owner_name: str, event: dict[str, Any]) -> None:
        # Stable ids: re-seeding the emulator (each demo run) gives the same items again.
        key = hashlib.sha256(f"{owner}|{event['subject']}".encode()).hexdigest().upper()
        event.setdefault("id", f"AAMkADemo{key[:48]}")
        event.setdefault("iCalUId", f"040000008200E00074C5B7101A82E008{key[:32]}")
        event.setdefault("organizer", {"emailAddress": {"address": owner, "name": owner_name}})
        event.setdefault("body", {"contentType": "text", "content": ""})
        mailboxes[owner]["events"].append(event)

    add(
        a,
        an,
        {
            "subject": "项目周会 Weekly project sync",
            "start": _at(today, 10),
            "end": _at(today, 11),
            "location": {
                "displayName": "一楼会议室101",
                "locationEmailAddress": "meeting01@contoso.com",
            },
            "attendees": [
                _person(b, bn),
                _person(c, cn, "optional"),
                _person("partner@fabrikam.com", "Pat Partner"),
                _person("meeting01@contoso.com", "一楼会议室101", "resource"),
            ],
            "body": {
                "contentType": "html",
                "content": "<html><body><p>议程 Agenda:</p><ul><li>进度 &amp; 风险</li>"
                "<li>Q&amp;A</li></ul><script>alert('x')</script></body></html>",
            },
        },
    )
    add(
        b,
        bn,
        {
            "subject": "年假 Annual leave",
            "isAllDay": True,
            "start": _day(today + day),
            "end": _day(today + 2 * day),
            "showAs": "oof",
        },
    )
    add(
        c,
        cn,
        {
            "subject": "每日站会 Daily stand-up",
            "start": _at(today - 3 * day, 9, 30),
            "end": _at(today - 3 * day, 9, 45),
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {
                    "type": "endDate",
                    "startDate": (today - 3 * day).isoformat(),
                    "endDate": (today + 10 * day).isoformat(),
                    "recurrenceTimeZone": ZONE,
                },
            },
            "attendees": [_person(a, an), _person(d, dn)],
        },
    )
    add(
        d,
        dn,
        {
            "subject": "看牙医 Dentist",
            "sensitivity": "private",
            "start": _at(today + day, 15),
            "end": _at(today + day, 16),
        },
    )
    add(
        e,
        en,
        {
            "subject": "[no-sync] 私事 personal errand",
            "start": _at(today, 18),
            "end": _at(today, 19),
        },
    )
    add(
        a,
        an,
        {
            "subject": "🎉 团队建设 Team building",
            "isAllDay": True,
            "start": _day(today + 2 * day),
            "end": _day(today + 4 * day),
            "attendees": [_person(b, bn), _person(c, cn), _person(d, dn), _person(e, en)],
            "location": {"displayName": "郊野公园 Country park"},
        },
    )
    add(
        b,
        bn,
        {
            "subject": "Call with New York office",
            "start": _at(today - day, 20, 0, "America/New_York"),
            "end": _at(today - day, 21, 0, "America/New_York"),
            "originalStartTimeZone": "Eastern Standard Time",
            "attendees": [_person("ny.office@fabrikam.com", "NY Office")],
            "location": {
                "displayName": "会议室02",
                "locationEmailAddress": "meeting02@contoso.com",
            },
        },
    )
    add(
        c,
        cn,
        {
            "subject": "季度评审 Quarterly review (outside the window)",
            "start": _at(today + 10 * day, 14),
            "end": _at(today + 10 * day, 16),
        },
    )
    return {"mailboxes": mailboxes}
