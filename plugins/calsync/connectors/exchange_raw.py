"""Reading calendar items from EWS GetItem answers without exchangelib's item objects.

exchangelib turns every GetItem answer into ``CalendarItem`` objects field by field (a generic
``from_xml`` per field, attribute access through its property machinery): ~3 ms of CPU per
event with a few dozen attendees, ten times what the rest of a forward sync costs per event.
A full read only needs the :class:`SuiteEvent` the connector makes of them, so here the
``t:CalendarItem`` elements of the answer are read straight into one. exchangelib still builds
and sends the request (shape, chunks of 100 ids, impersonation, retries, errors): only
``GetItem._elem_to_obj`` is replaced.

:func:`normalize_element` gives what ``exchange.normalize_item`` gives for the same item read
with ``READ_FIELDS`` (tests compare the two on the emulator's items): UTC instants, all-day
events as dates in the item's start zone with an exclusive end, attendees de-duplicated across
required/optional/resources, calsync's marker from its extended property.

The requests calsync sends often (GetItem, FindItem, SyncFolderItems, CreateItem) are built
from cached parts: the SOAP header (:class:`CachedHeader`), the item shape and the folder
element (:func:`folder_element`), each built once by exchangelib and copied, since
exchangelib builds them field by field on every request. ``tests/unit/
test_exchange_raw_requests.py`` compares every such request with exchangelib's own.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import zoneinfo
from typing import Any, ClassVar

from exchangelib.services import FindItem, GetItem, SyncFolderItems
from exchangelib.services.common import folder_ids_element, shape_element
from exchangelib.transport import DEFAULT_ENCODING
from exchangelib.util import add_xml_child, create_element, xml_to_str
from lxml import etree

from calsync.config import resolve_timezone
from calsync.model import Attendee, SuiteEvent

T = "{http://schemas.microsoft.com/exchange/services/2006/types}"
M = "{http://schemas.microsoft.com/exchange/services/2006/messages}"

HEADER_CACHE_MAX = 100_000  # SOAP headers kept (one per mailbox impersonated)
FOLDER_CACHE_MAX = 100_000  # folder elements kept (a few per mailbox)

EVENT_TYPES = {
    "Single": "singleInstance",
    "Occurrence": "occurrence",
    "Exception": "exception",
    "RecurringMaster": "seriesMaster",
}


class CachedHeader:
    """For exchangelib account services: the SOAP header (server version, impersonation,
    time zone context) built once per (API version, identity, zone) and copied. exchangelib's
    ``wrap`` builds it element by element on every request, the impersonation identity
    through its generic field machinery: ~5% of a drain's connector CPU. The envelope is
    otherwise ``wrap``'s (tests compare the bytes)."""

    NS_MAP: ClassVar[dict[str, str]]
    _headers: ClassVar[dict[tuple[Any, ...], Any]] = {}

    def wrap(self, content: Any, api_version: str | None = None) -> bytes:
        identity = self._account_to_impersonate  # type: ignore[attr-defined]
        timezone = self._timezone  # type: ignore[attr-defined]
        key = (
            api_version,
            (identity.sid, identity.upn, identity.smtp_address, identity.primary_smtp_address)
            if identity
            else None,
            timezone.ms_id if timezone else None,
        )
        header = self._headers.get(key)
        if header is None:
            header = create_element("s:Header")
            if api_version:
                header.append(
                    create_element("t:RequestServerVersion", attrs={"Version": api_version})
                )
            if identity:
                add_xml_child(header, "t:ExchangeImpersonation", identity)
            if timezone:
                context = create_element("t:TimeZoneContext")
                context.append(create_element("t:TimeZoneDefinition", attrs={"Id": timezone.ms_id}))
                header.append(context)
            if len(self._headers) < HEADER_CACHE_MAX:
                self._headers[key] = header
        envelope = create_element("s:Envelope", nsmap=self.NS_MAP)
        if len(header):
            envelope.append(copy.deepcopy(header))
        body = create_element("s:Body")
        body.append(content)
        envelope.append(body)
        return xml_to_str(envelope, encoding=DEFAULT_ENCODING, xml_declaration=True)


