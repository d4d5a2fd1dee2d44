"""The forward planner: a pure function from (suite events, links, meetings) to actions.

Deciding is separate from doing (like vdirsyncer's sync core): :func:`plan_mailbox` reads
plain data and returns small action objects; :mod:`calsync.oa.store` applies them in one
transaction per mailbox. Rules:

- an event already linked (by suite id, or by meeting identity when the suite gave the item a
  new id, or by calsync's marker when it came back with a new id and a new iCalUId, E11: see
  below) is updated only when its mapped content hash changed, and only from the copy of
  the mailbox that owns the meeting (one meeting = one OA schedule; no ping-pong between the
  organiser's and the attendees' copies);
- an event whose meeting another mailbox already linked gets a link, not a second schedule;
- a new meeting creates one schedule;
- a link whose event is gone from the window (deleted, moved out, or now filtered out) is
  dropped; the store deletes the schedule only when no link is left and this integration
  created it (E2, E17). Links outside the window read are never touched;
- an event that could not be read or mapped fails alone; its link (if any) is kept.

Re-linking (E11): a moved or re-read event keeps its iCalUId on every suite (Graph's immutable
id even survives moves between calendars): its link is found by meeting identity. An event
calsync created also carries calsync's marker (``calsync:<integration>:<schedule id>``); with
``marker_prefix`` (``calsync:<integration>:``) an event whose suite id and identity are both
unknown takes over the link of the schedule its marker names, if that link's own item is gone
(not in a full read; removed or outside the window in partial mode). Its new identity then
re-keys the meeting (``Update.rekey_from``), unless another meeting already has it.

Partial mode (``removed`` given: an incremental read, E7): ``items`` are only the events that
changed and ``removed`` the suite ids that left the window. Changed events are planned as
above; a removed id's link is dropped by the same rule (in the window, not kept by another
item); every other link is left alone, since its event did not change. A changed event takes
over another link of its meeting by identity only when that link's own item is gone (removed,
or outside the window); otherwise it is a second copy in the mailbox and is skipped, as a full
read would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from calsync.model import ScheduleData, SuiteEvent, Window


@dataclass(frozen=True, slots=True)
class LinkRow:
    id: int
    mailbox: str
    suite_id: str
    identity_key: str
    schedule_id: int
    change_key: str = ""
    content_hash: str = ""
    source_hash: str = ""
    event_start_utc: dt.datetime | None = None
    event_end_utc: dt.datetime | None = None
    event_start_date: dt.date | None = None
    event_end_date: dt.date | None = None

    def in_window(self, window: Window) -> bool:
        """Whether the suite's read of ``window`` covers the event as last seen. The UTC
        extent decides when known (all-day events too: the suite places them at midnight in
        their own zone, so one near the window's edge may be read or not, whatever its dates
        say); dates only for links stored without it."""
        if self.event_start_utc is not None:
            start = self.event_start_utc.replace(tzinfo=dt.UTC)  # the OA stores naive UTC
            end = self.event_end_utc.replace(tzinfo=dt.UTC) if self.event_end_utc else start
            return window.overlaps(start, end)
        if self.event_start_date is not None:
            return window.overlaps(None, None, self.event_start_date, self.event_end_date)
        return False  # extent unknown: never delete on a guess


@dataclass(frozen=True, slots=True)
class MeetingRow:
    id: int
    identity_key: str
    schedule_id: int
    owner_mailbox: str
    content_hash: str


@dataclass(slots=True)
class Prepared:
    """An event after filtering and mapping: ``data`` is set unless skipped or failed.

    ``unmapped``: not mapped, because its link's ``source_hash`` says it was read exactly so
    before (calsync.sync.forward): ``hash`` is then that link's content hash, which is what
    mapping it would give. The planner finds it unchanged; any action it would plan for it
    instead makes the caller map it and plan again."""

    event: SuiteEvent
    data: ScheduleData | None = None
    skip: str | None = None
    error: str | None = None
    owner_mailbox: str = ""
    notes: list[str] = field(default_factory=list)  # worth a sync-log line when written
    source_hash: str = ""  # of the event and the mapping context; "" when not known
    unmapped: bool = False
    _hash: str | None = field(default=None, repr=False, compare=False)

    @property
    def hash(self) -> str:
        """The content hash of ``data`` (computed once: planning and writing ask for it
        several times per event)."""
        if self._hash is None:
            self._hash = self.data.content_hash() if self.data else ""
        return self._hash


@dataclass(slots=True)
class Create:
    item: Prepared


@dataclass(slots=True)
class LinkTo:
    """Link this mailbox's copy to a meeting another mailbox already brought in."""

    item: Prepared
    meeting: MeetingRow
    write_schedule: bool
    take_ownership: bool


@dataclass(slots=True)
class Update:
    item: Prepared
    link: LinkRow
    meeting: MeetingRow | None
    write_schedule: bool
    take_ownership: bool = False
    rekey_from: str | None = None  # the meeting's old identity, re-keyed to the event's (E11)

    @property
    def relinked(self) -> bool:
        return self.link.suite_id != self.item.event.suite_id


@dataclass(slots=True)
class Drop:
    link: LinkRow
    reason: str


@dataclass(slots=True)
class Skip:
    item: Prepared


@dataclass(slots=True)
class Fail:
    item: Prepared


Action = Create | LinkTo | Update | Drop | Skip | Fail


@dataclass(slots=True)
class MailboxPlan:
    mailbox: str
    actions: list[Action] = field(default_factory=list)
    unchanged: int = 0

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


Extent = tuple[dt.datetime | None, dt.datetime | None, dt.date | None, dt.date | None]


