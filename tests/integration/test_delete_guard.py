"""The mass-deletion guard (E10) in forward sync: a mailbox that suddenly reads empty, or a run
that would delete more than the configured share, has its deletions held (other actions go
on), a `held` record says why, and a run with confirm_deletes applies them."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import sqlalchemy as sa

from calsync.config import IntegrationConfig
from calsync.oa import schema as t
from tests.integration.conftest import ForwardRunner


def links_by_mailbox(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(sa.select(t.links.c.mailbox)).scalars())


def confirmed_run(forward: ForwardRunner) -> dict[str, int]:
    from calsync.connectors.base import connector_for
    from calsync.oa import store
    from calsync.sync.forward import sync_users

    with forward.engine.connect() as conn:
        users = store.resolve_scope(conn, forward.config.scope, forward.config.binding).users
    run = store.RunInfo(forward.config.id, "test_dag", "confirmed")

    async def go() -> list[Any]:
        async with connector_for(forward.config) as connector:
            return await sync_users(
                forward.engine,
                forward.config,
                forward.library,
                connector,
                users,
                forward.window(),
                run,
                confirm_deletes=True,
            )

    totals: Counter[str] = Counter()
    for result in asyncio.run(go()):
        totals.update(result.counts)
    return dict(totals)


def test_empty_mailbox_holds_its_deletions_until_confirmed(
    forward: ForwardRunner, graph: Any, config: IntegrationConfig
):
    forward()
    mailbox, linked = links_by_mailbox(forward.engine).most_common(1)[0]
    assert linked >= 2
    for event in graph.store.events(mailbox):
        graph.store.delete_event(mailbox, event["id"], deliver=False)
    other = next(m for m in links_by_mailbox(forward.engine) if m != mailbox)
    [first] = [e for e in graph.store.events(other) if e.get("isOrganizer")][:1] or [None]
    if first is not None:  # another user's edit in the same run still goes through
        graph.store.update_event(other, first["id"], {"subject": "still synced"})

    result = forward()
    assert result["totals"].get("held") == linked
    assert result["results"][mailbox].counts.get("deleted", 0) == 0
    assert links_by_mailbox(forward.engine)[mailbox] == linked  # nothing was removed
    with forward.engine.connect() as conn:
        held = conn.execute(sa.select(t.sync_log).where(t.sync_log.c.action == "held")).all()
        titles = set(conn.execute(sa.select(t.schedules.c.title)).scalars())
    assert [(r.mailbox, r.action) for r in held] == [(mailbox, "held")]
    assert "empty calendar" in held[0].message and "confirm_deletes" in held[0].message
    if first is not None:
        assert "still synced" in titles

    again = forward()  # still held: nothing changed in the suite
    assert again["totals"].get("held") == linked

    confirmed = confirmed_run(forward)
    assert confirmed.get("held", 0) == 0
    assert links_by_mailbox(forward.engine)[mailbox] == 0


def test_share_rule_holds_a_large_partial_delete_only(
    forward: ForwardRunner, graph: Any, config: IntegrationConfig
):
    mailbox = "zhangwei@contoso.com"  # the demo calendars give this mailbox 9 linked events
    forward()
    assert links_by_mailbox(forward.engine)[mailbox] >= 8
    singles = [e for e in graph.store.events(mailbox) if e.get("type") == "singleInstance"]
    # one deletion: well under half, applied
    graph.store.delete_event(mailbox, singles[0]["id"], deliver=False)
    result = forward()
    assert result["totals"].get("held", 0) == 0
    assert (
        result["results"][mailbox].counts.get("unlinked", 0)
        + result["results"][mailbox].counts.get("deleted", 0)
        == 1
    )
    # then everything but one event: more than half of what is left, held
    before = links_by_mailbox(forward.engine)[mailbox]
    rest = graph.store.events(mailbox)
    for event in rest[1:]:
        graph.store.delete_event(mailbox, event["id"], deliver=False)
    result = forward()
    held = result["results"][mailbox].counts.get("held", 0)
    assert held >= before // 2 + 1
    assert links_by_mailbox(forward.engine)[mailbox] == before
    with forward.engine.connect() as conn:
        [row] = conn.execute(sa.select(t.sync_log).where(t.sync_log.c.action == "held")).all()
    assert "more than 50%" in row.message


def test_incremental_run_holds_too_and_keeps_its_feed_state(forward: ForwardRunner, graph: Any):
    mailbox = "zhangwei@contoso.com"
    forward.incremental = True
    forward()  # starts the delta round (a full read)
    linked = links_by_mailbox(forward.engine)[mailbox]
    for event in graph.store.events(mailbox):
        graph.store.delete_event(mailbox, event["id"], deliver=False)
    first = forward()
    assert first["results"][mailbox].counts.get("held") == linked
    # the held removals were not consumed from the change feed: they are held again
    second = forward()
    assert second["results"][mailbox].counts.get("held") == linked
    assert links_by_mailbox(forward.engine)[mailbox] == linked
    confirmed_run(forward)
    assert links_by_mailbox(forward.engine)[mailbox] == 0
