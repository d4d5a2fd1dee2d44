"""Demo calendar data for the three suite emulators, relative to "today" so the demo's window
always has something in it.

``graph_seed`` (Office 365): meetings with in-scope, external and room attendees (delivered to
every attendee's mailbox, as Exchange does), all-day and multi-day events, a recurring series,
a private event, one the title filter skips, CJK, emoji and HTML bodies, an event created in
New York time, and one outside the window. ``exchange_seed`` (Exchange Server, EWS) and
``alimail_seed`` (Alibaba Mail V2): see their docstrings."""

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


def _ews_at(day: dt.date, hour: int, minute: int = 0) -> str:
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00"


def exchange_seed(today: dt.date, people: list[tuple[str, str]]) -> dict[str, Any]:
    """Seed JSON for ``emulators.ews`` (the on-premises Exchange demo): every person's mailbox
    and the room mailboxes; meetings are delivered to attendees' mailboxes as Exchange does
    (one meeting, one OA schedule, a link per in-scope copy). The demo's Exchange integration
    covers 研发部 (李娜, 王芳, 刘洋): a review with a room and an external guest, a daily
    stand-up series with one moved and one cancelled occurrence, a two-day trip (all-day), a
    private appointment, a call set up in Pacific time, one the title filter skips and one
    outside the window. Times are China Standard Time unless said otherwise."""
    by_name = {email.split("@")[0]: (email, name) for email, name in people}
    (lina, _), (wang, _), (liu, _) = by_name["lina"], by_name["wangfang"], by_name["liuyang"]
    zhang = by_name["zhangwei"][0]
    day = dt.timedelta(days=1)
    boxes: dict[str, dict[str, Any]] = {
        email: {"display_name": name, "events": []} for email, name in people
    }
    boxes["meeting01@contoso.com"] = {"display_name": "会议室01", "kind": "Room", "events": []}
    boxes["meeting02@contoso.com"] = {"display_name": "会议室02", "kind": "Room", "events": []}

    def add(owner: str, event: dict[str, Any]) -> None:
        # Stable ids and UIDs: re-seeding the emulator (each demo run) gives the same items.
        key = hashlib.sha256(f"ews|{owner}|{event['subject']}".encode()).hexdigest().upper()
        event.setdefault("id", f"AAMkADemoEws{key[:48]}")
        event.setdefault("uid", f"040000008200E00074C5B7101A82E008{key[:32]}")
        event.setdefault("timezone", "China Standard Time")
        boxes[owner]["events"].append(event)

    add(
        lina,
        {
            "subject": "架构评审 Architecture review",
            "start": _ews_at(today, 14),
            "end": _ews_at(today, 15, 30),
            "location": "会议室02",
            "body": "<p>评审 <b>同步引擎</b> design &amp; rollout</p>",
            "required_attendees": [wang, liu, "architect@fabrikam.com"],
            "optional_attendees": [zhang],
            "resources": ["meeting02@contoso.com"],
        },
    )
    add(
        wang,
        {
            "subject": "平台组站会 Platform stand-up",
            "start": _ews_at(today - 2 * day, 9, 15),
            "end": _ews_at(today - 2 * day, 9, 30),
            "required_attendees": [lina, liu],
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "numberOfOccurrences": 8},
            },
            "modified_occurrences": [
                {
                    "original_start": _ews_at(today + day, 9, 15),
                    "subject": "平台组站会 Platform stand-up (moved to the afternoon)",
                    "start": _ews_at(today + day, 16),
                    "end": _ews_at(today + day, 16, 15),
                }
            ],
            "deleted_occurrences": [_ews_at(today, 9, 15)],
        },
    )
    add(
        liu,
        {
            "subject": "出差 深圳 Business trip to Shenzhen",
            "is_all_day": True,
            "start": (today + day).isoformat(),
            "end": (today + 3 * day).isoformat(),
            "legacy_free_busy_status": "OOF",
        },
    )
    add(
        lina,
        {
            "subject": "体检 Health check",
            "sensitivity": "Private",
            "start": _ews_at(today + 2 * day, 8, 30),
            "end": _ews_at(today + 2 * day, 10),
        },
    )
    add(
        wang,
        {
            "subject": "Sync with the Seattle team",
            "timezone": "Pacific Standard Time",
            "start": _ews_at(today - day, 17),
            "end": _ews_at(today - day, 18),
            "required_attendees": ["seattle.team@fabrikam.com"],
        },
    )
    add(
        liu,
        {
            "subject": "[no-sync] 私事 personal errand",
            "start": _ews_at(today, 12),
            "end": _ews_at(today, 13),
        },
    )
    add(
        lina,
        {
            "subject": "季度规划 Quarterly planning (outside the window)",
            "start": _ews_at(today + 9 * day, 10),
            "end": _ews_at(today + 9 * day, 12),
        },
    )
    return {"mailboxes": boxes}


