"""The mass-deletion guard's rules (E10), as a pure function."""

from __future__ import annotations

import pytest

from calsync.config import DeleteGuard
from calsync.sync.guard import hold_reason, reverse_hold_reason

GUARD = DeleteGuard()  # 50 %, 50 deletions, share rule from 4 links


@pytest.mark.parametrize(
    ("deletes", "links", "read", "held"),
    [
        (0, 10, 0, None),  # nothing to delete
        (1, 1, 0, None),  # a user's only meeting went: not "suddenly empty"
        (2, 2, 0, "empty calendar"),  # everything gone at once
        (3, 3, None, None),  # incremental read: few links, share rule not applied
        (2, 4, 5, None),  # exactly half: allowed
        (3, 4, 5, "more than 50%"),
        (51, 1000, 900, "exceed the limit of 50"),
        (50, 1000, 900, None),
        (6, 10, None, "more than 50%"),  # incremental read: the share rule still applies
    ],
)
def test_hold_rules(deletes: int, links: int, read: int | None, held: str | None):
    reason = hold_reason(deletes, links, read, GUARD)
    if held is None:
        assert reason is None
    else:
        assert reason is not None and held in reason


def test_limits_are_configurable():
    strict = DeleteGuard(delete_share=0.2, delete_count=3, min_links=2)
    assert hold_reason(4, 100, 90, strict) is not None
    assert hold_reason(1, 2, 1, strict) is not None  # 50 % > 20 %
    assert hold_reason(1, 10, 9, strict) is None


@pytest.mark.parametrize(
    ("deletes", "linked", "mailbox", "held"),
    [
        (0, 10, "a@x", None),
        (3, 6, "a@x", None),  # exactly half of what was linked
        (4, 6, "a@x", "4 of 6 linked schedule(s) of a@x"),
        (3, 3, "a@x", None),  # below min_links: the share rule does not apply
        (51, 1000, "a@x", "exceed the limit of 50"),
        (51, 1000, None, None),  # the count rule is per user, not per integration
        (501, 1000, None, "of the integration"),
    ],
)
def test_reverse_hold_rules(deletes: int, linked: int, mailbox: str | None, held: str | None):
    reason = reverse_hold_reason(deletes, linked, GUARD, mailbox)
    if held is None:
        assert reason is None
    else:
        assert reason is not None and held in reason
