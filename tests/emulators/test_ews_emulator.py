"""The EWS emulator on its own: raw SOAP over HTTP(S), Basic and NTLM, impersonation, the
store's series, delivery and modes, SyncFolderItems states and paging, restrictions, faults,
and the command line. exchangelib end to end is covered by tests/integration."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from requests_ntlm import HttpNtlmAuth

from emulators.ews import EwsEmulator, EwsError
from emulators.ews.auth import md4
from emulators.ews.wire import M, T

ROOT = Path(__file__).resolve().parents[2]
A, B, C, ROOM = "alice@contoso.com", "bob@contoso.com", "carol@contoso.com", "room1@contoso.com"
SVC = ("svc-calsync@contoso.com", "Svc-Calsync-Passw0rd!")
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
NS = {"s": SOAP_NS, "m": M, "t": T}
UTC = dt.UTC


@pytest.fixture(scope="module")
def ews_plain() -> Iterator[EwsEmulator]:
    emu = EwsEmulator().start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(ews_plain: EwsEmulator) -> EwsEmulator:
    ews_plain.reset()
    for address in (A, B, C):
        ews_plain.store.add_mailbox(address, address.split("@")[0].title())
    ews_plain.store.add_mailbox(ROOM, "Room 1", kind="Room")
    return ews_plain


def envelope(body: str, impersonate: str | None = None, extra_header: str = "") -> bytes:
    header = '<t:RequestServerVersion Version="Exchange2016"/>' + extra_header
    if impersonate:
        header += (
            "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>"
            f"{impersonate}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}" xmlns:m="{M}" '
        f'xmlns:t="{T}"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>'
    ).encode()


def post(
    emu: EwsEmulator,
    body: str,
    impersonate: str | None = A,
    auth: Any = SVC,
    extra_header: str = "",
    **kwargs: Any,
) -> requests.Response:
    return requests.post(
        emu.service_endpoint,
        data=envelope(body, impersonate, extra_header),
        headers={"Content-Type": "text/xml; charset=utf-8"},
        auth=auth,
        timeout=10,
        **kwargs,
    )


def xml(response: requests.Response) -> ET.Element:
    from defusedxml.ElementTree import fromstring

    return fromstring(response.content)


def code(response: requests.Response) -> str:
    """The first ResponseCode of a reply (or the SOAP fault's)."""
    root = xml(response)
    node = root.find(".//m:ResponseCode", NS)
    if node is None:
        node = root.find(
            ".//{http://schemas.microsoft.com/exchange/services/2006/errors}ResponseCode"
        )
    assert node is not None, response.text
    return node.text or ""


def calendar_ref(mailbox: str = A) -> str:
    return (
        f'<t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>{mailbox}'
        "</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"
    )


def calendar_view(
    emu: EwsEmulator, start: str, end: str, mailbox: str = A, **kw: Any
) -> list[ET.Element]:
    body = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '<t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/>'
        '<t:FieldURI FieldURI="calendar:Start"/><t:FieldURI FieldURI="calendar:CalendarItemType"/>'
        '<t:FieldURI FieldURI="calendar:RecurrenceId"/><t:FieldURI FieldURI="calendar:UID"/>'
        "</t:AdditionalProperties></m:ItemShape>"
        f'<m:CalendarView StartDate="{start}" EndDate="{end}"/>'
        f"<m:ParentFolderIds>{calendar_ref(mailbox)}</m:ParentFolderIds></m:FindItem>"
    )
    response = post(emu, body, impersonate=mailbox, **kw)
    assert response.status_code == 200, response.text
    root = xml(response).find(".//m:RootFolder", NS)
    assert root is not None, response.text
    assert root.get("IncludesLastItemInRange") == "true"
    items = root.findall("t:Items/t:CalendarItem", NS)
    assert int(root.get("TotalItemsInView") or -1) == len(items)
    return items


def subject(node: ET.Element) -> str:
    return node.findtext("t:Subject", namespaces=NS) or ""


# --- transport and auth -------------------------------------------------------------------


def test_md4_vectors() -> None:
    assert md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"


