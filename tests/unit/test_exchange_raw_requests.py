"""Requests calsync builds from cached parts (``exchange_raw``) are the ones exchangelib
builds: FindItem over a CalendarView, and the target folder of CreateItem and FindItem, per
mailbox (the cache is keyed by it). Canonical XML (C14N) compared, no network."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from exchangelib import (
    IMPERSONATION,
    Account,
    Configuration,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
    Version,
)
from exchangelib.items import ID_ONLY, SHALLOW
from exchangelib.properties import CalendarView
from exchangelib.services import CreateItem, FindItem
from lxml import etree

from calsync.connectors.exchange import DEFAULT_BUILD, _address_calendar_by_name
from calsync.connectors.exchange_create import RawCreateItem
from calsync.connectors.exchange_raw import RawFindItem

UTC = EWSTimeZone("UTC")


def account(address: str) -> Account:
    config = Configuration(
        server="ews.example.com",
        credentials=Credentials("svc", "not-used"),
        version=Version(build=DEFAULT_BUILD),
    )
    acc = Account(address, config=config, autodiscover=False, access_type=IMPERSONATION)
    _address_calendar_by_name(acc)  # as the connector does: no GetFolder
    return acc


def canonical(elem: Any) -> bytes:
    return etree.tostring(elem, method="c14n")


def find_args(acc: Account, view: CalendarView) -> dict[str, Any]:
    return {
        "folders": [acc.calendar],
        "additional_fields": None,
        "restriction": None,
        "order_fields": None,
        "query_string": None,
        "shape": ID_ONLY,
        "depth": SHALLOW,
        "calendar_view": view,
        "page_size": 100,
        "offset": 0,
    }


@pytest.mark.parametrize("max_items", [None, 250])
def test_find_item_request_is_exchangelibs(max_items: int | None) -> None:
    start = EWSDateTime(2026, 11, 28, 16, tzinfo=UTC)
    end = EWSDateTime(2026, 12, 5, 16, 30, tzinfo=UTC)
    for address in ("alice@contoso.com", "bob@contoso.com", "alice@contoso.com"):
        acc = account(address)
        view = CalendarView(start=start, end=end, max_items=max_items)
        ours = RawFindItem(account=acc).get_payload(**find_args(acc, view))
        theirs = FindItem(account=acc).get_payload(**find_args(acc, view))
        assert canonical(ours) == canonical(theirs)
        assert address.encode() in canonical(ours)


def test_create_item_folder_is_exchangelibs_for_each_mailbox() -> None:
    for address in ("alice@contoso.com", "bob@contoso.com", "alice@contoso.com"):
        acc = account(address)
        args = {"folder": acc.calendar, "message_disposition": "SaveOnly"}
        ours = RawCreateItem(account=acc).get_payload(
            items=[], send_meeting_invitations="SendToNone", **args
        )
        theirs = CreateItem(account=acc).get_payload(
            items=[], send_meeting_invitations="SendToNone", **args
        )
        assert canonical(ours) == canonical(theirs)
        assert address.encode() in canonical(ours)


def test_envelope_is_exchangelibs_for_each_mailbox_mode_and_zone() -> None:
    """The SOAP header is cached per (API version, impersonated identity, zone): the
    envelope is byte for byte exchangelib's for each mailbox, access mode and zone."""
    from exchangelib import DELEGATE
    from exchangelib.services import GetItem

    from calsync.connectors.exchange_raw import RawGetItem

    config = Configuration(
        server="ews.example.com",
        credentials=Credentials("svc", "not-used"),
        version=Version(build=DEFAULT_BUILD),
    )
    for address, mode, zone in [
        ("alice@contoso.com", IMPERSONATION, "Asia/Shanghai"),
        ("bob@contoso.com", IMPERSONATION, "Asia/Shanghai"),
        ("alice@contoso.com", IMPERSONATION, "Europe/Berlin"),
        ("alice@contoso.com", DELEGATE, "Asia/Shanghai"),
        ("bob@contoso.com", IMPERSONATION, "Asia/Shanghai"),
    ]:
        acc = Account(
            address,
            config=config,
            autodiscover=False,
            access_type=mode,
            default_timezone=EWSTimeZone(zone),
        )
        for api_version in ("Exchange2016", None):
            body = etree.Element("{http://schemas.microsoft.com/exchange/services/2006/messages}X")
            ours = RawGetItem(account=acc).wrap(body, api_version=api_version)
            theirs = GetItem(account=acc).wrap(copy.deepcopy(body), api_version=api_version)
            assert ours == theirs
            assert (address.encode() in ours) == (mode == IMPERSONATION)


