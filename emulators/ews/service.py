"""The EWS operations: SOAP request → store → SOAP response.

Operations: GetFolder, FindItem (CalendarView or IndexedPageItemView, with Restriction),
GetItem, CreateItem, UpdateItem, DeleteItem, SyncFolderItems, plus ConvertId (answered for
exchangelib's version probe). Anything else is answered ErrorInvalidRequest.

Who acts: with an ``ExchangeImpersonation`` header the service account acts as that mailbox
(refused with ErrorImpersonateUserDenied unless it holds the right); without one, the login's
own mailbox. A folder or item of another mailbox is ErrorAccessDenied; an unknown mailbox is
ErrorNonExistentMailbox.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulators.ews.fields import WRITABLE, parse_item, parse_shape, render_id, render_item
from emulators.ews.store import (
    DELETE_TYPES,
    FOLDERS,
    SEND_MODES,
    EwsError,
    Instance,
    Outcome,
    Record,
    ext_key,
    folder_id,
    new_uid,
    zone_of,
)
from emulators.ews.wire import (
    UTC,
    BadRequest,
    Element,
    M,
    boolean,
    child,
    children,
    el,
    local,
    msub,
    parse_datetime,
    response_message,
    text,
    tsub,
    xml_bool,
)

if TYPE_CHECKING:
    from emulators.ews.server import EwsEmulator

WRITE_OPERATIONS = ("CreateItem", "UpdateItem", "DeleteItem")


class SoapFault(Exception):
    """A request-level failure answered as a SOAP fault (HTTP 500)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Context:
    login: str
    auth: str
    api_version: str
    impersonating: str | None
    acting: str | None  # the mailbox the request acts as
    zone: dt.tzinfo = UTC
    mailboxes: set[str] = field(default_factory=set)  # touched, for stats