def test_basic_auth_and_version_header(emu: EwsEmulator) -> None:
    anonymous = post(emu, "<m:GetFolder/>", auth=None)
    assert anonymous.status_code == 401
    offered = anonymous.headers["WWW-Authenticate"]
    assert "NTLM" in offered and "Basic" in offered
    assert post(emu, "<m:GetFolder/>", auth=(SVC[0], "wrong")).status_code == 401
    body = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape>"
        f"<m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>"
    )
    ok = post(emu, body)
    assert ok.status_code == 200 and code(ok) == "NoError"
    info = xml(ok).find("s:Header/t:ServerVersionInfo", NS)
    assert info is not None and info.get("MajorVersion") == "15"
    assert xml(ok).find(".//t:CalendarFolder/t:FolderId", NS) is not None
    assert emu.stats.auth_schemes == {"basic": 1}


def test_ntlm_handshake_with_requests_ntlm(emu: EwsEmulator) -> None:
    emu.set_password("CONTOSO\\svc-ntlm", "Ntlm-pw-1", impersonate=True)
    body = f"<m:GetFolder><m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>"
    with requests.Session() as session:
        session.auth = HttpNtlmAuth("CONTOSO\\svc-ntlm", "Ntlm-pw-1")
        for _ in range(3):  # the connection stays authenticated
            response = session.post(emu.service_endpoint, data=envelope(body, A), timeout=10)
            assert response.status_code == 200, response.text
    assert emu.stats.auth_schemes == {"ntlm": 1}
    assert set(emu.stats.by_login) == {"CONTOSO\\svc-ntlm"}
    refused = requests.post(
        emu.service_endpoint,
        data=envelope(body, A),
        auth=HttpNtlmAuth("CONTOSO\\svc-ntlm", "not-it"),
        timeout=10,
    )
    assert refused.status_code == 401


def test_basic_only_emulator_offers_no_ntlm() -> None:
    emu = EwsEmulator(auth="basic").start()
    try:
        response = post(emu, "<m:GetFolder/>", auth=None)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    finally:
        emu.stop()


def test_tls_with_its_own_ca(tmp_path: Path) -> None:
    emu = EwsEmulator(tls_dir=tmp_path).start()
    try:
        assert emu.service_endpoint.startswith("https://127.0.0.1:")
        emu.store.add_mailbox(A)
        body = f"<m:GetFolder><m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>"
        with pytest.raises(requests.exceptions.SSLError):
            post(emu, body)
        assert post(emu, body, verify=str(emu.ca_file)).status_code == 200
    finally:
        emu.stop()


@pytest.mark.parametrize(
    "evil",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
        b"<!DOCTYPE x><x/>",
        b"<x>&undeclared;</x>",
        b"<x><unclosed></x>",
    ],
)
def test_dtd_and_malformed_requests_are_refused(emu: EwsEmulator, evil: bytes) -> None:
    response = requests.post(emu.service_endpoint, data=evil, auth=SVC, timeout=10)
    assert response.status_code == 500 and code(response) == "ErrorSchemaValidation"
    if b"DOCTYPE" in evil:
        assert "DTDForbidden" in response.text


def _shape(node: Any) -> tuple[Any, ...]:
    return (
        node.tag,
        sorted(node.attrib.items()),
        node.text or "",
        [_shape(kid) for kid in node],
        node.tail or "",
    )


_XML_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r&<>\"'")
)