@pytest.mark.parametrize("fields", [("uid", "type", "start", "end", "is_all_day"), ()])
def test_sync_folder_items_request_is_exchangelibs(fields: tuple[str, ...]) -> None:
    from exchangelib.services import SyncFolderItems

    from calsync.connectors.exchange import _sync_fields
    from calsync.connectors.exchange_raw import CachedSyncFolderItems, RawSyncFolderItems

    for address, state in [("alice@contoso.com", None), ("bob@contoso.com", "H4sIAAA=")]:
        acc = account(address)
        folder = acc.calendar
        wanted = {
            f for f in folder.normalize_fields(fields=list(fields)) if not f.field.is_attribute
        }
        assert _sync_fields(folder, fields, acc.version) == wanted
        args = {
            "folder": folder,
            "shape": ID_ONLY,
            "additional_fields": wanted,
            "sync_state": state,
            "ignore": None,
            "max_changes_returned": 512,
            "sync_scope": None,
        }
        theirs = canonical(SyncFolderItems(account=acc).get_payload(**args))
        for ours in (CachedSyncFolderItems, RawSyncFolderItems):
            assert canonical(ours(account=acc).get_payload(**args)) == theirs
        assert address.encode() in theirs


def test_attendees_read_in_one_pass_as_person_and_text_read_them() -> None:
    """``_attendees`` gives what ``_person`` and ``_text`` give per ``t:Attendee``: an
    attendee without a mailbox, without a name, without a response, with blanks and case."""
    from lxml import etree

    from calsync.connectors.exchange_raw import T, _attendees, _person, _text

    nodes = [
        "<t:Mailbox><t:Name> 张伟 </t:Name><t:EmailAddress> ZhangWei@Contoso.com </t:EmailAddress>"
        "<t:RoutingType>SMTP</t:RoutingType></t:Mailbox><t:ResponseType>Accept</t:ResponseType>"
        "<t:LastResponseTime>2026-12-01T00:00:00Z</t:LastResponseTime>",
        "<t:Mailbox><t:EmailAddress>b@contoso.com</t:EmailAddress></t:Mailbox>",
        "<t:ResponseType>Decline</t:ResponseType>",
        "<t:Mailbox><t:Name>Only a name</t:Name></t:Mailbox><t:ResponseType/>",
        "",
    ]
    xml = (
        '<t:RequiredAttendees xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        + "".join(f"<t:Attendee>{n}</t:Attendee>" for n in nodes)
        + "</t:RequiredAttendees>"
    )
    group = etree.fromstring(xml.encode())
    expected = [
        (*_person(node), _text(node, "ResponseType")) for node in group.iterfind(T + "Attendee")
    ]
    assert _attendees(group) == expected
    assert expected[0] == ("zhangwei@contoso.com", "张伟", "Accept")
    assert (
        _attendees(
            etree.fromstring(
                xml.replace("<t:Attendee>", "<t:X>").replace("</t:Attendee>", "</t:X>").encode()
            )
        )
        == []
    )


@pytest.mark.parametrize("fault", ["timeout", "busy"])
def test_a_create_is_sent_again_only_after_a_refusal(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "server busy" fault saved nothing: the CreateItem goes again after its back-off. A
    timeout or a lost connection may come after the server saved the items: exchangelib
    would send them again (made twice); RawCreateItem raises instead."""
    from exchangelib.errors import ErrorServerBusy, ErrorTimeoutExpired

    service = RawCreateItem(account=account("a@contoso.com"))
    sent: list[Any] = []
    waits: list[float] = []

    def answer(payload: Any) -> Any:
        sent.append(payload)
        if len(sent) == 1:
            raise (
                ErrorTimeoutExpired("read timed out")
                if fault == "timeout"
                else (ErrorServerBusy("busy", back_off=0.01))
            )
        yield "made"

    monkeypatch.setattr(service, "_response_generator", answer)
    # several sessions, as a connector with execution.concurrency > 1 has: exchangelib resends
    # after a timeout only then
    monkeypatch.setattr(service.protocol, "_session_pool_size", 4)
    monkeypatch.setattr(service, "_handle_backoff", lambda exc: waits.append(exc.back_off))
    if fault == "timeout":
        with pytest.raises(ErrorTimeoutExpired):
            list(service._get_elements(payload="p"))
        assert len(sent) == 1 and waits == []
    else:
        assert list(service._get_elements(payload="p")) == ["made"]
        assert len(sent) == 2 and waits == [0.01]
