"""The forward mapping memo (calsync.sync.mapping_memo): a result is reused only for records
that agree on every field the filters and the mapping can read, and never when a formula can
read fields the compiled check cannot list."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calsync.mapping import MappingLibrary
from calsync.mapping.sandbox import Sandbox, compile_expression
from calsync.model import Attendee, OAUser
from calsync.sync.mapping_memo import MappingMemo
from calsync.sync.prepare import PrepareContext, prepare_event
from tests.unit.test_mapping import SHIPPED, add, event, record, write

ALICE = OAUser(1, "alice@contoso.com", "Alice")


def _env() -> Sandbox:
    return Sandbox(lambda rule, value: value)


@pytest.mark.parametrize(
    ("source", "fields", "complete"),
    [
        ("src.subject ~ src['location']", {"subject", "location"}, True),
        ("src.attendees | map(attribute='email') | join(', ')", {"attendees"}, True),
        ("src.start_local.hour", {"start_local"}, True),
        ("src.get('subject')", set(), False),
        ("src[var.name]", set(), False),
        ("src | length", set(), False),
        ("src.items() | list | length", set(), False),
        ("var.x ~ 'y'", set(), True),
    ],
)
def test_which_source_fields_an_expression_reads(
    source: str, fields: set[str], complete: bool
) -> None:
    expression = compile_expression(_env(), source)
    assert set(expression.src_fields) == fields
    assert expression.src_fields_complete is complete


def _ctx(library: MappingLibrary, filters: list[str]) -> PrepareContext:
    variables = {"color": "#2F80ED"}
    return PrepareContext(
        integration_id="o365",
        timezone="Asia/Shanghai",
        color="#2F80ED",
        mapping=library.mapping("office365_forward"),
        filters=library.filters(filters, direction="forward", variables=variables),
        users_by_mailbox={ALICE.mailbox: ALICE},
        rooms_by_mailbox={},
        variables=variables,
    )


def test_copies_of_a_meeting_are_mapped_once() -> None:
    ctx = _ctx(MappingLibrary.load(SHIPPED), ["skip_cancelled", "skip_private"])
    first = prepare_event(event(suite_id="copy-1", extra={"web_link": "https://a/1"}), ALICE, ctx)
    second = prepare_event(event(suite_id="copy-2", extra={"web_link": "https://a/2"}), ALICE, ctx)
    assert ctx.memo is not None and (ctx.memo.misses, ctx.memo.hits) == (1, 1)
    assert first.data == second.data
    other = prepare_event(event(subject="Another meeting"), ALICE, ctx)
    assert other.data is not None and other.data.title == "Another meeting"
    assert ctx.memo.misses == 2
    skipped = prepare_event(event(sensitivity="private"), ALICE, ctx)
    assert skipped.skip is not None and skipped.skip.startswith("filter skip_private")


def test_a_formula_reading_the_whole_record_turns_the_memo_off(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(SHIPPED, lib)
    write(
        lib / "mappings" / "office365_forward.yaml",
        {
            "direction": "forward",
            "fields": {"title": {"formula": "whole"}},
        },
    )
    add(lib, "formulas", {"whole": {"expression": "src.get('extra').web_link"}})
    ctx = _ctx(MappingLibrary.load(lib), [])
    a = prepare_event(event(extra={"web_link": "one"}), ALICE, ctx)
    b = prepare_event(event(extra={"web_link": "two"}), ALICE, ctx)
    assert ctx.memo is not None and ctx.memo.hits == 0
    assert a.data is not None and b.data is not None and a.data.title != b.data.title


def test_errors_are_remembered_as_text_and_stay_per_event(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(SHIPPED, lib)
    write(
        lib / "mappings" / "office365_forward.yaml",
        {"direction": "forward", "fields": {"title": {"formula": "broken"}}},
    )
    add(lib, "formulas", {"broken": {"expression": "src.subject / 0"}})
    ctx = _ctx(MappingLibrary.load(lib), [])
    first = prepare_event(event(suite_id="a"), ALICE, ctx)
    second = prepare_event(event(suite_id="b"), ALICE, ctx)
    assert first.error is not None and first.error == second.error and "title" in first.error
    # a cancelled copy is skipped as cancelled, not failed, whatever the mapping does
    cancelled = prepare_event(event(suite_id="c", is_cancelled=True), ALICE, ctx)
    assert cancelled.skip == "cancelled in the suite" and cancelled.error is None


_text = st.text(alphabet="ab 会<>&", max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(
        st.fixed_dictionaries(
            {
                "subject": _text,
                "location": _text,
                "body": _text,
                "sensitivity": st.sampled_from(["normal", "private"]),
                "attendees": st.lists(
                    st.builds(Attendee, st.sampled_from(["a@x.com", "b@y.com"]), _text),
                    max_size=2,
                ),
                "extra": st.fixed_dictionaries({"web_link": _text}),
            }
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_memo_never_changes_a_result(records: list[dict[str, Any]]) -> None:
    library = MappingLibrary.load(SHIPPED)
    memo = _ctx(library, ["skip_private", "skip_cancelled"])
    fresh = MappingMemo(memo.mapping, memo.filters)
    for values in records:
        rec = record(**values)
        remembered = memo.mapped(rec)
        assert remembered == fresh._compute(rec, memo.variables)


def test_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from calsync.sync import mapping_memo

    monkeypatch.setattr(mapping_memo, "MAX_CHARS", 5_000)
    ctx = _ctx(MappingLibrary.load(SHIPPED), [])
    for i in range(40):
        prepare_event(event(subject=f"meeting {i}", body="x" * 500), ALICE, ctx)
    assert ctx.memo is not None
    assert ctx.memo._chars <= 5_000 and len(ctx.memo._results) < 40