@given(st.lists(st.tuples(st.sampled_from(["Subject", "Body"]), _XML_TEXT, _XML_TEXT), max_size=6))
def test_answers_read_back_as_built(fields: list[tuple[str, str, str]]) -> None:
    """The emulator's own XML writer: what a parser reads back is exactly the tree built
    (markup characters, quotes, CR/LF/tab in text and attributes, CJK, emoji)."""
    from defusedxml.ElementTree import fromstring

    from emulators.ews.wire import ServerVersion, envelope, msub, tsub
    from emulators.ews.wire import el as element

    message = element(M, "GetItemResponseMessage", ResponseClass="Success")
    item = tsub(msub(message, "Items"), "CalendarItem")
    tsub(item, "ItemId", Id="AAMk=", ChangeKey="CQAAAB")
    for name, text, attr in fields:
        tsub(item, name, text, Kind=attr)
    tsub(item, "Empty")
    body = fromstring(envelope(message, ServerVersion(), "Exchange2016")).find("s:Body", NS)
    assert body is not None and _shape(body[0]) == _shape(message)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Subject", "Body", "Categories"]),
            _XML_TEXT,
            st.none() | _XML_TEXT,
            st.lists(_XML_TEXT, max_size=3),
        ),
        max_size=6,
    )
)
def test_text_writer_writes_what_the_tree_writer_writes(
    fields: list[tuple[str, str, str | None, list[str]]],
) -> None:
    """Items are written as text (TypesWriter, for speed): byte for byte what the tree of the
    same elements gives, escapes, empty elements (``<t:X />``) and left-out attributes too;
    a raw() element within a tree is copied as it is."""
    from emulators.ews.wire import ServerVersion, TypesWriter, envelope, raw, tsub
    from emulators.ews.wire import el as element

    tree = element(T, "CalendarItem")
    out = TypesWriter()
    opened = out.open("CalendarItem")
    for name, text, attr, kids in fields:
        tsub(tree, name, text, Kind=attr, Other=None)
        out.leaf(name, text, Kind=attr, Other=None)
        node = tsub(tree, "Values", Id=attr)
        inner = out.open("Values", Id=attr)
        for kid in kids:
            tsub(node, "Value", kid)
            out.leaf("Value", kid)
        out.close(inner)
    out.close(opened)
    version = ServerVersion()
    assert envelope(raw(out.text()), version, "X") == envelope(tree, version, "X")
    one = TypesWriter()
    one.leaf("Subject", "a&b")
    assert envelope(raw(one.text()), version, "X").endswith(
        b"<s:Body><t:Subject>a&amp;b</t:Subject></s:Body></s:Envelope>"
    )


def test_answers_drop_what_xml_cannot_carry() -> None:
    """A seeded value may hold characters XML 1.0 cannot carry; the answer leaves them out
    (as a serialiser must) instead of failing the request."""
    from defusedxml.ElementTree import fromstring

    from emulators.ews.wire import ServerVersion, envelope, tsub
    from emulators.ews.wire import el as element

    item = element(T, "CalendarItem")
    tsub(item, "Subject", "a\x01b\x0bc\ud800d\tok")
    body = envelope(item, ServerVersion(), "Exchange2016")
    subject = fromstring(body).find(".//t:Subject", NS)
    assert subject is not None and subject.text == "abcd\tok"


# --- who acts -----------------------------------------------------------------------------


def test_impersonation_rights_and_unknown_mailboxes(emu: EwsEmulator) -> None:
    body = f"<m:GetFolder><m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>"
    assert code(post(emu, body)) == "NoError"
    unknown = post(emu, body, impersonate="ghost@contoso.com")
    assert unknown.status_code == 500 and code(unknown) == "ErrorNonExistentMailbox"
    emu.impersonation_allowed = False
    denied = post(emu, body)
    assert denied.status_code == 500 and code(denied) == "ErrorImpersonateUserDenied"
    assert emu.stats.impersonation_denied == 1
    # without impersonation the service account has no mailbox: access denied to Alice's
    emu.impersonation_allowed = True
    assert code(post(emu, body, impersonate=None)) == "ErrorAccessDenied"


def test_user_mode_logins_reach_only_their_own_mailbox(emu: EwsEmulator) -> None:
    emu.set_password("zhao4@exchange.com", "Zhao-pw", mailbox=A)  # login ≠ address (F21)
    own = f"<m:GetFolder><m:FolderIds>{calendar_ref(A)}</m:FolderIds></m:GetFolder>"
    other = f"<m:GetFolder><m:FolderIds>{calendar_ref(B)}</m:FolderIds></m:GetFolder>"
    me = ("zhao4@exchange.com", "Zhao-pw")
    assert code(post(emu, own, impersonate=None, auth=me)) == "NoError"
    assert code(post(emu, other, impersonate=None, auth=me)) == "ErrorAccessDenied"
    assert code(post(emu, own, impersonate=B, auth=me)) == "ErrorImpersonateUserDenied"


