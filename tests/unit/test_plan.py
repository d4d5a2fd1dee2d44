import datetime as dt

from calsync.model import ScheduleData, SuiteEvent, Window
from calsync.sync.plan import (
    Create,
    Drop,
    Fail,
    LinkRow,
    LinkTo,
    MeetingRow,
    Prepared,
    Skip,
    Update,
    plan_mailbox,
)

WINDOW = Window(dt.date(2026, 12, 1), dt.date(2026, 12, 7), "Asia/Shanghai")
T0 = dt.datetime(2026, 12, 3, 2, tzinfo=dt.UTC)
ME, OTHER = "me@contoso.com", "other@contoso.com"


def event(suite_id="E1", uid="U1", title="Sync", start=T0, change="c1", **kw) -> SuiteEvent:
    return SuiteEvent(
        suite_id=suite_id,
        ical_uid=uid,
        subject=title,
        start=start,
        end=start + dt.timedelta(hours=1),
        change_key=change,
        **kw,
    )


def prepared(ev: SuiteEvent, owner=ME, **kw) -> Prepared:
    data = ScheduleData(
        title=ev.subject,
        start=ev.start,
        end=ev.end,
        all_day=False,
        start_date=None,
        end_date=None,
        timezone="Asia/Shanghai",
        location="",
        details="",
        color="#2F80ED",
        room_id=None,
        creator_id=1,
    )
    return Prepared(ev, data=data, owner_mailbox=owner, **kw)


def link_for(item: Prepared, link_id=1, mailbox=ME, schedule_id=10, **kw) -> LinkRow:
    ev = item.event
    values = {
        "id": link_id,
        "mailbox": mailbox,
        "suite_id": ev.suite_id,
        "identity_key": ev.identity_key,
        "schedule_id": schedule_id,
        "change_key": ev.change_key,
        "content_hash": item.hash,
        "event_start_utc": ev.start.replace(tzinfo=None),
        "event_end_utc": ev.end.replace(tzinfo=None),
    }
    values.update(kw)
    return LinkRow(**values)


def meeting_for(item: Prepared, owner=ME, schedule_id=10) -> MeetingRow:
    return MeetingRow(1, item.event.identity_key, schedule_id, owner, item.hash)


def plan(items, links=(), meetings=(), scope=(ME, OTHER)):
    return plan_mailbox(
        ME, list(items), list(links), {m.identity_key: m for m in meetings}, WINDOW, set(scope)
    )


def test_new_event_creates_one_schedule():
    p = plan([prepared(event())])
    assert [type(a) for a in p.actions] == [Create]


def test_rerun_with_nothing_changed_plans_no_write():
    item = prepared(event())
    p = plan([item], [link_for(item)], [meeting_for(item)])
    assert p.actions == [] and p.unchanged == 1


def test_changed_content_updates_in_place():
    old = prepared(event(title="old"))
    new = prepared(event(title="new", change="c2"))
    p = plan([new], [link_for(old)], [meeting_for(old)])
    (action,) = p.actions
    assert isinstance(action, Update) and action.write_schedule and not action.relinked


def test_change_key_only_touches_the_link_not_the_schedule():
    old = prepared(event())
    new = prepared(event(change="c2"))  # server noise: same content
    (action,) = plan([new], [link_for(old)], [meeting_for(old)]).actions
    assert isinstance(action, Update) and not action.write_schedule


def test_copy_of_a_meeting_another_mailbox_brought_in_is_linked_not_duplicated():
    item = prepared(event(suite_id="E-copy"), owner=OTHER)
    (action,) = plan([item], [], [meeting_for(item, owner=OTHER)]).actions
    assert isinstance(action, LinkTo) and not action.write_schedule


def test_non_owner_copy_never_rewrites_content():
    theirs = prepared(event(title="organiser's version"), owner=OTHER)
    mine = prepared(event(suite_id="E-copy", title="my copy differs"), owner=OTHER)
    p = plan([mine], [link_for(mine)], [meeting_for(theirs, owner=OTHER)])
    assert all(not getattr(a, "write_schedule", False) for a in p.actions)


def test_copy_takes_ownership_when_the_owner_left_the_scope():
    theirs = prepared(event(title="v1"), owner="gone@contoso.com")
    mine = prepared(event(suite_id="E-copy", title="v2"), owner="gone@contoso.com")
    (action,) = plan([mine], [], [meeting_for(theirs, owner="gone@contoso.com")]).actions
    assert isinstance(action, LinkTo) and action.write_schedule and action.take_ownership