class RawGetItem(CachedHeader, GetItem):
    """GetItem that yields the answer's item elements (and exchangelib's error objects).

    The request is built here too: the item shape once per (shape, fields, version) and
    copied, the ItemIds straight with lxml (exchangelib's generic element building cost
    ~5 ms per 40-item request)."""

    def _elem_to_obj(self, elem: Any) -> Any:
        return elem

    def get_payload(self, items: Any, additional_fields: Any, shape: Any) -> Any:
        payload = create_element(f"m:{self.SERVICE_NAME}")
        payload.append(shape_copy("m:ItemShape", shape, additional_fields, self.account.version))
        ids = etree.SubElement(payload, M + "ItemIds")
        for item in items:
            item_id, changekey = item if isinstance(item, tuple) else (item.id, item.changekey)
            ids.append(item_id_element(item_id, changekey))
        return payload


_folders: dict[tuple[Any, ...], Any] = {}


_shapes: dict[tuple[Any, ...], Any] = {}


def shape_copy(tag: str, shape: Any, additional_fields: Any, version: Any) -> Any:
    """exchangelib's ``shape_element``, built once per (tag, shape, fields, version) and
    copied: it expands and sorts the fields and builds each one generically."""
    key = (tag, shape, frozenset(additional_fields or ()), version.build, version.api_version)
    elem = _shapes.get(key)
    if elem is None:
        elem = _shapes[key] = shape_element(
            tag=tag, shape=shape, additional_fields=additional_fields, version=version
        )
    return copy.deepcopy(elem)


def folder_element(account: Any, folder: Any, tag: str) -> Any:
    """``folder_ids_element`` of one folder, built once per (mailbox, folder, tag, version)
    and copied: exchangelib builds it field by field on every request (~2% of a first
    sync's CPU, ~6% of a drain's connector CPU)."""
    version = account.version
    key = (
        account.primary_smtp_address.lower(),
        type(folder).__name__,
        getattr(folder, "id", None),
        getattr(folder, "DISTINGUISHED_FOLDER_ID", None),
        tag,
        version.build,
        version.api_version,
    )
    elem = _folders.get(key)
    if elem is None:
        elem = folder_ids_element(folders=[folder], version=version, tag=tag)
        if len(_folders) < FOLDER_CACHE_MAX:
            _folders[key] = elem
    return copy.deepcopy(elem)


class RawFindItem(CachedHeader, FindItem):
    """FindItem over a CalendarView that yields ``(item id, change key)`` straight from the
    answer, its request built from cached parts (the shape, the folder) instead of
    exchangelib's generic element building; exchangelib still pages, sends and raises."""

    def _elem_to_obj(self, elem: Any) -> Any:
        item_id = elem.find(T + "ItemId")
        if item_id is None:
            return None, None
        return item_id.get("Id"), item_id.get("ChangeKey")

    def get_payload(
        self,
        folders: Any,
        additional_fields: Any,
        restriction: Any,
        order_fields: Any,
        query_string: Any,
        shape: Any,
        depth: Any,
        calendar_view: Any,
        page_size: Any,
        offset: int = 0,
    ) -> Any:
        folders = list(folders)
        plain = not (additional_fields or restriction or order_fields or query_string)
        if not plain or calendar_view is None or len(folders) != 1:
            return super().get_payload(
                folders, additional_fields, restriction, order_fields, query_string, shape,
                depth, calendar_view, page_size, offset,
            )  # fmt: skip
        payload = create_element(f"m:{self.SERVICE_NAME}", attrs={"Traversal": depth})
        payload.append(shape_copy("m:ItemShape", shape, None, self.account.version))
        view = etree.SubElement(payload, M + "CalendarView")
        if calendar_view.max_items is not None:
            view.set("MaxEntriesReturned", str(calendar_view.max_items))
        view.set("StartDate", calendar_view.start.ewsformat())
        view.set("EndDate", calendar_view.end.ewsformat())
        payload.append(folder_element(self.account, folders[0], "m:ParentFolderIds"))
        return payload


def item_id_element(item_id: str, changekey: str | None) -> Any:
    """``t:ItemId`` (its change key when known)."""
    attrs = {"Id": item_id, "ChangeKey": changekey} if changekey else {"Id": item_id}
    return etree.Element(T + "ItemId", attrs)