class Service:
    def __init__(self, emulator: EwsEmulator) -> None:
        self.emu = emulator
        self.store = emulator.store

    # --- entry ---

    def context(self, header: Element | None, login: str, auth: str) -> Context:
        api_version = "Exchange2016"
        impersonated = None
        zone: dt.tzinfo = UTC
        if header is not None:
            version = child(header, "RequestServerVersion")
            if version is not None:
                api_version = version.get("Version") or api_version
            imp = child(header, "ExchangeImpersonation")
            if imp is not None:
                sid = child(imp, "ConnectingSID")
                for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
                    value = text(sid, name)
                    if value:
                        impersonated = value.strip().lower()
                        break
                if impersonated is None:
                    raise SoapFault(
                        "ErrorInvalidRequest", "ExchangeImpersonation without an address"
                    )
            tzc = child(header, "TimeZoneContext")
            tzd = child(tzc, "TimeZoneDefinition")
            if tzd is not None and tzd.get("Id"):
                try:
                    zone = zone_of(tzd.get("Id"))
                except EwsError:
                    raise SoapFault(
                        "ErrorTimeZone", f"unknown time zone {tzd.get('Id')!r} in TimeZoneContext"
                    ) from None
        if impersonated is not None:
            if not self.emu.may_impersonate(login):
                self.emu.stats.add("impersonation_denied")
                raise SoapFault(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                )
            if not self.store.has_mailbox(impersonated):
                principal = self.emu.mailbox_of_login(impersonated)
                if principal is None:
                    raise SoapFault(
                        "ErrorNonExistentMailbox",
                        f"The SMTP address {impersonated!r} has no mailbox associated with it.",
                    )
                impersonated = principal
            acting: str | None = impersonated
        else:
            acting = self.emu.mailbox_of_login(login)
        return Context(login, auth, api_version, impersonated, acting, zone)

    def handle(self, operation: Element, ctx: Context) -> Element:
        name = local(operation.tag)
        handler = getattr(self, f"op_{name}", None)
        if handler is None:
            raise SoapFault("ErrorInvalidRequest", f"The operation {name} is not supported here.")
        return handler(operation, ctx)

    # --- addressing ---

    def _check_mailbox(self, mailbox: str, ctx: Context) -> str:
        mailbox = mailbox.strip().lower()
        if not self.store.has_mailbox(mailbox):
            raise EwsError(
                "ErrorNonExistentMailbox",
                f"The SMTP address {mailbox!r} has no mailbox associated with it.",
            )
        if ctx.acting != mailbox:
            raise EwsError(
                "ErrorAccessDenied",
                f"{ctx.login} has no access to the mailbox {mailbox} (no delegate rights).",
            )
        ctx.mailboxes.add(mailbox)
        return mailbox

    def folder_ref(self, node: Element, ctx: Context) -> tuple[str, str]:
        """(mailbox, folder name) of a DistinguishedFolderId / FolderId element."""
        tag = local(node.tag)
        if tag == "DistinguishedFolderId":
            name = (node.get("Id") or "").lower()
            address = text(child(node, "Mailbox"), "EmailAddress")
            mailbox = address or ctx.acting
            if not mailbox:
                raise EwsError(
                    "ErrorMissingEmailAddress",
                    "When making a request as an account that does not have a mailbox, you must "
                    "specify the mailbox primary SMTP address for any distinguished folders.",
                )
            mailbox = self._check_mailbox(mailbox, ctx)
            if name == "msgfolderroot":
                name = "root"
            if name not in FOLDERS:
                raise EwsError("ErrorFolderNotFound", f"The folder {name!r} does not exist here.")
            return mailbox, name
        if tag == "FolderId":
            wanted = node.get("Id") or ""
            for mailbox in self.store.mailboxes():
                for name in FOLDERS:
                    if folder_id(mailbox, name) == wanted:
                        return self._check_mailbox(mailbox, ctx), name
            raise EwsError(
                "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        raise BadRequest(f"unexpected folder reference {tag}")

    def item_ref(self, node: Element, ctx: Context) -> Instance:
        """The instance an ItemId / OccurrenceItemId / RecurringMasterItemId names."""
        tag = local(node.tag)
        if tag == "ItemId":
            item_id = node.get("Id") or ""
            owner = self.store.owner_of(item_id)
            if owner is None:
                raise EwsError(
                    "ErrorItemNotFound", "The specified object was not found in the store."
                )
            self._check_mailbox(owner, ctx)
            return self.store.get_instance(owner, item_id)
        if tag == "OccurrenceItemId":
            master = node.get("RecurringMasterId") or ""
            owner = self.store.owner_of(master)
            if owner is None:
                raise EwsError(
                    "ErrorItemNotFound", "The specified object was not found in the store."
                )
            self._check_mailbox(owner, ctx)
            return self.store.occurrence_by_index(
                owner, master, int(node.get("InstanceIndex") or 0)
            )
        if tag == "RecurringMasterItemId":
            occurrence = node.get("OccurrenceId") or ""
            owner = self.store.owner_of(occurrence)
            if owner is None:
                raise EwsError(
                    "ErrorItemNotFound", "The specified object was not found in the store."
                )
            self._check_mailbox(owner, ctx)
            return self.store.master_of(owner, occurrence)
        raise BadRequest(f"unexpected item reference {tag}")

    def _mailbox_folder(self, parent: Element | None, ctx: Context) -> tuple[str, str]:
        refs = children(parent)
        if len(refs) != 1:
            raise BadRequest("exactly one folder is supported here")
        return self.folder_ref(refs[0], ctx)

    # --- GetFolder ---

    def op_GetFolder(self, req: Element, ctx: Context) -> Element:
        out = el(M, "GetFolderResponse")
        msgs = msub(out, "ResponseMessages")
        for ref in children(child(req, "FolderIds")):
            try:
                mailbox, name = self.folder_ref(ref, ctx)
            except EwsError as exc:
                msgs.append(self._error("GetFolder", exc, "Folders"))
                continue
            msg = response_message("GetFolder")
            folders = msub(msg, "Folders")
            tag = "CalendarFolder" if name == "calendar" else "Folder"
            node = tsub(folders, tag)
            tsub(node, "FolderId", Id=folder_id(mailbox, name), ChangeKey="AQAAABYAAAA=")
            if name != "root":
                tsub(node, "ParentFolderId", Id=folder_id(mailbox, "root"), ChangeKey="AQAAAA==")
            tsub(node, "FolderClass", "IPF.Appointment" if name == "calendar" else "IPF.Note")
            tsub(node, "DisplayName", _DISPLAY.get(name, name))
            count = len(self.store.folder_instances(mailbox, name)) if name != "root" else 0
            tsub(node, "TotalCount", str(count))
            tsub(node, "ChildFolderCount", "0" if name != "root" else str(len(FOLDERS) - 1))
            if name != "calendar":
                tsub(node, "UnreadCount", "0")
            msgs.append(msg)
        return out

    # --- FindItem ---

    def op_FindItem(self, req: Element, ctx: Context) -> Element:
        out = el(M, "FindItemResponse")
        msgs = msub(out, "ResponseMessages")
        shape = parse_shape(child(req, "ItemShape"))
        try:
            mailbox, folder = self._mailbox_folder(child(req, "ParentFolderIds"), ctx)
            view = child(req, "CalendarView")
            restriction = child(req, "Restriction")
            if view is not None:
                if restriction is not None:
                    raise EwsError(
                        "ErrorInvalidRestriction",
                        "Restrictions are not allowed with a CalendarView.",
                    )
                if folder != "calendar":
                    raise EwsError("ErrorInvalidOperation", "CalendarView needs a calendar folder.")
                lo = parse_datetime(view.get("StartDate") or "", ctx.zone)
                hi = parse_datetime(view.get("EndDate") or "", ctx.zone)
                if hi < lo:
                    raise EwsError(
                        "ErrorCalendarInvalidDayForTimeChangePattern", "EndDate < StartDate"
                    )
                found = self.store.view(mailbox, lo, hi)
                limit = int(view.get("MaxEntriesReturned") or 0)
                total = len(found)
                last = True
                if limit and total > limit:
                    found, last = found[:limit], False
                paging = {"TotalItemsInView": total, "IncludesLastItemInRange": xml_bool(last)}
            else:
                found = self.store.folder_instances(mailbox, folder)
                if restriction is not None:
                    found = [i for i in found if _matches(_only(restriction), i)]
                page = child(req, "IndexedPageItemView")
                total = len(found)
                offset = int(page.get("Offset") or 0) if page is not None else 0
                limit = int(page.get("MaxEntriesReturned") or 0) if page is not None else 0
                if page is not None and (page.get("BasePoint") or "Beginning") == "End":
                    offset = max(0, total - offset - (limit or total))
                end = min(total, offset + limit) if limit else total
                found = found[offset:end]
                paging = {
                    "IndexedPagingOffset": end,
                    "TotalItemsInView": total,
                    "IncludesLastItemInRange": xml_bool(end >= total),
                }
        except EwsError as exc:
            msgs.append(self._error("FindItem", exc))
            return out
        msg = response_message("FindItem")
        root = msub(msg, "RootFolder", **paging)
        items = tsub(root, "Items")
        for instance in found:
            items.append(render_item(instance, shape, self.store))
        msgs.append(msg)
        return out

    # --- GetItem ---

    def op_GetItem(self, req: Element, ctx: Context) -> Element:
        out = el(M, "GetItemResponse")
        msgs = msub(out, "ResponseMessages")
        shape = parse_shape(child(req, "ItemShape"))
        for ref in children(child(req, "ItemIds")):
            try:
                instance = self.item_ref(ref, ctx)
            except EwsError as exc:
                msgs.append(self._error("GetItem", exc, "Items"))
                continue
            msg = response_message("GetItem")
            msub(msg, "Items").append(render_item(instance, shape, self.store))
            msgs.append(msg)
        return out

    # --- CreateItem ---

    def op_CreateItem(self, req: Element, ctx: Context) -> Element:
        out = el(M, "CreateItemResponse")
        msgs = msub(out, "ResponseMessages")
        send = req.get("SendMeetingInvitations") or ""
        modes = {"SendMeetingInvitations": send}
        if req.get("MessageDisposition"):
            modes["MessageDisposition"] = req.get("MessageDisposition") or ""
        for node in children(child(req, "Items")):
            try:
                if send not in SEND_MODES or send.startswith("SendOnlyToChanged"):
                    raise EwsError(
                        "ErrorSendMeetingInvitationsRequired",
                        "SendMeetingInvitations must be SendToNone, SendOnlyToAll or "
                        "SendToAllAndSaveCopy for calendar items.",
                    )
                if local(node.tag) != "CalendarItem":
                    raise EwsError("ErrorInvalidRequest", "only CalendarItem can be created here")
                saved = child(req, "SavedItemFolderId")
                if saved is not None:
                    mailbox, folder = self._mailbox_folder(saved, ctx)
                else:
                    if not ctx.acting:
                        raise EwsError("ErrorMissingEmailAddress", "no mailbox to save into")
                    mailbox, folder = self._check_mailbox(ctx.acting, ctx), "calendar"
                if folder != "calendar":
                    raise EwsError(
                        "ErrorInvalidOperation", "calendar items go to the calendar here"
                    )
                fields = self._new_fields(node, mailbox, ctx)
                outcome = self.store.create_item(mailbox, fields, send, folder)
            except EwsError as exc:
                msgs.append(self._error("CreateItem", exc, "Items"))
                self._record("CreateItem", ctx, modes, Outcome(), error=exc.code)
                continue
            self._record("CreateItem", ctx, modes, outcome)
            msg = response_message("CreateItem")
            instance = self.store.get_instance(mailbox, outcome.item_id)
            msub(msg, "Items").append(render_id(instance))
            msgs.append(msg)
        return out

    def _new_fields(self, node: Element, mailbox: str, ctx: Context) -> dict[str, Any]:
        given = parse_item(node, ctx.zone)
        if "start" not in given or "end" not in given:
            raise EwsError("ErrorMissingInformation", "a calendar item needs Start and End")
        tz = given.get("tz") or _zone_name(ctx.zone)
        box = self.store.mailbox(mailbox)
        fields: dict[str, Any] = {
            "subject": "",
            "body": "",
            "body_type": "HTML",
            "all_day": False,
            "tz": tz,
            "end_tz": given.get("end_tz") or tz,
            "location": "",
            "organizer": (box.email, box.name),
            "uid": new_uid(),
            "sensitivity": "Normal",
            "importance": "Normal",
            "busy": "Busy",
            "categories": [],
            "cancelled": False,
            "ext": {},
            "recurrence": None,
            "reminder": True,
            "reminder_minutes": 15,
            "response_requested": True,
            "sequence": 0,
            "response": "Organizer",
            "required": [],
            "optional": [],
            "resources": [],
        }
        fields.update(given)
        for kind in ("required", "optional", "resources"):
            for person in fields[kind]:
                person["name"] = person.get("name") or self.store.display_name(person["email"])
                person["response"] = "Unknown"
        self.store._normalize_times(fields)  # all-day snapped to midnights in the item's zone
        if fields.get("recurrence"):
            from emulators.ews import recurrence as rec

            rec.validate(
                fields["recurrence"], fields["start"].astimezone(zone_of(fields["tz"])).date()
            )
        return fields

    # --- UpdateItem ---

    def op_UpdateItem(self, req: Element, ctx: Context) -> Element:
        out = el(M, "UpdateItemResponse")
        msgs = msub(out, "ResponseMessages")
        send = req.get("SendMeetingInvitationsOrCancellations") or ""
        conflict = req.get("ConflictResolution") or "AutoResolve"
        modes = {"SendMeetingInvitationsOrCancellations": send, "ConflictResolution": conflict}
        for change in children(child(req, "ItemChanges"), "ItemChange"):
            ref = next(
                (
                    c
                    for c in change
                    if local(c.tag) in ("ItemId", "OccurrenceItemId", "RecurringMasterItemId")
                ),
                None,
            )
            try:
                if send not in SEND_MODES:
                    raise EwsError(
                        "ErrorSendMeetingInvitationsOrCancellationsRequired",
                        "SendMeetingInvitationsOrCancellations is required for calendar items.",
                    )
                if ref is None:
                    raise EwsError("ErrorInvalidIdMalformed", "ItemChange without an item id")
                with self.store.lock:
                    instance = self.item_ref(ref, ctx)
                    given_key = ref.get("ChangeKey")
                    if (
                        conflict == "NeverOverwrite"
                        and given_key
                        and given_key != instance.change_key
                    ):
                        raise EwsError(
                            "ErrorIrresolvableConflict",
                            "The send or update operation could not be performed because the "
                            "change key passed in the request does not match the current change "
                            "key for the item.",
                        )
                    patch, deleted = self._updates(change, ctx)
                    outcome = self.store.update_item(
                        instance.item.mailbox, instance.id, patch, send, deleted
                    )
                    updated = self.store.get_instance(instance.item.mailbox, instance.id)
            except EwsError as exc:
                msgs.append(self._error("UpdateItem", exc, "Items"))
                self._record("UpdateItem", ctx, modes, Outcome(), error=exc.code)
                continue
            self._record("UpdateItem", ctx, modes, outcome)
            msg = response_message("UpdateItem")
            msub(msg, "Items").append(render_id(updated))
            conflicts = msub(msg, "ConflictResults")
            tsub(conflicts, "Count", "0")
            msgs.append(msg)
        return out

    def _updates(self, change: Element, ctx: Context) -> tuple[dict[str, Any], set[str]]:
        patch: dict[str, Any] = {}
        deleted: set[str] = set()
        for update in children(child(change, "Updates")):
            kind = local(update.tag)
            uri_node = next(
                (
                    c
                    for c in update
                    if local(c.tag) in ("FieldURI", "ExtendedFieldURI", "IndexedFieldURI")
                ),
                None,
            )
            if uri_node is None:
                raise BadRequest(f"{kind} without a field")
            if local(uri_node.tag) == "ExtendedFieldURI":
                uri = dict(uri_node.attrib)
                if kind == "DeleteItemField":
                    patch.setdefault("ext_delete", set()).add(ext_key(uri))
                    continue
                carrier = next((c for c in update if local(c.tag) == "CalendarItem"), None)
                values = parse_item(carrier, ctx.zone) if carrier is not None else {}
                patch.setdefault("ext", {}).update(values.get("ext") or {})
                continue
            name = WRITABLE.get(uri_node.get("FieldURI") or "")
            if name is None:
                continue  # read-only or unknown: ignored
            if kind == "DeleteItemField":
                deleted.add(name)
                continue
            carrier = next((c for c in update if local(c.tag) == "CalendarItem"), None)
            if carrier is None:
                raise BadRequest(f"{kind} for {uri_node.get('FieldURI')} without a CalendarItem")
            values = parse_item(carrier, ctx.zone)
            if kind == "AppendToItemField" and name in ("required", "optional", "resources"):
                patch.setdefault(name, []).extend(values.get(name) or [])
                continue
            for key, value in values.items():
                if key != "ext":
                    patch[key] = value
        if "ext_delete" in patch:
            removed = patch.pop("ext_delete")
            patch["ext_removed"] = removed
        return patch, deleted

    # --- DeleteItem ---

    def op_DeleteItem(self, req: Element, ctx: Context) -> Element:
        out = el(M, "DeleteItemResponse")
        msgs = msub(out, "ResponseMessages")
        delete_type = req.get("DeleteType") or ""
        cancel = req.get("SendMeetingCancellations") or ""
        modes = {"DeleteType": delete_type, "SendMeetingCancellations": cancel}
        for ref in children(child(req, "ItemIds")):
            try:
                if delete_type not in DELETE_TYPES:
                    raise BadRequest(f"DeleteType {delete_type!r} is not valid")
                if cancel not in SEND_MODES or "Changed" in cancel:
                    raise EwsError(
                        "ErrorSendMeetingCancellationsRequired",
                        "SendMeetingCancellations is required for calendar items.",
                    )
                with self.store.lock:
                    instance = self.item_ref(ref, ctx)
                    outcome = self.store.delete_item(
                        instance.item.mailbox, instance.id, delete_type, cancel
                    )
            except EwsError as exc:
                msgs.append(self._error("DeleteItem", exc))
                self._record(
                    "DeleteItem", ctx, modes, Outcome(item_id=ref.get("Id") or ""), error=exc.code
                )
                continue
            self._record("DeleteItem", ctx, modes, outcome)
            msgs.append(response_message("DeleteItem"))
        return out

    # --- SyncFolderItems ---

    def op_SyncFolderItems(self, req: Element, ctx: Context) -> Element:
        out = el(M, "SyncFolderItemsResponse")
        msgs = msub(out, "ResponseMessages")
        shape = parse_shape(child(req, "ItemShape"))
        state = text(req, "SyncState") or None
        limit = max(1, min(512, int(text(req, "MaxChangesReturned") or 100)))
        try:
            mailbox, folder = self._mailbox_folder(child(req, "SyncFolderId"), ctx)
            changes, new_state, last = self.store.sync_changes(mailbox, folder, state, limit)
        except EwsError as exc:
            msg = self._error("SyncFolderItems", exc)
            msub(msg, "SyncState", "")
            msub(msg, "IncludesLastItemInRange", "true")
            msgs.append(msg)
            return out
        msg = response_message("SyncFolderItems")
        msub(msg, "SyncState", new_state)
        msub(msg, "IncludesLastItemInRange", xml_bool(last))
        container = msub(msg, "Changes")
        for kind, obj in changes:
            node = tsub(container, kind)
            if kind == "Delete":
                tsub(node, "ItemId", Id=obj, ChangeKey="AAAAAA==")
            else:
                node.append(render_item(obj, shape, self.store))
        msgs.append(msg)
        return out

    # --- ConvertId (exchangelib's version probe) ---

    def op_ConvertId(self, req: Element, ctx: Context) -> Element:
        out = el(M, "ConvertIdResponse")
        msgs = msub(out, "ResponseMessages")
        for _ in children(child(req, "SourceIds")):
            msgs.append(
                response_message("ConvertId", "ErrorInvalidIdMalformed", "Id is malformed.")
            )
        return out

    # --- helpers ---

    @staticmethod
    def _error(operation: str, exc: EwsError, container: str | None = None) -> Element:
        msg = response_message(operation, exc.code, exc.message)
        if container:
            msub(msg, container)
        return msg

    def _record(
        self,
        operation: str,
        ctx: Context,
        modes: dict[str, str],
        outcome: Outcome,
        error: str | None = None,
    ) -> None:
        self.store.add_record(
            Record(
                seq=self.store.next_record_seq(),
                operation=operation,
                login=ctx.login,
                auth=ctx.auth,
                impersonating=ctx.impersonating,
                mailbox=ctx.acting or "",
                modes=dict(modes),
                item_id=outcome.item_id,
                uid=outcome.uid,
                subject=outcome.subject,
                messages=[(m.kind, m.recipient) for m in outcome.messages],
                saved_copy_ids=list(outcome.saved_copy_ids),
                deleted_to=outcome.deleted_to,
                moved_id=outcome.moved_id,
                attendee_copies=dict(outcome.attendee_copies),
                changed_fields=list(outcome.changed_fields),
                error=error,
            )
        )


_DISPLAY = {
    "root": "Top of Information Store",
    "calendar": "Calendar",
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "recoverableitemsdeletions": "Deletions",
}


def _zone_name(zone: dt.tzinfo) -> str:
    from tzlocal.windows_tz import tz_win

    key = getattr(zone, "key", "UTC")
    return tz_win.get(key, "UTC")


# --- restrictions ----------------------------------------------------------------------------

_FIELD_VALUES = {
    "item:Subject": lambda i: i.f.get("subject", ""),
    "item:Importance": lambda i: i.f.get("importance", "Normal"),
    "item:Sensitivity": lambda i: i.f.get("sensitivity", "Normal"),
    "item:ItemClass": lambda i: "IPM.Appointment",
    "item:LastModifiedTime": lambda i: i.last_modified,
    "item:DateTimeCreated": lambda i: i.item.created,
    "calendar:Start": lambda i: i.f["start"],
    "calendar:End": lambda i: i.f["end"],
    "calendar:UID": lambda i: i.f.get("uid", ""),
    "calendar:CalendarItemType": lambda i: i.type,
    "calendar:IsAllDayEvent": lambda i: bool(i.f.get("all_day")),
    "calendar:IsCancelled": lambda i: bool(i.f.get("cancelled")),
    "calendar:Location": lambda i: i.f.get("location", ""),
    "calendar:LegacyFreeBusyStatus": lambda i: i.f.get("busy", "Busy"),
}


def _only(restriction: Element) -> Element:
    nodes = children(restriction)
    if len(nodes) != 1:
        raise BadRequest("a Restriction holds exactly one expression")
    return nodes[0]


def _value_of(node: Element, instance: Instance) -> tuple[bool, Any]:
    """(exists, value) of the property a FieldURI / ExtendedFieldURI element names."""
    tag = local(node.tag)
    if tag == "FieldURI":
        getter = _FIELD_VALUES.get(node.get("FieldURI") or "")
        if getter is None:
            raise EwsError(
                "ErrorInvalidPropertyRequest",
                f"The property {node.get('FieldURI')} cannot be used here.",
            )
        return True, getter(instance)
    if tag == "ExtendedFieldURI":
        prop = (instance.f.get("ext") or {}).get(ext_key(dict(node.attrib)))
        return (prop is not None), (prop["value"] if prop is not None else None)
    raise BadRequest(f"unsupported property reference {tag}")


def _constant(node: Element, like: Any) -> Any:
    constant = child(child(node, "FieldURIOrConstant"), "Constant")
    if constant is None:
        raise BadRequest("only constants are supported in comparisons")
    raw = constant.get("Value") or ""
    if isinstance(like, dt.datetime):
        return parse_datetime(raw)
    if isinstance(like, bool):
        return boolean(raw)
    if isinstance(like, int):
        return int(raw)
    return raw


def _matches(expr: Element, instance: Instance) -> bool:
    tag = local(expr.tag)
    if tag == "And":
        return all(_matches(e, instance) for e in children(expr))
    if tag == "Or":
        return any(_matches(e, instance) for e in children(expr))
    if tag == "Not":
        return not _matches(_only(expr), instance)
    prop = next((c for c in expr if local(c.tag) in ("FieldURI", "ExtendedFieldURI")), None)
    if prop is None:
        raise BadRequest(f"{tag} without a property")
    exists, value = _value_of(prop, instance)
    if tag == "Exists":
        return exists
    if not exists:
        return False
    if tag == "Contains":
        constant = child(expr, "Constant")
        needle = (constant.get("Value") if constant is not None else "") or ""
        mode = expr.get("ContainmentMode") or "Substring"
        hay = str(value)
        if (expr.get("ContainmentComparison") or "").startswith("IgnoreCase"):
            hay, needle = hay.lower(), needle.lower()
        return {"FullString": hay == needle, "Prefixed": hay.startswith(needle)}.get(
            mode, needle in hay
        )
    other = _constant(expr, value)
    if isinstance(value, str) and isinstance(other, str) and prop.get("PropertySetId") is None:
        value, other = value.lower(), other.lower()  # EWS string comparisons ignore case
    ops = {
        "IsEqualTo": lambda a, b: a == b,
        "IsNotEqualTo": lambda a, b: a != b,
        "IsGreaterThan": lambda a, b: a > b,
        "IsGreaterThanOrEqualTo": lambda a, b: a >= b,
        "IsLessThan": lambda a, b: a < b,
        "IsLessThanOrEqualTo": lambda a, b: a <= b,
    }
    if tag not in ops:
        raise BadRequest(f"unsupported restriction {tag}")
    return bool(ops[tag](value, other))