# --- store: series, zones, delivery, modes --------------------------------------------------


def seed_series(emu: EwsEmulator) -> dict[str, Any]:
    return emu.store.add_event(
        A,
        {
            "subject": "Daily",
            "start": "2026-12-01T09:00:00",
            "end": "2026-12-01T09:30:00",
            "timezone": "China Standard Time",
            "required_attendees": [B],
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "numberOfOccurrences": 4},
            },
            "deleted_occurrences": ["2026-12-02T09:00:00"],
            "modified_occurrences": [
                {"original_start": "2026-12-03", "subject": "Moved", "start": "2026-12-03T14:00:00"}
            ],
        },
    )


def test_calendar_view_expands_series_with_exceptions(emu: EwsEmulator) -> None:
    master = seed_series(emu)
    items = calendar_view(emu, "2026-11-30T16:00:00Z", "2026-12-10T16:00:00Z")
    assert [(subject(i), i.findtext("t:CalendarItemType", namespaces=NS)) for i in items] == [
        ("Daily", "Occurrence"),
        ("Moved", "Exception"),
        ("Daily", "Occurrence"),
    ]
    assert {i.findtext("t:UID", namespaces=NS) for i in items} == {master["uid"]}
    assert items[1].findtext("t:Start", namespaces=NS) == "2026-12-03T06:00:00Z"
    assert items[1].findtext("t:RecurrenceId", namespaces=NS) == "2026-12-03T01:00:00Z"
    raw = emu.store.events(A)[0]
    assert raw["type"] == "RecurringMaster"
    assert raw["deleted_occurrences"] == ["2026-12-02T01:00:00Z"]
    assert raw["modified_occurrences"][0]["subject"] == "Moved"
    # the attendee's copy: same UID, own ids, the exception; the deleted one shows cancelled
    copies = calendar_view(emu, "2026-11-30T16:00:00Z", "2026-12-10T16:00:00Z", mailbox=B)
    assert [subject(i) for i in copies] == ["Daily", "Canceled: Daily", "Moved", "Daily"]
    assert {i.findtext("t:UID", namespaces=NS) for i in copies} == {master["uid"]}
    assert not {i.find("t:ItemId", NS).get("Id") for i in copies} & {  # type: ignore[union-attr]
        i.find("t:ItemId", NS).get("Id")
        for i in items  # type: ignore[union-attr]
    }


def test_series_keeps_wall_time_across_dst(emu: EwsEmulator) -> None:
    emu.store.add_event(
        A,
        {
            "subject": "NY weekly",
            "start": "2026-03-02T09:00:00",
            "end": "2026-03-02T10:00:00",
            "timezone": "America/New_York",
            "recurrence": {
                "pattern": {"type": "weekly", "daysOfWeek": ["Monday"], "interval": 1},
                "range": {"type": "endDate", "endDate": "2026-03-16"},
            },
        },
    )
    lo, hi = dt.datetime(2026, 3, 1, tzinfo=UTC), dt.datetime(2026, 3, 20, tzinfo=UTC)
    starts = [e["start"] for e in emu.store.view_dicts(A, lo, hi)]
    assert starts == ["2026-03-02T14:00:00Z", "2026-03-09T13:00:00Z", "2026-03-16T13:00:00Z"]