def event_extent(event: SuiteEvent) -> Extent:
    """(start, end) as naive UTC and (start date, end date) of an event, as links store them.
    An all-day event's UTC extent is midnight to midnight in its own zone: where the suite
    places it when it answers a window read."""

    def naive(value: dt.datetime | None) -> dt.datetime | None:
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value else None

    if event.all_day and event.start_date is not None:
        import zoneinfo

        try:
            zone: dt.tzinfo = zoneinfo.ZoneInfo(event.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            zone = dt.UTC
        last = event.end_date or event.start_date + dt.timedelta(days=1)
        start = dt.datetime.combine(event.start_date, dt.time(), zone)
        end = dt.datetime.combine(last, dt.time(), zone)
        return naive(start), naive(end), event.start_date, event.end_date
    return naive(event.start), naive(event.end), event.start_date, event.end_date


def _extent_differs(link: LinkRow, event: SuiteEvent) -> bool:
    def strip(value: dt.datetime | None) -> dt.datetime | None:
        return value.replace(tzinfo=None) if value else None

    stored = (
        strip(link.event_start_utc),
        strip(link.event_end_utc),
        link.event_start_date,
        link.event_end_date,
    )
    return stored != event_extent(event)


def plan_mailbox(
    mailbox: str,
    items: list[Prepared],
    links: list[LinkRow],
    meetings: dict[str, MeetingRow],
    window: Window,
    in_scope_mailboxes: frozenset[str] | set[str],
    removed: Iterable[str] | None = None,
    marker_prefix: str | None = None,
) -> MailboxPlan:
    """Plan one mailbox's run. ``meetings`` maps identity keys to meetings of this
    integration (for every identity among ``items`` and ``links``). ``removed`` (suite ids)
    switches to partial mode: ``items`` are the changed events only; ``marker_prefix``
    re-links by calsync's marker (module docstring)."""
    plan = MailboxPlan(mailbox)
    partial = removed is not None
    touched = set(removed or ()) | {item.event.suite_id for item in items}
    by_suite = {link.suite_id: link for link in links}
    by_identity: dict[str, LinkRow] = {}
    by_schedule: dict[int, LinkRow] = {}
    for link in links:
        by_identity.setdefault(link.identity_key, link)
        by_schedule.setdefault(link.schedule_id, link)
    read_ids = {item.event.suite_id for item in items}
    gone = set(removed or ())

    def by_marker(event: SuiteEvent) -> LinkRow | None:
        """The link of the schedule calsync's marker names, if its own item is gone."""
        key = event.calsync_key or ""
        if not marker_prefix or not key.startswith(marker_prefix):
            return None
        number = key[len(marker_prefix) :]
        link = by_schedule.get(int(number)) if number.isdigit() else None
        if link is None or link.suite_id in read_ids:
            return None
        if partial and link.suite_id not in gone and link.in_window(window):
            return None  # unchanged, still there: this is another item
        return link

    kept: set[int] = set()
    planned: set[str] = set()
    dropped_because: dict[int, str] = {}

    def owns(meeting: MeetingRow | None) -> tuple[bool, bool]:
        """(may write content, takes ownership over an owner no longer in scope)."""
        if meeting is None or meeting.owner_mailbox == mailbox:
            return True, False
        if meeting.owner_mailbox not in in_scope_mailboxes:
            return True, True
        return False, False

    for item in items:
        event = item.event
        if item.error is not None:
            plan.actions.append(Fail(item))
            if event.suite_id in by_suite:
                kept.add(by_suite[event.suite_id].id)
            continue
        if item.skip is not None:
            plan.actions.append(Skip(item))
            if event.suite_id in by_suite:
                dropped_because[by_suite[event.suite_id].id] = f"now filtered out: {item.skip}"
            continue
        identity = event.identity_key
        if identity in planned:
            item.skip = "the same meeting appears twice in this mailbox; linked once"
            plan.actions.append(Skip(item))
            continue
        link = by_suite.get(event.suite_id)
        rekey_from = None
        if link is None and identity not in by_identity and identity not in meetings:
            link = by_marker(event)
            if link is not None and link.identity_key != identity:
                rekey_from = link.identity_key
        if link is None:
            link = by_identity.get(identity)
            if (
                partial
                and link is not None
                and link.suite_id not in touched
                and link.in_window(window)
            ):
                # its own event is still there, unchanged: this is a second copy
                item.skip = "the same meeting appears twice in this mailbox; linked once"
                plan.actions.append(Skip(item))
                continue
        planned.add(identity)
        if link is not None and link.id in kept:
            link = None
        if link is not None:
            kept.add(link.id)
            meeting = meetings.get(link.identity_key)
            may_write, take = owns(meeting)
            content_changed = may_write and (meeting is None or meeting.content_hash != item.hash)
            bookkeeping = (
                link.suite_id != event.suite_id
                or link.change_key != event.change_key
                or link.content_hash != item.hash
                or link.source_hash != item.source_hash  # so the next read need not map it
                or _extent_differs(link, event)
            )
            if content_changed or bookkeeping:
                plan.actions.append(
                    Update(item, link, meeting, content_changed, take, rekey_from=rekey_from)
                )
            else:
                plan.unchanged += 1
            continue
        meeting = meetings.get(identity)
        if meeting is not None:
            may_write, take = owns(meeting)
            plan.actions.append(
                LinkTo(item, meeting, may_write and meeting.content_hash != item.hash, take)
            )
            continue
        plan.actions.append(Create(item))

    for link in links:
        if partial and link.suite_id not in touched:
            continue  # its event did not change
        # a link whose event this read returned but filtered out is gone whatever its dates
        if link.id not in kept and (link.id in dropped_because or link.in_window(window)):
            reason = dropped_because.get(link.id, "no longer in the mailbox's calendar")
            plan.actions.append(Drop(link, reason))
    return plan
