"""Calendar item fields on the wire: parsing ``<t:CalendarItem>`` (CreateItem, SetItemField) into
stored fields, and rendering stored items for an ``ItemShape`` (IdOnly / Default /
AllProperties plus ``AdditionalProperties``: FieldURIs and ExtendedFieldURIs).

Unknown FieldURIs are skipped when rendering (lenient, like the Graph emulator with unknown
``$select`` names); unknown elements of a written item are ignored.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulators.ews import recurrence as rec
from emulators.ews.store import (
    URI_ATTRS,
    Instance,
    Store,
    ext_key,
    folder_id,
    occurrence_id,
    windows_zone,
)
from emulators.ews.wire import (
    BadRequest,
    Element,
    T,
    TypesWriter,
    boolean,
    child,
    children,
    el,
    fmt_datetime,
    local,
    parse_datetime,
    raw,
    text,
    tsub,
    xml_bool,
)

# FieldURI → stored field (for writes and DeleteItemField).
WRITABLE = {
    "item:Subject": "subject",
    "item:Body": "body",
    "item:Categories": "categories",
    "item:Importance": "importance",
    "item:Sensitivity": "sensitivity",
    "item:ReminderIsSet": "reminder",
    "item:ReminderMinutesBeforeStart": "reminder_minutes",
    "calendar:Start": "start",
    "calendar:End": "end",
    "calendar:IsAllDayEvent": "all_day",
    "calendar:LegacyFreeBusyStatus": "busy",
    "calendar:Location": "location",
    "calendar:RequiredAttendees": "required",
    "calendar:OptionalAttendees": "optional",
    "calendar:Resources": "resources",
    "calendar:Recurrence": "recurrence",
    "calendar:StartTimeZone": "tz",
    "calendar:EndTimeZone": "end_tz",
    "calendar:MeetingTimeZone": "tz",
    "calendar:UID": "uid",
    "calendar:IsResponseRequested": "response_requested",
}
DEFAULT_SHAPE = (
    "item:ItemId",
    "item:ParentFolderId",
    "item:ItemClass",
    "item:Subject",
    "item:Sensitivity",
    "item:DateTimeCreated",
    "item:HasAttachments",
    "item:ReminderIsSet",
    "calendar:UID",
    "calendar:Start",
    "calendar:End",
    "calendar:IsAllDayEvent",
    "calendar:LegacyFreeBusyStatus",
    "calendar:Location",
    "calendar:CalendarItemType",
    "calendar:Organizer",
)


@dataclass
class Shape:
    base: str = "IdOnly"
    fields: list[str] = field(default_factory=list)
    extended: list[dict[str, str]] = field(default_factory=list)

    @functools.cached_property
    def wanted(self) -> Callable[[str], bool]:
        """Whether the shape asks for a FieldURI: a set lookup made once per shape (it is
        asked ~40 times per item rendered)."""
        if self.base == "AllProperties":
            return lambda _uri: True
        return set(self.fields).union(DEFAULT_SHAPE if self.base == "Default" else ()).__contains__


def parse_shape(elem: Element | None) -> Shape:
    if elem is None:
        return Shape()
    shape = Shape(base=(text(elem, "BaseShape") or "IdOnly").strip())
    for node in children(child(elem, "AdditionalProperties")):
        tag = local(node.tag)
        if tag == "FieldURI":
            shape.fields.append(node.get("FieldURI", ""))
        elif tag == "ExtendedFieldURI":
            shape.extended.append({k: v for k, v in node.attrib.items() if k in URI_ATTRS})
        elif tag == "IndexedFieldURI":
            continue
    return shape


# --- parsing written items -------------------------------------------------------------------


def _mailbox(node: Element | None) -> tuple[str, str]:
    box = child(node, "Mailbox") if node is not None and local(node.tag) != "Mailbox" else node
    return (text(box, "EmailAddress") or "").strip().lower(), (text(box, "Name") or "").strip()


def parse_attendees(node: Element) -> list[dict[str, str]]:
    out = []
    for attendee in children(node, "Attendee"):
        email, name = _mailbox(attendee)
        if email:
            out.append(
                {
                    "email": email,
                    "name": name,
                    "response": text(attendee, "ResponseType") or "Unknown",
                }
            )
    return out


def parse_extended(node: Element) -> tuple[tuple[str, str, str, str], dict[str, Any]]:
    uri_node = child(node, "ExtendedFieldURI")
    if uri_node is None:
        raise BadRequest("ExtendedProperty without ExtendedFieldURI")
    uri = {k: v for k, v in uri_node.attrib.items() if k in URI_ATTRS}
    values = child(node, "Values")
    value: Any = (
        [text(v) or "" for v in children(values, "Value")]
        if values is not None
        else (text(node, "Value") or "")
    )
    return ext_key(uri), {"uri": uri, "value": value}


def parse_item(elem: Element, context_zone: dt.tzinfo) -> dict[str, Any]:
    """The fields a ``<t:CalendarItem>`` element sets (stored names); times as aware UTC."""
    out: dict[str, Any] = {}
    for node in elem:
        tag = local(node.tag)
        value = node.text or ""
        if tag == "Subject":
            out["subject"] = value
        elif tag == "Body":
            out["body"] = value
            out["body_type"] = "Text" if node.get("BodyType", "HTML").lower() == "text" else "HTML"
        elif tag == "Categories":
            out["categories"] = [s.text or "" for s in children(node, "String")]
        elif tag in ("Importance", "Sensitivity", "Location", "UID"):
            out[tag.lower() if tag != "UID" else "uid"] = value
        elif tag == "LegacyFreeBusyStatus":
            out["busy"] = value
        elif tag == "ReminderIsSet":
            out["reminder"] = boolean(value)
        elif tag == "ReminderMinutesBeforeStart":
            out["reminder_minutes"] = int(value or 0)
        elif tag == "IsResponseRequested":
            out["response_requested"] = boolean(value)
        elif tag in ("Start", "End"):
            out[tag.lower()] = parse_datetime(value, context_zone)
        elif tag == "IsAllDayEvent":
            out["all_day"] = boolean(value)
        elif tag in ("RequiredAttendees", "OptionalAttendees", "Resources"):
            out[
                {"RequiredAttendees": "required", "OptionalAttendees": "optional"}.get(
                    tag, "resources"
                )
            ] = parse_attendees(node)
        elif tag == "Recurrence":
            out["recurrence"] = rec.parse(node)
        elif tag in ("StartTimeZone", "MeetingTimeZone", "EndTimeZone"):
            zone = windows_zone(node.get("Id") or node.get("Name") or "UTC")
            out["end_tz" if tag == "EndTimeZone" else "tz"] = zone
        elif tag == "ExtendedProperty":
            key, prop = parse_extended(node)
            out.setdefault("ext", {})[key] = prop
    return out


# --- rendering ---------------------------------------------------------------------------------


def _render_mailbox(out: TypesWriter, email: str, name: str, store: Store) -> None:
    out.parts.append("<t:Mailbox>")
    out.leaf("Name", name or store.display_name(email) or email)
    out.leaf("EmailAddress", email)
    out.parts.append(_MAILBOX_END)


_MAILBOX_END = (
    "<t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox>"
)


def _render_attendees(
    out: TypesWriter, tag: str, people: list[dict[str, str]], store: Store
) -> None:
    node = out.open(tag)
    for person in people:
        out.parts.append("<t:Attendee>")
        _render_mailbox(out, person["email"], person.get("name", ""), store)
        out.leaf("ResponseType", person.get("response") or "Unknown")
        out.parts.append("</t:Attendee>")
    out.close(node)


def _duration(start: dt.datetime, end: dt.datetime) -> str:
    seconds = int((end - start).total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P" + (f"{days}D" if days else "")
    if hours or minutes or secs or not days:
        out += "T" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
        out += f"{secs}S" if secs or not (hours or minutes) else ""
    return out


def render_item(instance: Instance, shape: Shape, store: Store) -> Element:
    """``<t:CalendarItem>`` (or a meeting message) with the fields the shape asks for, as a
    :func:`raw` element (written as text: see :class:`TypesWriter`)."""
    out = TypesWriter()
    _render_item(out, instance, shape, store)
    return raw(out.text())


def _render_item(out: TypesWriter, instance: Instance, shape: Shape, store: Store) -> None:
    item = instance.item
    f = instance.f
    leaf = out.leaf
    node = out.open(item.kind if item.kind != "CalendarItem" else "CalendarItem")
    leaf("ItemId", Id=instance.id, ChangeKey=instance.change_key)
    want = shape.wanted
    if want("item:ParentFolderId"):
        leaf("ParentFolderId", Id=folder_id(item.mailbox, item.folder), ChangeKey="AQAAAA==")
    if want("item:ItemClass"):
        klass = {
            "CalendarItem": "IPM.Appointment",
            "MeetingRequest": "IPM.Schedule.Meeting.Request",
            "MeetingCancellation": "IPM.Schedule.Meeting.Canceled",
        }[item.kind]
        leaf("ItemClass", klass)
    if want("item:Subject"):
        leaf("Subject", f.get("subject", ""))
    if item.kind != "CalendarItem":
        if want("item:DateTimeCreated"):
            leaf("DateTimeCreated", fmt_datetime(item.created))
        if want("calendar:UID") or want("meeting:UID"):
            leaf("UID", f.get("uid", ""))
        out.close(node)
        return
    if want("item:Sensitivity"):
        leaf("Sensitivity", f.get("sensitivity", "Normal"))
    if want("item:Body"):
        leaf("Body", f.get("body", ""), BodyType=f.get("body_type", "HTML"), IsTruncated="false")
    if want("item:DateTimeReceived"):
        leaf("DateTimeReceived", fmt_datetime(item.created))
    if want("item:Size"):
        leaf("Size", str(512 + len(f.get("body", "")) + len(f.get("subject", ""))))
    if want("item:Categories"):
        cats = out.open("Categories")
        for name in f.get("categories") or []:
            leaf("String", name)
        out.close(cats)
    if want("item:Importance"):
        leaf("Importance", f.get("importance", "Normal"))
    if want("item:IsDraft"):
        leaf("IsDraft", "false")
    if want("item:DateTimeSent"):
        leaf("DateTimeSent", fmt_datetime(item.created))
    if want("item:DateTimeCreated"):
        leaf("DateTimeCreated", fmt_datetime(item.created))
    if want("item:ReminderIsSet"):
        leaf("ReminderIsSet", xml_bool(bool(f.get("reminder"))))
    if want("item:ReminderMinutesBeforeStart"):
        leaf("ReminderMinutesBeforeStart", str(f.get("reminder_minutes", 15)))
    if want("item:HasAttachments"):
        leaf("HasAttachments", "false")
    props = f.get("ext") or {}
    wanted_ext = (
        shape.extended if shape.base != "AllProperties" else [p["uri"] for p in props.values()]
    )
    for uri in wanted_ext:
        prop = props.get(ext_key(uri))
        if prop is None:
            continue
        ext = out.open("ExtendedProperty")
        leaf("ExtendedFieldURI", **uri)
        if isinstance(prop["value"], list):
            values = out.open("Values")
            for value in prop["value"]:
                leaf("Value", str(value))
            out.close(values)
        else:
            leaf("Value", str(prop["value"]))
        out.close(ext)
    if want("item:LastModifiedName"):
        leaf("LastModifiedName", store.display_name(item.mailbox))
    if want("item:LastModifiedTime"):
        leaf("LastModifiedTime", fmt_datetime(instance.last_modified or item.last_modified))
    if want("item:IsAssociated"):
        leaf("IsAssociated", "false")
    if want("calendar:UID"):
        leaf("UID", f.get("uid", ""))
    if instance.original_start is not None and want("calendar:RecurrenceId"):
        leaf("RecurrenceId", fmt_datetime(instance.original_start))
    if want("calendar:Start"):
        leaf("Start", fmt_datetime(f["start"]))
    if want("calendar:End"):
        leaf("End", fmt_datetime(f["end"]))
    if instance.original_start is not None and want("calendar:OriginalStart"):
        leaf("OriginalStart", fmt_datetime(instance.original_start))
    if want("calendar:IsAllDayEvent"):
        leaf("IsAllDayEvent", xml_bool(bool(f.get("all_day"))))
    if want("calendar:LegacyFreeBusyStatus"):
        leaf("LegacyFreeBusyStatus", f.get("busy", "Busy"))
    if want("calendar:Location"):
        leaf("Location", f.get("location", ""))
    people = [p for kind in ("required", "optional", "resources") for p in f.get(kind) or []]
    if want("calendar:IsMeeting"):
        leaf("IsMeeting", xml_bool(bool(people)))
    if want("calendar:IsCancelled"):
        leaf("IsCancelled", xml_bool(bool(f.get("cancelled"))))
    if want("calendar:IsRecurring"):
        leaf("IsRecurring", xml_bool(instance.type != "Single"))
    if want("calendar:MeetingRequestWasSent"):
        leaf("MeetingRequestWasSent", xml_bool(bool(f.get("meeting_request_was_sent"))))
    if want("calendar:IsResponseRequested"):
        leaf("IsResponseRequested", xml_bool(bool(f.get("response_requested", True))))
    if want("calendar:CalendarItemType"):
        leaf("CalendarItemType", instance.type)
    if want("calendar:MyResponseType"):
        leaf("MyResponseType", f.get("response", "Unknown"))
    if want("calendar:Organizer"):
        organizer = f.get("organizer") or ("", "")
        opened = out.open("Organizer")
        _render_mailbox(out, organizer[0], organizer[1], store)
        out.close(opened)
    for uri, key, tag_name in (
        ("calendar:RequiredAttendees", "required", "RequiredAttendees"),
        ("calendar:OptionalAttendees", "optional", "OptionalAttendees"),
        ("calendar:Resources", "resources", "Resources"),
    ):
        if want(uri) and f.get(key):
            _render_attendees(out, tag_name, f[key], store)
    if want("calendar:Duration"):
        leaf("Duration", _duration(f["start"], f["end"]))
    if want("calendar:AppointmentSequenceNumber"):
        leaf("AppointmentSequenceNumber", str(f.get("sequence", 0)))
    if want("calendar:AppointmentState"):
        state = (1 if people else 0) | (2 if people and not item.is_organizer else 0)
        state |= 4 if f.get("cancelled") else 0
        leaf("AppointmentState", str(state))
    if instance.type == "RecurringMaster":
        if want("calendar:Recurrence"):
            out.element(rec.render(f["recurrence"]))
        if want("calendar:ModifiedOccurrences") and item.overrides:
            mods = out.open("ModifiedOccurrences")
            for key in sorted(item.overrides):
                occ = store.get_instance(None, occurrence_id(item.id, key))
                entry = out.open("Occurrence")
                leaf("ItemId", Id=occ.id, ChangeKey=occ.change_key)
                leaf("Start", fmt_datetime(occ.f["start"]))
                leaf("End", fmt_datetime(occ.f["end"]))
                leaf("OriginalStart", fmt_datetime(key))
                out.close(entry)
            out.close(mods)
        if want("calendar:DeletedOccurrences") and item.removed:
            deleted = out.open("DeletedOccurrences")
            for key in sorted(item.removed):
                entry = out.open("DeletedOccurrence")
                leaf("Start", fmt_datetime(key))
                out.close(entry)
            out.close(deleted)
    if want("calendar:StartTimeZone"):
        leaf("StartTimeZone", Id=f.get("tz", "UTC"), Name=f.get("tz", "UTC"))
    if want("calendar:EndTimeZone"):
        leaf("EndTimeZone", Id=f.get("end_tz") or f.get("tz", "UTC"), Name=f.get("end_tz") or "")
    if want("calendar:ConferenceType"):
        leaf("ConferenceType", "0")
    if want("calendar:AllowNewTimeProposal"):
        leaf("AllowNewTimeProposal", "true")
    if want("calendar:IsOnlineMeeting"):
        leaf("IsOnlineMeeting", "false")
    out.close(node)


def render_id(instance: Instance) -> Element:
    node = el(T, instance.item.kind if instance.item.kind != "CalendarItem" else "CalendarItem")
    tsub(node, "ItemId", Id=instance.id, ChangeKey=instance.change_key)
    return node