def test_create_modes_deliver_as_exchange_does(emu: EwsEmulator) -> None:
    from emulators.ews.store import Store

    store: Store = emu.store
    for mode, copies, messages, saved in (
        ("SendToNone", 0, 0, 0),
        ("SendOnlyToAll", 2, 3, 0),
        ("SendToAllAndSaveCopy", 2, 3, 1),
    ):
        fields = store.fields_from_seed(
            A,
            {
                "subject": mode,
                "start": "2026-12-01T09:00:00",
                "end": "2026-12-01T10:00:00",
                "required_attendees": [B, "ext@partner.example"],
                "resources": [ROOM],
            },
        )
        outcome = store.create_item(A, fields, mode)
        made = sum(len(store.find_by_uid(m, outcome.uid)) for m in (B, ROOM))
        assert (made, len(outcome.messages), len(outcome.saved_copy_ids)) == (
            copies,
            messages,
            saved,
        )
    room_copy = store.find_by_uid(ROOM, outcome.uid)[0]
    assert room_copy["my_response_type"] == "Accept"
    assert store.find_by_uid(B, outcome.uid)[0]["legacy_free_busy_status"] == "Tentative"
    assert [i["subject"] for i in store.events(A, "sentitems")] == ["SendToAllAndSaveCopy"]


def test_update_and_delete_modes(emu: EwsEmulator) -> None:
    store = emu.store
    meeting = store.add_event(
        A,
        {
            "subject": "Plan",
            "start": "2026-12-01T09:00:00",
            "end": "2026-12-01T10:00:00",
            "required_attendees": [B, C],
        },
    )
    store.update_item(A, meeting["id"], {"subject": "Plan (quiet)"}, "SendToNone")
    assert store.find_by_uid(B, meeting["uid"])[0]["subject"] == "Plan"  # copies untouched
    outcome = store.update_item(
        A,
        meeting["id"],
        {"subject": "Plan v2", "required": [{"email": B, "name": "Bob", "response": "Unknown"}]},
        "SendOnlyToAll",
    )
    assert sorted(outcome.messages[i].kind for i in range(2)) == ["cancellation", "update"]
    assert store.find_by_uid(B, meeting["uid"])[0]["subject"] == "Plan v2"
    carol = store.find_by_uid(C, meeting["uid"])[0]
    assert carol["is_cancelled"] and carol["subject"] == "Canceled: Plan"  # never saw the quiet one
    gone = store.delete_item(A, meeting["id"], "MoveToDeletedItems", "SendToNone")
    assert gone.deleted_to == "deleteditems" and gone.attendee_copies == {B: "kept"}
    assert not store.find_by_uid(B, meeting["uid"])[0]["is_cancelled"]
    assert [i["subject"] for i in store.events(A, "deleteditems")] == ["Plan v2"]
    # deleting from Deleted Items goes to the dumpster; a hard delete leaves nothing
    again = store.delete_item(A, gone.moved_id or "", "MoveToDeletedItems")
    assert again.deleted_to == "recoverableitemsdeletions"
    last = store.delete_item(A, again.moved_id or "", "HardDelete")
    assert last.deleted_to == "gone"
    for folder in ("calendar", "deleteditems", "recoverableitemsdeletions"):
        assert store.events(A, folder) == []
    with pytest.raises(EwsError):
        store.delete_item(A, meeting["id"], "HardDelete")