class CachedSyncFolderItems(CachedHeader, SyncFolderItems):
    """SyncFolderItems (item objects, as exchangelib's) whose request is built from cached
    parts: the item shape per (shape, fields, version) and the folder. exchangelib builds
    both field by field on every request: 17% of the sync processes' CPU in an unchanged
    re-sync, one SyncFolderItems per mailbox."""

    def _partial_get_payload(
        self, folder: Any, shape: Any, additional_fields: Any, sync_state: Any
    ) -> Any:
        payload = create_element(f"m:{self.SERVICE_NAME}")
        payload.append(shape_copy(self.shape_tag, shape, additional_fields, self.account.version))
        payload.append(folder_element(self.account, folder, "m:SyncFolderId"))
        if sync_state:
            add_xml_child(payload, "m:SyncState", sync_state)
        return payload


class RawSyncFolderItems(CachedSyncFolderItems):
    """SyncFolderItems that yields ``(change type, change element)``: a new sync state pages
    through every item of the calendar, and a first sync needs only the state and the
    recurring masters' UIDs, not an item object per item."""

    def _elem_to_obj(self, elem: Any) -> Any:
        return self.change_types_map[elem.tag], elem


def master_of(change: Any) -> tuple[str, str] | None:
    """(UID, item id) when a SyncFolderItems create is a recurring master, else None."""
    item = change[0] if len(change) else None
    if item is None or _text(item, "CalendarItemType") != "RecurringMaster":
        return None
    uid, item_id = _text(item, "UID"), item.find(T + "ItemId")
    if not uid or item_id is None or not item_id.get("Id"):
        return None
    return uid, item_id.get("Id")


def _text(elem: Any, tag: str) -> str | None:
    child = elem.find(T + tag)
    return child.text if child is not None else None


