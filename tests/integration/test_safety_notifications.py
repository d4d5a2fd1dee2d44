"""No notification storms (E12) on every suite, in a two-way integration: meeting messages go
out only for real OA changes and only as the integration's mode says, and calsync's own
writes never come back as more writes.

One meeting made in the OA (two attendees and a room) goes through its life: created (one
invitation per attendee), saved in the OA unchanged (nothing), forward runs that read it and
its attendees' copies (nothing: forward sync never writes to the suite), a real OA edit (one
update write in place, the same suite id, one update per attendee; never a delete and a
create), an edit in the suite read back by forward sync (nothing echoed to the suite), and an
OA delete (one delete write, one cancellation per attendee). With the mode that sends nothing
(EWS ``SendToNone``, Alibaba ``send_notifications: false``) the same writes send no message;
Graph has no such switch. The messages are counted by the emulators (Graph per organiser and
kind, EWS one record per message, Alibaba per recipient). The per-mode details (who gets what,
Sent Items copies, delete types) are in ``test_reverse_suites`` and ``test_notifications``.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from tests.integration.conftest import TODAY
from tests.integration.reverse_helpers import ReverseRunner, oa_create, oa_delete, oa_update
from tests.integration.safety_suites import LINA, ORGANISER, Ev, Suite, schedules
from tests.integration.test_incremental_graph import IncrementalRunner

QUIET = {"unchanged", "skipped"}
CASES = [
    ("office365", True),
    ("exchange", True),
    ("exchange", False),
    ("alimail_v2", True),
    ("alimail_v2", False),
]


def delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: now[k] - before[k] for k in now}


@pytest.mark.parametrize(
    ("suite", "notify"), CASES, indirect=["suite"], ids=[f"{k}-{n}" for k, n in CASES]
)
def test_mail_only_for_real_oa_changes_and_only_as_the_mode_says(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
    notify: bool,
) -> None:
    config = suite.config(direction="both", notify=notify)
    forward = IncrementalRunner(oa, config)
    drain = ReverseRunner(oa, [config])
    per_attendee = 3 if notify else 0  # 李娜, 王芳 and the room
    start = dt.datetime.combine(TODAY + dt.timedelta(days=1), dt.time(10),
                                dt.timezone(dt.timedelta(hours=8)))  # fmt: skip
    writes, mail = suite.writes(), suite.mail()

    def changes() -> tuple[dict[str, int], int]:
        return delta(suite.writes(), writes), suite.mail() - mail

    sid = oa_create(oa, "zhangwei", "E12 评审", start, attendees=("lina", "wangfang"),
                    room="会议室01")  # fmt: skip
    assert drain.counts(drain()) == {"created": 1}
    assert changes() == ({"create": 1, "update": 0, "delete": 0}, per_attendee)
    [made] = [e for e in suite.stored(ORGANISER) if e.get("subject") == "E12 评审"]

    oa_update(oa, sid, title="E12 评审")  # an OA save that changes nothing
    assert drain.counts(drain()) in ({}, {"unchanged": 1})
    # forward reads it back (and the attendees' copies where the suite delivers them): the
    # OA schedule takes the suite's view once (the room's name as location, the organiser as a
    # participant, the integration's colour), an OA-side write that goes no further
    assert set(forward()["totals"]) <= QUIET | {"linked", "updated"}
    assert set(forward()["totals"]) <= QUIET
    assert drain.counts(drain()) == {}
    assert changes() == ({"create": 1, "update": 0, "delete": 0}, per_attendee)

    oa_update(oa, sid, title="E12 评审 (moved)")  # a real edit: in place, one update each
    assert drain.counts(drain()) == {"updated": 1}
    assert changes() == ({"create": 1, "update": 1, "delete": 0}, 2 * per_attendee)
    [edited] = [e for e in suite.stored(ORGANISER) if "E12" in str(e.get("subject"))]
    assert edited["id"] == made["id"]
    assert set(forward()["totals"]) <= QUIET | {"updated"}  # the copies read the new title
    assert drain.counts(drain()) == {}

    # an edit in the suite comes into the OA and goes no further
    suite.update(ORGANISER, made["id"], "E12 评审 (suite)")
    mail += suite.mail() - (mail + 2 * per_attendee)  # leave out the suite's own edit mail
    assert forward()["totals"].get("updated") == 1
    assert drain.counts(drain()) == {}
    assert changes() == ({"create": 1, "update": 1, "delete": 0}, 2 * per_attendee)

    oa_delete(oa, sid)
    assert drain.counts(drain()) == {"deleted": 1}
    assert changes() == ({"create": 1, "update": 1, "delete": 1}, 3 * per_attendee)
    assert [e for e in suite.stored(ORGANISER) if "E12" in str(e.get("subject"))] == []


def test_server_noise_writes_nothing_anywhere(
    suite: Suite,  # noqa: F811 - the fixture
    oa: sa.Engine,  # noqa: F811 - the fixture
) -> None:
    """A suite save that changes nothing but the event's version (change key, modification
    time) writes no OA schedule, so nothing goes back to the suite and no mail is sent."""
    config = suite.config(direction="both")
    forward = IncrementalRunner(oa, config)
    drain = ReverseRunner(oa, [config])
    start = dt.datetime.combine(TODAY + dt.timedelta(days=1), dt.time(9))
    made = suite.add(ORGANISER, Ev("E12 noise", start, start + dt.timedelta(hours=1),
                                   attendees=(LINA,), room=True))  # fmt: skip
    assert forward()["totals"].get("created") == 1
    before = schedules(oa)
    [item] = [e for e in suite.stored(ORGANISER) if e["id"] == made]
    suite.update(ORGANISER, made, "E12 noise")  # saved as it was: a new version only
    [touched] = [e for e in suite.stored(ORGANISER) if e["id"] == made]
    versions = ("changeKey", "changekey", "lastModifiedDateTime", "last_modified")
    assert {k for k in item if item[k] != touched.get(k)} <= set(versions)
    assert any(item.get(k) != touched.get(k) for k in versions)  # the version did change
    writes, mail = suite.writes(), suite.mail()
    assert set(forward()["totals"]) <= QUIET
    assert drain.counts(drain()) == {}
    assert schedules(oa) == before  # not even a timestamp written
    assert (suite.writes(), suite.mail()) == (writes, mail)


# fixtures: the suites over their emulators (EWS and Alibaba started once per session)
from tests.integration.safety_suites import oa, suite  # noqa: E402,F401
