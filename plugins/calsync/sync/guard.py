"""The mass-deletion guard (E10): a read that would delete too much of a mailbox is held.

Calendar-sync tools are known for wiping calendars when a suite briefly answers with an empty
or partial calendar (an expired token, a moved folder, a half-migrated mailbox). Per user and
run, calsync holds the deletions — and only the deletions; creates and updates go on — when

- the suite read returned no event at all while at least ``EMPTY_READ_LINKS`` links sit in the
  window ("suddenly empty"), or
- the planned deletions exceed ``delete_count``, or
- with at least ``min_links`` links in the window, they exceed ``delete_share`` of them.

A held run logs one ``held`` record naming the count and the rule; an admin who checked the
mailbox releases them with a manual run and ``confirm_deletes``. The same rules apply to the
OA side in reverse sync (an OA bulk delete).
"""

from __future__ import annotations

from typing import Any

EMPTY_READ_LINKS = 2


def hold_reason(
    deletes: int, links_in_window: int, events_read: int | None, guard: Any
) -> str | None:
    """Why ``deletes`` must be held (None: let them go). ``events_read`` is None for an
    incremental read (only changes were read, so "empty" says nothing)."""
    if deletes <= 0:
        return None
    if events_read == 0 and links_in_window >= EMPTY_READ_LINKS:
        return (
            f"the suite returned an empty calendar while {links_in_window} linked event(s) "
            "are in the window"
        )
    if deletes > guard.delete_count:
        return f"{deletes} deletions exceed the limit of {guard.delete_count} per user and run"
    if links_in_window >= guard.min_links and deletes > guard.delete_share * links_in_window:
        return (
            f"{deletes} of {links_in_window} linked event(s) in the window would be deleted, "
            f"more than {guard.delete_share:.0%}"
        )
    return None


def reverse_hold_reason(deletes: int, linked: int, guard: Any, mailbox: str | None) -> str | None:
    """Why ``deletes`` of OA-deleted schedules must not reach the suite yet (None: let them
    go), for one ``mailbox`` or (None) the whole integration. ``linked``: the schedules
    calsync had linked there before the deletions. The count rule is per user only."""
    if deletes <= 0:
        return None
    where = mailbox or "the integration"
    if mailbox is not None and deletes > guard.delete_count:
        return f"{deletes} OA deletions for {where} exceed the limit of {guard.delete_count}"
    if linked >= guard.min_links and deletes > guard.delete_share * linked:
        return (
            f"{deletes} of {linked} linked schedule(s) of {where} were deleted in the OA, "
            f"more than {guard.delete_share:.0%}"
        )
    return None