def _ali_at(day: dt.date, hour: int, minute: int = 0) -> dict[str, str]:
    return {"dateTime": f"{day.isoformat()}T{hour:02d}:{minute:02d}:00", "timeZone": ZONE}


def alimail_seed(today: dt.date, people: list[tuple[str, str]]) -> dict[str, Any]:
    """Seed JSON for ``emulators.alimail`` (the Alibaba Mail V2 demo): every person's mailbox
    (default calendar 我的日历 plus 项目日历). Alibaba Mail delivers nothing between mailboxes
    here, so each meeting sits in its organiser's calendar only. The demo's Alibaba integration
    covers 销售部 (陈静, 赵四): a customer visit with an external guest, a daily sales call
    series, an all-day event, one the title filter skips, and one in the 项目日历 folder, which
    the integration does not read (it reads the default calendar)."""
    by_name = {email.split("@")[0]: (email, name) for email, name in people}
    (chen, chen_name), (zhao, zhao_name) = by_name["chenjing"], by_name["zhao4b"]
    day = dt.timedelta(days=1)
    boxes: dict[str, dict[str, Any]] = {
        email: {"displayName": name, "events": []} for email, name in people
    }

    def add(owner: str, event: dict[str, Any]) -> None:
        # Stable ids: re-seeding the emulator (each demo run) gives the same items again.
        key = hashlib.sha256(f"alimail|{owner}|{event['subject']}".encode()).hexdigest()
        event.setdefault("id", f"ev_demo{key[:24]}")
        event.setdefault("iCalUId", f"{key[:32]}@alimail.demo")
        boxes[owner]["events"].append(event)

    add(
        chen,
        {
            "subject": "客户拜访 Customer visit: Fabrikam",
            "start": _ali_at(today, 15),
            "end": _ali_at(today, 17),
            "location": {"displayName": "Fabrikam 上海办公室"},
            "attendees": [
                {"email": zhao, "name": zhao_name, "type": "required"},
                {"email": "buyer@fabrikam.com", "name": "Fabrikam Buyer", "type": "required"},
            ],
            "body": {"contentType": "text", "content": "带上报价单 bring the quote"},
        },
    )
    add(
        chen,
        {
            "subject": "销售晨会 Sales morning call",
            "start": _ali_at(today - day, 8, 45),
            "end": _ali_at(today - day, 9),
            "attendees": [{"email": zhao, "name": zhao_name, "type": "required"}],
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {
                    "type": "numbered",
                    "numberOfOccurrences": 4,
                    "startDate": (today - day).isoformat(),
                },
            },
        },
    )
    add(
        zhao,
        {
            "subject": "广州展会 Trade fair in Guangzhou",
            "isAllDay": True,
            "start": {"date": (today + 2 * day).isoformat()},
            "end": {"date": (today + 3 * day).isoformat()},
        },
    )
    add(
        zhao,
        {
            "subject": "[no-sync] 私事 personal errand",
            "start": _ali_at(today + day, 18),
            "end": _ali_at(today + day, 19),
        },
    )
    add(
        chen,
        {
            "calendar": "项目日历",
            "subject": "项目日历里的日程 An event in another calendar folder",
            "start": _ali_at(today + day, 10),
            "end": _ali_at(today + day, 11),
            "attendees": [{"email": chen, "name": chen_name, "type": "required"}],
        },
    )
    return {"mailboxes": boxes}
