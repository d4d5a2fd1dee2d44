"""Calendar item fields on the wire: parsing ``<t:CalendarItem>`` (CreateItem, SetItemField) into
stored fields, and rendering stored items for an ``ItemShape`` (IdOnly / Default /
AllProperties plus ``AdditionalProperties``: FieldURIs and ExtendedFieldURIs).

Unknown FieldURIs are skipped when rendering (lenient, like the Graph emulator with unknown
``$select`` names); unknown elements of a written item are ignored.
"""

from __future__ import annotations

import datetime as dt
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
    boolean,
    child,
    children,
    el,
    fmt_datetime,
    local,
    parse_datetime,
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

    def wants(self, uri: str) -> bool:
        if self.base == "AllProperties":
            return True
        if self.base == "Default" and uri in DEFAULT_SHAPE:
            return True
        return uri in self.fields


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


def _render_mailbox(parent: Element, email: str, name: str, store: Store) -> None:
    box = tsub(parent, "Mailbox")
    tsub(box, "Name", name or store.display_name(email) or email)
    tsub(box, "EmailAddress", email)
    tsub(box, "RoutingType", "SMTP")
    tsub(box, "MailboxType", "Mailbox")


def _render_attendees(
    parent: Element, tag: str, people: list[dict[str, str]], store: Store
) -> None:
    node = tsub(parent, tag)
    for person in people:
        attendee = tsub(node, "Attendee")
        _render_mailbox(attendee, person["email"], person.get("name", ""), store)
        tsub(attendee, "ResponseType", person.get("response") or "Unknown")


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
    """``<t:CalendarItem>`` (or a meeting message) with the fields the shape asks for."""
    item = instance.item
    f = instance.f
    tag = item.kind if item.kind != "CalendarItem" else "CalendarItem"
    node = el(T, tag)
    tsub(node, "ItemId", Id=instance.id, ChangeKey=instance.change_key)
    want = shape.wants
    if want("item:ParentFolderId"):
        tsub(node, "ParentFolderId", Id=folder_id(item.mailbox, item.folder), ChangeKey="AQAAAA==")
    if want("item:ItemClass"):
        klass = {
            "CalendarItem": "IPM.Appointment",
            "MeetingRequest": "IPM.Schedule.Meeting.Request",
            "MeetingCancellation": "IPM.Schedule.Meeting.Canceled",
        }[item.kind]
        tsub(node, "ItemClass", klass)
    if want("item:Subject"):
        tsub(node, "Subject", f.get("subject", ""))
    if item.kind != "CalendarItem":
        if want("item:DateTimeCreated"):
            tsub(node, "DateTimeCreated", fmt_datetime(item.created))
        if want("calendar:UID") or want("meeting:UID"):
            tsub(node, "UID", f.get("uid", ""))
        return node
    if want("item:Sensitivity"):
        tsub(node, "Sensitivity", f.get("sensitivity", "Normal"))
    if want("item:Body"):
        tsub(
            node,
            "Body",
            f.get("body", ""),
            BodyType=f.get("body_type", "HTML"),
            IsTruncated="false",
        )
    if want("item:DateTimeReceived"):
        tsub(node, "DateTimeReceived", fmt_datetime(item.created))
    if want("item:Size"):
        tsub(node, "Size", str(512 + len(f.get("body", "")) + len(f.get("subject", ""))))
    if want("item:Categories"):
        cats = tsub(node, "Categories")
        for name in f.get("categories") or []:
            tsub(cats, "String", name)
    if want("item:Importance"):
        tsub(node, "Importance", f.get("importance", "Normal"))
    if want("item:IsDraft"):
        tsub(node, "IsDraft", "false")
    if want("item:DateTimeSent"):
        tsub(node, "DateTimeSent", fmt_datetime(item.created))
    if want("item:DateTimeCreated"):
        tsub(node, "DateTimeCreated", fmt_datetime(item.created))
    if want("item:ReminderIsSet"):
        tsub(node, "ReminderIsSet", xml_bool(bool(f.get("reminder"))))
    if want("item:ReminderMinutesBeforeStart"):
        tsub(node, "ReminderMinutesBeforeStart", str(f.get("reminder_minutes", 15)))
    if want("item:HasAttachments"):
        tsub(node, "HasAttachments", "false")
    props = f.get("ext") or {}
    wanted_ext = (
        shape.extended if shape.base != "AllProperties" else [p["uri"] for p in props.values()]
    )
    for uri in wanted_ext:
        prop = props.get(ext_key(uri))
        if prop is None:
            continue
        ext = tsub(node, "ExtendedProperty")
        tsub(ext, "ExtendedFieldURI", **uri)
        if isinstance(prop["value"], list):
            values = tsub(ext, "Values")
            for value in prop["value"]:
                tsub(values, "Value", str(value))
        else:
            tsub(ext, "Value", str(prop["value"]))
    if want("item:LastModifiedName"):
        tsub(node, "LastModifiedName", store.display_name(item.mailbox))
    if want("item:LastModifiedTime"):
        tsub(node, "LastModifiedTime", fmt_datetime(instance.last_modified or item.last_modified))
    if want("item:IsAssociated"):
        tsub(node, "IsAssociated", "false")
    if want("calendar:UID"):
        tsub(node, "UID", f.get("uid", ""))
    if instance.original_start is not None and want("calendar:RecurrenceId"):
        tsub(node, "RecurrenceId", fmt_datetime(instance.original_start))
    if want("calendar:Start"):
        tsub(node, "Start", fmt_datetime(f["start"]))
    if want("calendar:End"):
        tsub(node, "End", fmt_datetime(f["end"]))
    if instance.original_start is not None and want("calendar:OriginalStart"):
        tsub(node, "OriginalStart", fmt_datetime(instance.original_start))
    if want("calendar:IsAllDayEvent"):
        tsub(node, "IsAllDayEvent", xml_bool(bool(f.get("all_day"))))
    if want("calendar:LegacyFreeBusyStatus"):
        tsub(node, "LegacyFreeBusyStatus", f.get("busy", "Busy"))
    if want("calendar:Location"):
        tsub(node, "Location", f.get("location", ""))
    people = [p for kind in ("required", "optional", "resources") for p in f.get(kind) or []]
    if want("calendar:IsMeeting"):
        tsub(node, "IsMeeting", xml_bool(bool(people)))
    if want("calendar:IsCancelled"):
        tsub(node, "IsCancelled", xml_bool(bool(f.get("cancelled"))))
    if want("calendar:IsRecurring"):
        tsub(node, "IsRecurring", xml_bool(instance.type != "Single"))
    if want("calendar:MeetingRequestWasSent"):
        tsub(node, "MeetingRequestWasSent", xml_bool(bool(f.get("meeting_request_was_sent"))))
    if want("calendar:IsResponseRequested"):
        tsub(node, "IsResponseRequested", xml_bool(bool(f.get("response_requested", True))))
    if want("calendar:CalendarItemType"):
        tsub(node, "CalendarItemType", instance.type)
    if want("calendar:MyResponseType"):
        tsub(node, "MyResponseType", f.get("response", "Unknown"))
    if want("calendar:Organizer"):
        organizer = f.get("organizer") or ("", "")
        _render_mailbox(tsub(node, "Organizer"), organizer[0], organizer[1], store)
    for uri, key, tag_name in (
        ("calendar:RequiredAttendees", "required", "RequiredAttendees"),
        ("calendar:OptionalAttendees", "optional", "OptionalAttendees"),
        ("calendar:Resources", "resources", "Resources"),
    ):
        if want(uri) and f.get(key):
            _render_attendees(node, tag_name, f[key], store)
    if want("calendar:Duration"):
        tsub(node, "Duration", _duration(f["start"], f["end"]))
    if want("calendar:AppointmentSequenceNumber"):
        tsub(node, "AppointmentSequenceNumber", str(f.get("sequence", 0)))
    if want("calendar:AppointmentState"):
        state = (1 if people else 0) | (2 if people and not item.is_organizer else 0)
        state |= 4 if f.get("cancelled") else 0
        tsub(node, "AppointmentState", str(state))
    if instance.type == "RecurringMaster":
        if want("calendar:Recurrence"):
            node.append(rec.render(f["recurrence"]))
        if want("calendar:ModifiedOccurrences") and item.overrides:
            mods = tsub(node, "ModifiedOccurrences")
            for key in sorted(item.overrides):
                occ = store.get_instance(None, occurrence_id(item.id, key))
                entry = tsub(mods, "Occurrence")
                tsub(entry, "ItemId", Id=occ.id, ChangeKey=occ.change_key)
                tsub(entry, "Start", fmt_datetime(occ.f["start"]))
                tsub(entry, "End", fmt_datetime(occ.f["end"]))
                tsub(entry, "OriginalStart", fmt_datetime(key))
        if want("calendar:DeletedOccurrences") and item.removed:
            deleted = tsub(node, "DeletedOccurrences")
            for key in sorted(item.removed):
                tsub(tsub(deleted, "DeletedOccurrence"), "Start", fmt_datetime(key))
    if want("calendar:StartTimeZone"):
        tsub(node, "StartTimeZone", Id=f.get("tz", "UTC"), Name=f.get("tz", "UTC"))
    if want("calendar:EndTimeZone"):
        tsub(
            node,
            "EndTimeZone",
            Id=f.get("end_tz") or f.get("tz", "UTC"),
            Name=f.get("end_tz") or "",
        )
    if want("calendar:ConferenceType"):
        tsub(node, "ConferenceType", "0")
    if want("calendar:AllowNewTimeProposal"):
        tsub(node, "AllowNewTimeProposal", "true")
    if want("calendar:IsOnlineMeeting"):
        tsub(node, "IsOnlineMeeting", "false")
    return node


def render_id(instance: Instance) -> Element:
    node = el(T, instance.item.kind if instance.item.kind != "CalendarItem" else "CalendarItem")
    tsub(node, "ItemId", Id=instance.id, ChangeKey=instance.change_key)
    return node