def test_soap_writes_are_recorded_with_their_modes(emu: EwsEmulator) -> None:
    create = (
        '<m:CreateItem SendMeetingInvitations="SendToAllAndSaveCopy">'
        f"<m:SavedItemFolderId>{calendar_ref()}</m:SavedItemFolderId><m:Items><t:CalendarItem>"
        '<t:Subject>Sync</t:Subject><t:Body BodyType="Text">hello</t:Body>'
        "<t:ExtendedProperty><t:ExtendedFieldURI "
        'PropertySetId="6F9CBD8A-2F1E-4C51-9E0E-3C5A1D7B42C1" PropertyName="calsyncKey" '
        'PropertyType="String"/><t:Value>k-42</t:Value></t:ExtendedProperty>'
        "<t:Start>2026-12-01T09:00:00+08:00</t:Start><t:End>2026-12-01T10:00:00+08:00</t:End>"
        "<t:RequiredAttendees><t:Attendee><t:Mailbox><t:EmailAddress>bob@contoso.com</t:EmailAddress>"
        "</t:Mailbox></t:Attendee></t:RequiredAttendees>"
        '<t:StartTimeZone Id="China Standard Time"/></t:CalendarItem></m:Items></m:CreateItem>'
    )
    made = post(emu, create)
    assert code(made) == "NoError", made.text
    item_id = xml(made).find(".//t:ItemId", NS).get("Id")  # type: ignore[union-attr]
    record = emu.records[-1]
    assert record.operation == "CreateItem" and record.modes["SendMeetingInvitations"] == (
        "SendToAllAndSaveCopy"
    )
    assert record.messages == [("invitation", B)] and len(record.saved_copy_ids) == 1
    assert (record.login, record.impersonating) == (SVC[0], A)
    stored = emu.store.get(A, item_id or "")
    assert stored["timezone"] == "China Standard Time" and stored["start"] == "2026-12-01T01:00:00Z"
    # find by the extended property (property set ids compare case-insensitively)
    find = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        "</m:ItemShape>"
        '<m:IndexedPageItemView MaxEntriesReturned="10" Offset="0" BasePoint="Beginning"/>'
        "<m:Restriction><t:IsEqualTo><t:ExtendedFieldURI "
        'PropertySetId="6f9cbd8a-2f1e-4c51-9e0e-3c5a1d7b42c1" PropertyName="calsyncKey" '
        'PropertyType="String"/><t:FieldURIOrConstant><t:Constant Value="k-42"/>'
        "</t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>"
        f"<m:ParentFolderIds>{calendar_ref()}</m:ParentFolderIds></m:FindItem>"
    )
    found = xml(post(emu, find)).findall(".//t:Items/t:CalendarItem/t:ItemId", NS)
    assert [f.get("Id") for f in found] == [item_id]
    delete = (
        '<m:DeleteItem DeleteType="SoftDelete" SendMeetingCancellations="SendOnlyToAll">'
        f'<m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:DeleteItem>'
    )
    assert code(post(emu, delete)) == "NoError"
    record = emu.records[-1]
    assert record.deleted_to == "recoverableitemsdeletions"
    assert record.messages == [("cancellation", B)]
    assert code(post(emu, delete)) == "ErrorItemNotFound"
    missing_mode = delete.replace(' SendMeetingCancellations="SendOnlyToAll"', "")
    assert code(post(emu, missing_mode)) == "ErrorSendMeetingCancellationsRequired"


def test_update_item_with_stale_change_key(emu: EwsEmulator) -> None:
    made = emu.store.add_event(
        A, {"subject": "x", "start": "2026-12-01T09:00:00", "end": "2026-12-01T10:00:00"}
    )
    change = (
        '<m:UpdateItem ConflictResolution="{mode}" '
        'SendMeetingInvitationsOrCancellations="SendToNone">'
        f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{made["id"]}" ChangeKey="stale"/><t:Updates>'
        '<t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>y'
        "</t:Subject></t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges>"
        "</m:UpdateItem>"
    )
    assert code(post(emu, change.format(mode="NeverOverwrite"))) == "ErrorIrresolvableConflict"
    ok = post(emu, change.format(mode="AutoResolve"))
    assert code(ok) == "NoError"
    assert xml(ok).find(".//t:ItemId", NS).get("Id") == made["id"]  # type: ignore[union-attr]
    assert emu.store.get(A, made["id"])["subject"] == "y"


# --- SyncFolderItems --------------------------------------------------------------------------


def sync(emu: EwsEmulator, state: str | None, limit: int = 100) -> requests.Response:
    body = (
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>"
        '<t:FieldURI FieldURI="item:Subject"/></t:AdditionalProperties></m:ItemShape>'
        f"<m:SyncFolderId>{calendar_ref()}</m:SyncFolderId>"
        + (f"<m:SyncState>{state}</m:SyncState>" if state else "")
        + f"<m:MaxChangesReturned>{limit}</m:MaxChangesReturned></m:SyncFolderItems>"
    )
    return post(emu, body)


