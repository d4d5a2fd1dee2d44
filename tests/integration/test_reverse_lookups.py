"""When reverse sync may create without first looking for calsync's key (one request instead
of two), and when it must look: on every OA database, against the Graph emulator.

A delivery is ``fresh`` only if it is the schedule's first delivery to the integration and no
drain has touched it: a retry after a failure, a delivery taken over from a drain whose lease
lapsed, or a schedule that had an earlier delivery always looks first, so a crash between the
suite write and the link never yields a duplicate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.oa import outbox
from calsync.oa import schema as t
from tests.integration.reverse_helpers import ReverseRunner, deliveries, oa_create, oa_update
from tests.integration.test_reverse_sync import ZHANG, by_subject, reverse_config


@pytest.fixture
def rev_config() -> IntegrationConfig:
    return reverse_config()


def kinds(graph: Any) -> dict[str, int]:
    return dict(graph.stats.snapshot()["by_kind"])


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


def test_a_first_delivery_creates_without_a_lookup(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any
):
    runner = ReverseRunner(seeded_oa, [rev_config])
    oa_create(seeded_oa, "zhangwei", "fresh", attendees=("lina",), room="会议室01")
    oa_create(seeded_oa, "lina", "fresh all-day", all_day=dt.date.today() + dt.timedelta(days=2))
    before = kinds(graph)
    assert runner.counts(runner()) == {"created": 2}
    requests = delta(before, kinds(graph))
    requests.pop("token", None)
    assert requests == {"events_create": 2}  # no events_list: no lookup by key


def test_a_delivery_taken_over_from_a_lapsed_claim_looks_first(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any
):
    """A drain claimed the change, wrote the event and died before recording it; another
    drain takes the change over once the lease has lapsed and finds the event by its key."""
    sid = oa_create(seeded_oa, "zhangwei", "taken over", attendees=("lina",))
    with seeded_oa.begin() as conn:
        outbox.route(conn, [outbox.RouteTarget(rev_config.id, frozenset(range(1, 100)))])
    with seeded_oa.begin() as conn:
        [claimed] = outbox.claim(
            conn, rev_config.id, "died", limit=10, lease=dt.timedelta(seconds=-1)
        )
    assert claimed.fresh  # as the drain that died saw it
    # what the dead drain had written: the event with calsync's key (no transactionId, so
    # only the lookup can find it)
    dead = ReverseRunner(seeded_oa, [rev_config])
    made = dead_drain_write(seeded_oa, rev_config, graph, sid)
    before = kinds(graph)
    assert dead.counts(dead()) == {"created": 1}
    requests = delta(before, kinds(graph))
    assert requests.get("events_list") == 1 and "events_create" not in requests
    assert [e["id"] for e in by_subject(graph, ZHANG, "taken over")] == [made]
    assert [d["status"] for d in deliveries(seeded_oa)] == ["done"]


def dead_drain_write(engine: sa.Engine, config: IntegrationConfig, graph: Any, sid: int) -> str:
    from calsync.connectors.base import CALSYNC_PROPERTY_NAME, CALSYNC_PROPERTY_SET
    from calsync.sync.reverse import calsync_key

    marker = f"String {{{CALSYNC_PROPERTY_SET}}} Name {CALSYNC_PROPERTY_NAME}"
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(microsecond=0)
    event = graph.store.add_event(
        ZHANG,
        {
            "subject": "taken over",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (start + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
            "singleValueExtendedProperties": [{"id": marker, "value": calsync_key(config.id, sid)}],
        },
        deliver=False,
    )
    return str(event["id"])


def test_a_failed_delivery_looks_first_even_after_a_newer_change(
    seeded_oa: sa.Engine,
    rev_config: IntegrationConfig,
    graph: Any,
    monkeypatch: pytest.MonkeyPatch,
):
    """The create reached the suite but its reply was lost: the delivery fails; a newer OA
    edit re-arms it (attempts back to 0), and its retry still looks first, finding the event
    instead of making a second one (Graph's transactionId would hide a second POST here, so
    the lookup itself is asserted)."""
    from calsync.connectors.graph import GraphConnector
    from calsync.errors import ConnectorError

    real = GraphConnector.create_event

    async def lost_reply(self: Any, mailbox: str, event: Any) -> Any:
        await real(self, mailbox, event)
        raise ConnectorError("Graph POST failed: reply lost")

    runner = ReverseRunner(seeded_oa, [rev_config])
    sid = oa_create(seeded_oa, "zhangwei", "lost reply")
    monkeypatch.setattr(GraphConnector, "create_event", lost_reply)
    assert runner.counts(runner()) == {"retry": 1}
    monkeypatch.setattr(GraphConnector, "create_event", real)
    [written] = by_subject(graph, ZHANG, "lost reply")
    oa_update(seeded_oa, sid, location="线上")
    with seeded_oa.begin() as conn:  # routed as the next drain would: re-armed
        outbox.route(conn, [outbox.RouteTarget(rev_config.id, frozenset(range(1, 100)))])
    [row] = deliveries(seeded_oa)
    assert row["attempts"] == 0 and row["last_error"]
    before = kinds(graph)
    assert runner.counts(runner()) == {"created": 1}
    requests = delta(before, kinds(graph))
    assert requests.get("events_list") == 1 and "events_create" not in requests
    assert [e["id"] for e in by_subject(graph, ZHANG, "lost reply")] == [written["id"]]


def test_a_schedule_delivered_before_looks_first(
    seeded_oa: sa.Engine, rev_config: IntegrationConfig, graph: Any
):
    """Linked, then its event deleted in the suite and the link dropped: a later edit
    re-creates it, looking first (the delivery row has been used before)."""
    runner = ReverseRunner(seeded_oa, [rev_config])
    sid = oa_create(seeded_oa, "zhangwei", "again")
    assert runner.counts(runner()) == {"created": 1}
    [event] = by_subject(graph, ZHANG, "again")
    graph.store.delete_event(ZHANG, event["id"], deliver=False)
    with seeded_oa.begin() as conn:
        conn.execute(sa.delete(t.links).where(t.links.c.schedule_id == sid))
    oa_update(seeded_oa, sid, title="again v2")
    before = kinds(graph)
    assert runner.counts(runner()) == {"created": 1}
    assert delta(before, kinds(graph)).get("events_list") == 1
    assert len(by_subject(graph, ZHANG, "again v2")) == 1


def test_the_first_requests_of_a_drain_share_one_request_adapter(
    seeded_oa: sa.Engine,
    rev_config: IntegrationConfig,
    graph: Any,
    monkeypatch: pytest.MonkeyPatch,
):
    """A drain's first deliveries start together; each used to build the hook's request adapter
    (an HTTP client and a credential each) before one was cached, leaving the others open."""
    from calsync.connectors.graph_hook import CloudGraphHook

    built: list[str] = []
    real = CloudGraphHook._build_request_adapter

    def counting(self: Any, *args: Any) -> Any:
        built.append(self.conn_id)
        return real(self, *args)

    monkeypatch.setattr(CloudGraphHook, "_build_request_adapter", counting)
    CloudGraphHook.cached_request_adapters.pop(rev_config.connection_id, None)
    logins = ["zhangwei", "lina", "wangfang", "liuyang", "chenjing", "zhao4"]
    for i in range(12):
        oa_create(seeded_oa, logins[i % len(logins)], f"together {i}")
    runner = ReverseRunner(seeded_oa, [rev_config])
    assert runner.counts(runner()) == {"created": 12}
    assert built == [rev_config.connection_id]