def _instant(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _bool(text: str | None) -> bool:
    return (text or "").strip().lower() in ("true", "1")  # xs:boolean


@functools.lru_cache(maxsize=256)
def _zone(ms_id: str | None, fallback: str) -> str:
    if ms_id:
        try:
            return resolve_timezone(ms_id)
        except ValueError:
            pass
    return fallback


_ATTENDEE_PARTS = (T + "Attendee", T + "Name", T + "EmailAddress", T + "ResponseType")


def _attendees(group: Any) -> list[tuple[str, str, str | None]]:
    """(address, name, ResponseType) of each ``t:Attendee`` of a group, as ``_person`` and
    ``_text`` read them, in one pass over the elements that matter (a ``find`` per attendee
    and field cost 4× as much: meetings have up to 30 attendees)."""
    attendee, name_tag, email_tag, response_tag = _ATTENDEE_PARTS
    out: list[tuple[str, str, str | None]] = []
    email = name = ""
    response: str | None = None
    started = False
    for elem in group.iter(*_ATTENDEE_PARTS):  # document order: each Attendee, then its parts
        tag = elem.tag
        if tag == email_tag:
            email = (elem.text or "").strip().lower()
        elif tag == name_tag:
            name = (elem.text or "").strip()
        elif tag == response_tag:
            response = elem.text
        elif tag == attendee:
            if started:
                out.append((email, name, response))
            started = True
            email, name, response = "", "", None
    if started:
        out.append((email, name, response))
    return out


def _person(node: Any) -> tuple[str, str]:
    mailbox = node.find(T + "Mailbox") if node is not None else None
    if mailbox is None:
        return "", ""
    email = name = ""
    for child in mailbox:  # one pass over Name, EmailAddress, RoutingType, MailboxType
        if child.tag == T + "EmailAddress":
            email = (child.text or "").strip().lower()
        elif child.tag == T + "Name":
            name = (child.text or "").strip()
    return email, name


def normalize_element(
    elem: Any,
    default_zone: str,
    *,
    responses: dict[str, str],
    show_as: dict[str, str],
    key_property: tuple[str, str],
) -> SuiteEvent:
    """A ``t:CalendarItem`` element as a :class:`SuiteEvent` (see the module docstring).

    ``responses``/``show_as`` map EWS's response types and free/busy values; ``key_property``
    is (property set id, property name) of calsync's marker. Raises ValueError naming the
    problem for an item that cannot be understood."""
    # The item's fields, indexed once (a find() per field scans all children each time).
    fields = {child.tag: child for child in elem}

    def text(tag: str) -> str | None:
        child = fields.get(T + tag)
        return child.text if child is not None else None

    item_id = fields.get(T + "ItemId")
    suite_id = item_id.get("Id") if item_id is not None else None
    if not suite_id:
        raise ValueError("item without an id")
    start = _instant(text("Start"))
    end = _instant(text("End"))
    if start is None or end is None:
        raise ValueError("item without start or end")
    start_tz = fields.get(T + "StartTimeZone")
    end_tz = fields.get(T + "EndTimeZone")
    zone = _zone(start_tz.get("Id") if start_tz is not None else None, default_zone)
    end_zone = _zone(end_tz.get("Id") if end_tz is not None else None, zone)
    all_day = _bool(text("IsAllDayEvent"))
    start_date = end_date = None
    if all_day:
        # As exchangelib reads them: the dates in the item's own zones, the end inclusive;
        # kept with the exclusive end every other suite sends.
        first = start.astimezone(zoneinfo.ZoneInfo(zone)).date()
        last = (end - dt.timedelta(days=1)).astimezone(zoneinfo.ZoneInfo(end_zone)).date()
        start_date, end_date = first, last + dt.timedelta(days=1)
        if end_date <= start_date:
            end_date = start_date + dt.timedelta(days=1)
        start = end = None
    elif end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    organizer_email, organizer_name = _person(fields.get(T + "Organizer"))
    attendees: list[Attendee] = []
    seen: set[str] = set()
    for kind, tag in (
        ("required", "RequiredAttendees"),
        ("optional", "OptionalAttendees"),
        ("resource", "Resources"),
    ):
        group = fields.get(T + tag)
        if group is None:
            continue
        for email, name, response_type in _attendees(group):
            if not email or email in seen:
                continue
            seen.add(email)
            response = responses.get(response_type or "", "none")
            attendees.append(Attendee(email, name, kind, response))
    body_node = fields.get(T + "Body")
    body = (body_node.text or "") if body_node is not None else ""
    # An empty body is no body (exchangelib reads it as None: text).
    html = bool(body) and (body_node.get("BodyType") or "") == "HTML"
    kind = EVENT_TYPES.get(text("CalendarItemType") or "Single", "singleInstance")
    original = _instant(text("RecurrenceId") or text("OriginalStart"))
    categories = fields.get(T + "Categories")
    modified = _instant(text("LastModifiedTime"))
    uid = text("UID")
    return SuiteEvent(
        suite_id=suite_id,
        ical_uid=uid or suite_id,
        subject=text("Subject") or "",
        start=start,
        end=end,
        all_day=all_day,
        start_date=start_date,
        end_date=end_date,
        timezone=zone,
        location=(text("Location") or "").strip(),
        body=body,
        body_type="html" if html else "text",
        organizer=Attendee(organizer_email, organizer_name, "required", "organizer")
        if organizer_email
        else None,
        attendees=attendees,
        series_id=None,
        original_start=original if kind in ("occurrence", "exception") else None,
        event_type=kind,
        is_cancelled=_bool(text("IsCancelled")),
        sensitivity=(text("Sensitivity") or "Normal").lower(),
        show_as=show_as.get(text("LegacyFreeBusyStatus") or "Busy", "busy"),
        importance=(text("Importance") or "Normal").lower(),
        categories=[c.text or "" for c in categories.iterfind(T + "String")]
        if categories is not None
        else [],
        change_key=item_id.get("ChangeKey") or "",
        last_modified=modified,
        calsync_key=_marker(elem, key_property),
        extra={
            "my_response_type": text("MyResponseType") or "",
            "is_meeting": _bool(text("IsMeeting")),
        },
    )


def _marker(elem: Any, key_property: tuple[str, str]) -> str | None:
    set_id, name = key_property
    for prop in elem.iterfind(T + "ExtendedProperty"):
        uri = prop.find(T + "ExtendedFieldURI")
        if uri is None or uri.get("PropertyName") != name:
            continue
        if (uri.get("PropertySetId") or "").lower() != set_id.lower():
            continue
        return _text(prop, "Value") or None
    return None


def unreadable_element(elem: Any, reason: str) -> SuiteEvent:
    """A placeholder the engine logs as failed: one bad item never sinks the mailbox."""
    item_id = elem.find(T + "ItemId")
    suite_id = (item_id.get("Id") if item_id is not None else None) or "?"
    event = SuiteEvent(
        suite_id=suite_id,
        ical_uid=_text(elem, "UID") or suite_id,
        subject=(_text(elem, "Subject") or "")[:200],
        start=None,
        end=None,
    )
    event.extra["unreadable"] = reason
    return event