def test_item_with_a_new_id_is_relinked_through_its_identity():
    old = prepared(event(suite_id="OLD"))
    moved = prepared(event(suite_id="NEW"))
    (action,) = plan([moved], [link_for(old)], [meeting_for(old)]).actions
    assert isinstance(action, Update) and action.relinked and not action.write_schedule


def test_event_gone_from_the_window_drops_its_link():
    gone = prepared(event())
    (action,) = plan([], [link_for(gone)], [meeting_for(gone)]).actions
    assert isinstance(action, Drop)


def test_links_outside_the_window_are_never_touched():
    far = prepared(event(start=dt.datetime(2027, 1, 20, tzinfo=dt.UTC)))
    assert plan([], [link_for(far)], [meeting_for(far)]).actions == []


def test_filtered_out_event_drops_its_link_with_the_reason():
    item = prepared(event())
    skipped = Prepared(event(), skip="filter skip_private: private events")
    actions = plan([skipped], [link_for(item)], [meeting_for(item)]).actions
    assert [type(a) for a in actions] == [Skip, Drop]
    assert "skip_private" in actions[1].reason


def test_unreadable_event_fails_alone_and_keeps_its_link():
    item = prepared(event())
    broken = Prepared(event(), error="unreadable event: no start")
    actions = plan(
        [broken, prepared(event("E2", "U2"))], [link_for(item)], [meeting_for(item)]
    ).actions
    assert [type(a) for a in actions] == [Fail, Create]


def test_same_meeting_twice_in_one_mailbox_is_linked_once():
    a = prepared(event("A"))
    b = prepared(event("B"))
    actions = plan([a, b]).actions
    assert [type(x) for x in actions] == [Create, Skip]


def test_occurrences_of_a_series_are_distinct_meetings():
    occ = [
        prepared(
            event(
                f"O{i}",
                "SERIES",
                start=T0 + dt.timedelta(days=i),
                original_start=T0 + dt.timedelta(days=i),
            )
        )
        for i in range(3)
    ]
    assert [type(a) for a in plan(occ).actions] == [Create, Create, Create]
    assert len({o.event.identity_key for o in occ}) == 3


MARKER = "calsync:it:"


def test_new_id_and_new_uid_are_relinked_through_calsyncs_marker():
    """E11: an event calsync created, re-read with a new id and a new iCalUId (a copy made by a
    move, say) takes over its schedule's link by the marker and re-keys the meeting."""
    old = prepared(event("E1", "U1", calsync_key=f"{MARKER}10"))
    moved = prepared(event("E9", "U9", calsync_key=f"{MARKER}10"))
    p = plan_mailbox(
        ME, [moved], [link_for(old)], {"U1": meeting_for(old)}, WINDOW, {ME}, None, MARKER
    )
    [action] = p.actions
    assert isinstance(action, Update) and action.relinked
    assert action.link.schedule_id == 10 and action.rekey_from == "U1"
    assert not action.write_schedule  # content unchanged: nothing rewritten


def test_marker_never_takes_a_link_whose_item_is_still_there_or_of_another_integration():
    old = prepared(event("E1", "U1", calsync_key=f"{MARKER}10"))
    copy = prepared(event("E9", "U9", calsync_key=f"{MARKER}10"))
    links, meetings = [link_for(old)], {"U1": meeting_for(old)}
    p = plan_mailbox(ME, [old, copy], links, meetings, WINDOW, {ME}, None, MARKER)
    assert kinds(p) == ["Create"] and p.unchanged == 1  # a real second item, as before
    # partial mode: the linked item did not change, so it is still there
    p = plan_mailbox(ME, [copy], links, meetings, WINDOW, {ME}, [], MARKER)
    assert kinds(p) == ["Create"]
    p = plan_mailbox(ME, [copy], links, meetings, WINDOW, {ME}, ["E1"], MARKER)
    assert kinds(p) == ["Update"]
    other = prepared(event("E9", "U9", calsync_key="calsync:elsewhere:10"))
    p = plan_mailbox(ME, [other], links, meetings, WINDOW, {ME}, None, MARKER)
    assert sorted(kinds(p)) == ["Create", "Drop"]
    # without a prefix (the caller did not ask) the marker is not used
    assert sorted(kinds(plan_mailbox(ME, [copy], links, meetings, WINDOW, {ME}))) == [
        "Create",
        "Drop",
    ]


def kinds(p) -> list[str]:
    return [type(a).__name__ for a in p.actions]
