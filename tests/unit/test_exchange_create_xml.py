"""The CreateItem payload calsync builds itself (``exchange_create``) is exchangelib's own.

EWS wants the elements of ``t:CalendarItem`` in its schema's order and refuses a request
otherwise; the emulator does not check it. exchangelib's ``CalendarItem.to_xml`` follows the
schema, so the element calsync builds is compared, canonicalised, with the one exchangelib
writes for the same values, over generated writes: zones with and without DST (one whose
midnight can fall in a gap), all-day and timed events, attendees of every kind with
duplicates, CJK, markup and characters XML cannot carry."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import pytest
from exchangelib import IMPERSONATION, Account, CalendarItem, Configuration, Credentials, Version
from exchangelib.errors import EWSError
from exchangelib.util import safe_xml_value
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from calsync.config import IntegrationConfig, resolve_timezone
from calsync.connectors.base import EventWrite
from calsync.connectors.exchange import (
    DEFAULT_BUILD,
    KEY_PROPERTY,
    RESPONSES,
    SENSITIVITY_OUT,
    SHOW_AS,
    ExchangeConnector,
    normalize_item,
)
from calsync.connectors.exchange_create import calendar_item_element, with_item_id
from calsync.connectors.exchange_raw import normalize_element
from calsync.model import Attendee

ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "UTC", "America/Santiago",
         "Asia/Kolkata", "Australia/Lord_Howe", "America/Sao_Paulo"]  # fmt: skip


def connector(zone: str = "Asia/Shanghai") -> ExchangeConnector:
    config = IntegrationConfig.model_validate(
        {
            "id": "ews_xml",
            "name": "EWS XML",
            "type": "exchange",
            "connection_id": "ews_xml",
            "timezone": zone,
            "exchange": {"server": "https://ews.example.com/EWS/Exchange.asmx"},
        }
    )
    return ExchangeConnector(config)


@pytest.fixture(scope="module")
def account() -> Account:
    config = Configuration(
        server="ews.example.com",
        credentials=Credentials("svc", "not-used"),
        version=Version(build=DEFAULT_BUILD),
    )
    return Account(
        "owner@example.com", config=config, autodiscover=False, access_type=IMPERSONATION
    )


def ours(c: ExchangeConnector, event: EventWrite, uid: str = "u-1") -> Any:
    return calendar_item_element(
        subject=event.subject,
        body=event.body,
        html=event.body_type == "html",
        sensitivity=SENSITIVITY_OUT.get(event.sensitivity.lower(), "Normal"),
        key=event.key,
        key_property=KEY_PROPERTY,
        uid=uid,
        times=c._times(event),
        location=event.location,
        people=c._people(event),
    )


def theirs(c: ExchangeConnector, account: Account, event: EventWrite, uid: str = "u-1") -> Any:
    item = CalendarItem(account=account, folder=None, uid=uid, **c._values(event))
    return item, item.to_xml(version=account.version)


def canonical(elem: Any) -> bytes:
    return etree.tostring(elem, method="c14n")


text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(["周会 <b>議題</b> & 'x'", "", " ", "line\nbreak\ttab", "\x00\x0b\x1f"])
people = st.lists(
    st.builds(
        Attendee,
        email=st.sampled_from(["a@x.com", "B@X.com", " c@x.com ", "room1@x.com", "", "d@x.com"]),
        name=st.sampled_from(["", "Ann", "张三", " ", "O'Neil & <Co>"]),
        kind=st.sampled_from(["required", "optional", "resource", "organizer"]),
        response=st.just("none"),
    ),
    max_size=8,
)


@st.composite
def writes(draw: st.DrawFn) -> EventWrite:
    zone = draw(st.sampled_from(ZONES))
    all_day = draw(st.booleans())
    common: dict[str, Any] = {
        "subject": draw(text),
        "body": draw(text),
        "body_type": draw(st.sampled_from(["text", "html"])),
        "location": draw(text),
        "attendees": draw(people),
        "key": draw(st.sampled_from(["", "calsync:oa1:42", "k<&>"])),
        "sensitivity": draw(
            st.sampled_from(["normal", "private", "Personal", "confidential", "x"])
        ),
        "timezone": zone,
    }
    day = draw(st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2035, 12, 31)))
    if all_day:
        days = draw(st.integers(min_value=0, max_value=5))  # 0: an end on the start date
        return EventWrite(
            start=None, end=None, all_day=True, start_date=day,
            end_date=day + dt.timedelta(days=days) if days or draw(st.booleans()) else None,
            **common,
        )  # fmt: skip
    start = dt.datetime.combine(day, dt.time(draw(st.integers(0, 23)), draw(st.integers(0, 59))))
    start = start.replace(tzinfo=zoneinfo.ZoneInfo(zone)).astimezone(dt.UTC)
    minutes = draw(st.integers(min_value=0, max_value=3 * 24 * 60))
    return EventWrite(start=start, end=start + dt.timedelta(minutes=minutes), **common)


@given(event=writes())
def test_the_element_is_the_one_exchangelib_writes(account: Account, event: EventWrite) -> None:
    c = connector()
    elem = ours(c, event)
    assert elem is not None
    _item, expected = theirs(c, account, event)
    assert canonical(elem) == canonical(expected)


@given(event=writes())
def test_the_created_event_reads_as_exchangelibs_item_would(
    account: Account, event: EventWrite
) -> None:
    """What ``_create`` returns (the element read back with the id CreateItem gives) is what
    ``normalize_item`` made of exchangelib's saved item, for the values XML can carry."""
    c = connector()
    item, _xml = theirs(c, account, event)
    item._id = item.ID_ELEMENT_CLS("AAMk-1", "CK-1")
    elem = with_item_id(ours(c, event), "AAMk-1", "CK-1")
    got = normalize_element(
        elem, "Asia/Shanghai", responses=RESPONSES, show_as=SHOW_AS, key_property=KEY_PROPERTY
    )
    want = normalize_item(item, "Asia/Shanghai")
    # the zone reads back as EWS names it (its Windows id), mapped to its CLDR zone
    assert got.timezone == resolve_timezone(c._write_zone(event).ms_id)
    want.timezone = got.timezone
    # Text reads back as written to XML: characters XML 1.0 cannot carry became '?'
    # (exchangelib writes them so too), a location is trimmed.
    assert (got.subject, got.body) == (safe_xml_value(event.subject), safe_xml_value(event.body))
    assert got.location == safe_xml_value(event.location).strip()
    assert got.calsync_key == (safe_xml_value(event.key) or None)
    for field in ("subject", "body", "location"):
        setattr(got, field, getattr(want, field))
    assert got == want


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "s" * 256},
        {"attendees": [Attendee("x" * 250 + "@x.com", "", "required", "none")]},
        {"end": dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)},  # before the start
    ],
    ids=["long-subject", "long-address", "end-before-start"],
)
def test_what_exchangelib_refuses_goes_through_exchangelib(
    account: Account, change: dict[str, Any]
) -> None:
    c = connector()
    values = {"subject": "ok", "start": dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC),
              "end": dt.datetime(2026, 1, 1, 11, tzinfo=dt.UTC), **change}  # fmt: skip
    event = EventWrite(**values)
    assert ours(c, event) is None
    with pytest.raises((ValueError, EWSError)):
        theirs(c, account, event)
