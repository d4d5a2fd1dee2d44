"""No notification storms (E12), counted by the Graph emulator (the mail it would have sent):
forward sync never sends mail; reverse sync invites once, updates in place (an update is never a
delete + re-create, so no cancellation and no second invitation), sends nothing for a change
that leaves the event as it is, and cancels once on delete."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.integration.conftest import ForwardRunner
from tests.integration.reverse_helpers import ReverseRunner, oa_create, oa_delete, oa_update
from tests.integration.test_reverse_sync import reverse_config

ZHANG = "zhangwei@contoso.com"


def mail(graph: Any) -> dict[str, int]:
    snap = graph.stats.snapshot()
    return {
        k: sum(snap[k].values()) for k in ("invitations_sent", "updates_sent", "cancellations_sent")
    }


def test_forward_sync_never_sends_mail(forward: ForwardRunner, graph: Any):
    before = mail(graph)
    forward()
    forward()
    assert mail(graph) == before
    mine = [e for e in graph.store.events(ZHANG) if e.get("isOrganizer")]
    graph.store.update_event(ZHANG, mine[0]["id"], {"subject": "changed in the suite"})
    after_edit = mail(graph)  # the suite's own mail for that edit
    forward()
    assert mail(graph) == after_edit  # the forward run that read the edit sent nothing
    # and the two runs before it sent nothing either: only the suite's edit counted
    assert before["invitations_sent"] == after_edit["invitations_sent"]
    assert before["cancellations_sent"] == after_edit["cancellations_sent"]


def test_reverse_sync_mail_follows_the_changes_only(seeded_oa: sa.Engine, graph: Any):
    runner = ReverseRunner(seeded_oa, [reverse_config()])
    base = mail(graph)

    def sent() -> dict[str, int]:
        now = mail(graph)
        return {k: now[k] - base[k] for k in now}

    sid = oa_create(
        seeded_oa, "zhangwei", "E12 meeting", attendees=("lina", "wangfang"), room="会议室01"
    )
    runner()
    assert sent() == {"invitations_sent": 3, "updates_sent": 0, "cancellations_sent": 0}
    # the same content written again (an OA save without changes): nothing goes out
    oa_update(seeded_oa, sid, title="E12 meeting")
    runner()
    assert sent() == {"invitations_sent": 3, "updates_sent": 0, "cancellations_sent": 0}
    # a real edit: one update per attendee, in place
    oa_update(seeded_oa, sid, title="E12 meeting (moved)")
    runner()
    assert sent() == {"invitations_sent": 3, "updates_sent": 3, "cancellations_sent": 0}
    assert len([e for e in graph.store.events(ZHANG) if "E12" in e["subject"]]) == 1
    oa_delete(seeded_oa, sid)
    runner()
    assert sent() == {"invitations_sent": 3, "updates_sent": 3, "cancellations_sent": 3}