def changes(response: requests.Response) -> tuple[list[tuple[str, str]], str, bool]:
    root = xml(response)
    node = root.find(".//m:Changes", NS)
    assert node is not None, response.text
    out = []
    for change in node:
        kind = change.tag.rsplit("}", 1)[1]
        out.append((kind, subject(change[0]) if kind != "Delete" else change[0].get("Id") or ""))
    state = root.findtext(".//m:SyncState", namespaces=NS) or ""
    return out, state, root.findtext(".//m:IncludesLastItemInRange", namespaces=NS) == "true"


def test_sync_folder_items_states_and_paging(emu: EwsEmulator) -> None:
    store = emu.store
    ids = [
        store.add_event(
            A,
            {
                "subject": f"e{n}",
                "start": f"2026-12-0{n}T09:00:00",
                "end": f"2026-12-0{n}T10:00:00",
            },
        )["id"]
        for n in range(1, 6)
    ]
    first, state, last = changes(sync(emu, None, limit=3))
    assert first == [("Create", "e1"), ("Create", "e2"), ("Create", "e3")] and not last
    rest, state, last = changes(sync(emu, state, limit=3))
    assert rest == [("Create", "e4"), ("Create", "e5")] and last
    assert changes(sync(emu, state))[0] == []
    store.update_event(A, ids[0], {"subject": "e1 v2"})
    store.delete_event(A, ids[1], delete_type="HardDelete")
    store.add_event(
        A, {"subject": "e6", "start": "2026-12-06T09:00:00", "end": "2026-12-06T10:00:00"}
    )
    temp = store.add_event(
        A, {"subject": "tmp", "start": "2026-12-07T09:00:00", "end": "2026-12-07T10:00:00"}
    )
    store.delete_event(A, temp["id"])  # created and deleted since: never reported
    found, newer, _ = changes(sync(emu, state))
    assert found == [("Update", "e1 v2"), ("Delete", ids[1]), ("Create", "e6")]
    bad = sync(emu, state[:-3] + "xyz")
    assert code(bad) == "ErrorInvalidSyncStateData"
    store.invalidate_sync_states()
    assert code(sync(emu, newer)) == "ErrorInvalidSyncStateData"


# --- faults ---------------------------------------------------------------------------------


def test_server_busy_and_503_faults_with_violation_counting(emu: EwsEmulator) -> None:
    body = f"<m:GetFolder><m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>"
    emu.faults.back_off_ms = 300
    emu.faults.fail_next = [("GetFolder", "ErrorServerBusy")]
    busy = post(emu, body)
    assert busy.status_code == 500 and code(busy) == "ErrorServerBusy"
    value = xml(busy).find(".//t:MessageXml/t:Value", NS)
    assert value is not None and value.get("Name") == "BackOffMilliseconds" and value.text == "300"
    early = post(emu, body)  # before the back-off elapsed: refused again and counted
    assert code(early) == "ErrorServerBusy" and emu.stats.backoff_violations == 1
    time.sleep(0.35)
    assert code(post(emu, body)) == "NoError"
    emu.faults.update(retry_after_s=1, fail_next=[{"operation": "*", "fault": 503}])
    unavailable = post(emu, body)
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "1"
    emu.faults.fail_next = [("GetFolder", "ErrorInternalServerError")]
    time.sleep(1.05)
    assert code(post(emu, body)) == "ErrorInternalServerError"
    assert emu.stats.server_busy == 2 and emu.stats.unavailable_503 == 1
    with pytest.raises(ValueError):
        emu.faults.update(nonsense=1)


def test_per_tenant_concurrency_limit_answers_server_busy(emu: EwsEmulator) -> None:
    import threading

    body = f"<m:GetFolder><m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>"
    assert emu.faults.per_tenant_concurrency == 27  # Exchange's EWSMaxConcurrency default
    emu.faults.update(per_tenant_concurrency=3, latency_ms=300, back_off_ms=400)
    barrier = threading.Barrier(5)
    codes: list[str] = []

    def one() -> None:
        barrier.wait()
        codes.append(code(post(emu, body)))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == ["ErrorServerBusy"] * 2 + ["NoError"] * 3
    stats = emu.stats.snapshot()
    assert stats["concurrency_refused"] == 2 and stats["max_concurrency_seen"] == 4
    assert stats["server_busy"] == 2
    emu.faults.update(per_tenant_concurrency=0, latency_ms=0)  # 0: no limit
    assert code(post(emu, body)) == "NoError"


def test_latency_is_applied(emu: EwsEmulator) -> None:
    emu.faults.latency_ms = 150
    started = time.monotonic()
    post(emu, f"<m:GetFolder><m:FolderIds>{calendar_ref()}</m:FolderIds></m:GetFolder>")
    assert time.monotonic() - started >= 0.15


# --- seed and command line --------------------------------------------------------------------


def test_cli_serves_a_seed_and_stops_on_sigterm(tmp_path: Path) -> None:
    seed = {
        "mailboxes": {
            A: {
                "display_name": "Alice",
                "events": [
                    {
                        "subject": "Seeded",
                        "start": "2026-12-01T09:00:00",
                        "end": "2026-12-01T10:00:00",
                        "required_attendees": [B],
                    }
                ],
            },
            B: {},
            ROOM: {"kind": "Room"},
        }
    }
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed))
    state_file = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.ews",
            "--port",
            "0",
            "--seed",
            str(seed_file),
            "--state-file",
            str(state_file),
            "--tls-dir",
            str(tmp_path / "tls"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        state = json.loads(proc.stdout.readline())
        assert json.loads(state_file.read_text()) == state
        assert state["service_endpoint"].startswith("https://127.0.0.1:")
        body = (
            '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape>'
            '</m:ItemShape><m:CalendarView StartDate="2026-12-01T00:00:00Z" '
            f'EndDate="2026-12-02T00:00:00Z"/><m:ParentFolderIds>{calendar_ref(B)}'
            "</m:ParentFolderIds></m:FindItem>"
        )
        response = requests.post(
            state["service_endpoint"],
            data=envelope(body, B),
            auth=(state["service_login"], "Svc-Calsync-Passw0rd!"),
            verify=state["ca_file"],
            timeout=10,
        )
        assert [subject(i) for i in xml(response).findall(".//t:CalendarItem", NS)] == ["Seeded"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not state_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_move_item_gives_a_new_id_and_keeps_uid_copies_and_sync_order(emu: EwsEmulator) -> None:
    """E11: MoveItem to another folder and back (or within the calendar) gives a new ItemId;
    the UID, the organiser's link to the attendee copy and the extended properties stay, and
    SyncFolderItems reports a Delete of the old id and a Create of the new one."""
    store = emu.store
    meeting = store.add_event(
        A,
        {
            "subject": "Moved",
            "start": "2026-12-01T09:00:00",
            "end": "2026-12-01T10:00:00",
            "required_attendees": [B],
        },
    )
    _, state, _ = store.sync_changes(A, "calendar", None, 100)
    away = store.move_item(A, meeting["id"], "projects")
    assert away != meeting["id"] and [e["id"] for e in store.events(A, "projects")] == [away]
    assert store.events(A) == []
    back = store.move_item(A, away)
    assert back not in (away, meeting["id"])
    [item] = store.events(A)
    assert (item["id"], item["uid"], item["subject"]) == (back, meeting["uid"], "Moved")
    changes, _, _ = store.sync_changes(A, "calendar", state, 100)
    kinds = sorted((kind, obj if kind == "Delete" else obj.id) for kind, obj in changes)
    assert kinds == [("Create", back), ("Delete", meeting["id"])]
    # the organiser's update still reaches the attendee's copy, which moves the same way
    store.update_item(A, back, {"subject": "Moved v2"}, "SendToAllAndSaveCopy")
    [copy] = store.find_by_uid(B, meeting["uid"])
    assert copy["subject"] == "Moved v2"
    copy_id = store.move_item(B, copy["id"])
    store.update_item(A, back, {"subject": "Moved v3"}, "SendToAllAndSaveCopy")
    assert [(c["id"], c["subject"]) for c in store.find_by_uid(B, meeting["uid"])] == [
        (copy_id, "Moved v3")
    ]
    with pytest.raises(EwsError):
        store.move_item(A, meeting["id"])  # the old id is gone
