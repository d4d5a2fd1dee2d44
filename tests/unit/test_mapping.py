"""Mapping library (F16) and data filters (F17): rules, formulas, fixed values, filters, the
shipped include/mappings files, config errors and the formula sandbox."""

from __future__ import annotations

import datetime as dt
import shutil
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calsync.errors import ConfigError, MappingError
from calsync.mapping import FieldMapping, FilterSet, MappingLibrary
from calsync.mapping.records import (
    FORWARD_SOURCE_FIELDS,
    REVERSE_SOURCE_FIELDS,
    forward_record,
    reverse_record,
)
from calsync.model import Attendee, OAUser, SuiteEvent
from tests.deadline import deadline

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "include" / "mappings"
UTC = dt.UTC


# ----------------------------------------------------------------------------- helpers


def event(**overrides: Any) -> SuiteEvent:
    values: dict[str, Any] = {
        "suite_id": "AAMk1",
        "ical_uid": "uid-1",
        "subject": "Weekly review",
        "start": dt.datetime(2024, 3, 1, 1, 0, tzinfo=UTC),
        "end": dt.datetime(2024, 3, 1, 2, 0, tzinfo=UTC),
        "location": "Room 1",
        "organizer": Attendee("Alice@Contoso.com", "Alice", "required", "organizer"),
    }
    values.update(overrides)
    return SuiteEvent(**values)


def record(externals: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    return forward_record(
        event(**overrides),
        timezone="Asia/Shanghai",
        color="#2F80ED",
        external_attendees=externals or [],
    )


@pytest.fixture
def lib_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped library in <tmp>/lib, with <tmp> as working directory so that
    messages name files as lib/...."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "lib"
    shutil.copytree(SHIPPED, target)
    return target


def write(path: Path, content: Any) -> None:
    text = content if isinstance(content, str) else yaml.safe_dump(content, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def mapping_with(lib_dir: Path, fields: dict[str, Any], direction: str = "forward") -> FieldMapping:
    write(lib_dir / "mappings" / "probe.yaml", {"direction": direction, "fields": fields})
    return MappingLibrary.load(lib_dir).mapping("probe")


def add(lib_dir: Path, file: str, entries: dict[str, Any]) -> None:
    """Add entries to rules.yaml / formulas.yaml / filters.yaml of a library copy."""
    path = lib_dir / f"{file}.yaml"
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    content[file].update(entries)
    write(path, content)


def load_error(lib_dir: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        MappingLibrary.load(lib_dir)
    return info.value


@pytest.fixture(scope="module")
def shipped() -> MappingLibrary:
    return MappingLibrary.load(SHIPPED)


# ----------------------------------------------------------------------------- records


def test_forward_source_fields_are_the_documented_set() -> None:
    assert {
        "subject", "body", "body_type", "body_text", "location", "organizer_email",
        "organizer_name", "attendees", "external_attendees", "start_local", "end_local",
        "start_date", "end_date", "all_day", "timezone", "is_cancelled", "sensitivity",
        "show_as", "importance", "categories", "event_type", "color", "extra",
    } == FORWARD_SOURCE_FIELDS  # fmt: skip


def test_reverse_source_fields_are_the_documented_set() -> None:
    assert {
        "schedule_id", "title", "details", "details_text", "location", "room_name",
        "room_email", "start_local", "end_local", "start_date", "end_date", "all_day",
        "timezone", "creator_email", "creator_name", "participants", "color", "is_private",
    } == REVERSE_SOURCE_FIELDS  # fmt: skip


def test_forward_record_times_in_the_integration_zone() -> None:
    rec = record(attendees=[Attendee("Bob@Ext.com", "Bob", "optional", "accepted")])
    assert rec["start_local"] == dt.datetime(2024, 3, 1, 9, 0, tzinfo=UTC).replace(
        tzinfo=rec["start_local"].tzinfo
    )
    assert rec["start_local"].utcoffset() == dt.timedelta(hours=8)
    assert rec["start_date"] is None and rec["all_day"] is False
    assert rec["organizer_email"] == "alice@contoso.com"
    assert rec["attendees"] == [
        {"email": "bob@ext.com", "name": "Bob", "kind": "optional", "response": "accepted"}
    ]
    assert rec["color"] == "#2F80ED" and rec["timezone"] == "Asia/Shanghai"


def test_forward_record_all_day_keeps_dates() -> None:
    rec = record(
        start=None,
        end=None,
        all_day=True,
        start_date=dt.date(2024, 3, 1),
        end_date=dt.date(2024, 3, 2),
    )
    assert rec["start_local"] is None and rec["end_local"] is None
    assert (rec["start_date"], rec["end_date"]) == (dt.date(2024, 3, 1), dt.date(2024, 3, 2))


def test_reverse_record_from_a_schedule_row() -> None:
    rec = reverse_record(
        {
            "id": 7,
            "title": "评审",
            "details": "<p>a &amp; b</p>",
            "start_utc": dt.datetime(2024, 3, 1, 1, 0),  # naive = UTC, as stored
            "timezone": "Asia/Shanghai",
            "room_name": "会议室01",
            "creator_email": "Zhao@Corp.com",
            "participants": [{"email": "X@Y.com", "name": "X", "kind": "external"}],
        }
    )
    assert rec["start_local"].hour == 9
    assert rec["details_text"] == "a & b"
    assert rec["creator_email"] == "zhao@corp.com"
    assert rec["participants"][0] == {
        "email": "x@y.com",
        "name": "X",
        "kind": "external",
        "response": "none",
    }


# ----------------------------------------------------------------------------- spec kinds


def test_spec_copy_collapses_whitespace_of_single_line_fields(lib_dir: Path) -> None:
    mapping = mapping_with(lib_dir, {"title": {"source": "subject"}})
    assert mapping.apply(record(subject="Plan\r\n\tQ3\x00 review")) == {"title": "Plan Q3 review"}
    assert mapping.targets == {"title"}


def test_spec_rule(lib_dir: Path) -> None:
    mapping = mapping_with(lib_dir, {"location": {"rule": "show_as_label", "source": "show_as"}})
    assert mapping.apply(record(show_as="tentative")) == {"location": "暂定 / Tentative"}


def test_spec_formula(lib_dir: Path) -> None:
    mapping = mapping_with(
        lib_dir, {"title": {"formula": "title_with_prefix", "variables": {"prefix": "[O365] "}}}
    )
    assert mapping.apply(record()) == {"title": "[O365] Weekly review"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Fixed place", "Fixed place"), (42, "42"), (None, ""), (True, "true")],
)
def test_spec_fixed_value(lib_dir: Path, value: Any, expected: str) -> None:
    mapping = mapping_with(lib_dir, {"location": {"value": value}})
    assert mapping.apply(record()) == {"location": expected}


def test_color_must_look_like_a_colour(lib_dir: Path) -> None:
    assert mapping_with(lib_dir, {"color": {"value": "#a1B2c3"}}).apply(record()) == {
        "color": "#a1B2c3"
    }
    with pytest.raises(MappingError) as info:
        mapping_with(lib_dir, {"color": {"value": "red"}}).apply(record())
    assert info.value.field == "color"


def test_limits_per_field(lib_dir: Path) -> None:
    mapping = mapping_with(
        lib_dir,
        {"title": {"source": "subject"}, "location": {"source": "location"}},
    )
    out = mapping.apply(record(subject="标" * 10_000, location="x" * 600))
    assert len(out["title"]) == 500 and out["title"].endswith("…")
    assert len(out["location"]) == 500


def test_details_limited_to_one_mebibyte(shipped: MappingLibrary) -> None:
    out = shipped.mapping("office365_forward").apply(record(body="字" * 600_000))
    assert len(out["details"].encode("utf-8")) <= 1_048_576
    assert out["details"].endswith("…")


# ----------------------------------------------------------------------------- rules


RULES = {
    "rules": {
        "tone": {
            "description": "case-insensitive, with default",
            "table": {"Busy": "B", "free": "F", 1: "one"},
            "default": "?",
        },
        "strict": {
            "description": "case-sensitive, no default",
            "table": {"Busy": "B"},
            "case_sensitive": True,
        },
        "empty_default": {"table": {"a": "A"}, "default": None},
    }
}


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("tone", "Busy", "B"),  # hit
        ("tone", "BUSY", "B"),  # case-insensitive hit
        ("tone", "FREE", "F"),
        ("tone", 1, "one"),  # numbers compare as text
        ("tone", "1", "one"),
        ("tone", "oof", "?"),  # miss -> default
        ("strict", "Busy", "B"),
        ("empty_default", "zzz", ""),  # default null -> ""
    ],
)
def test_rule_lookup(lib_dir: Path, rule: str, value: Any, expected: str) -> None:
    add(lib_dir, "rules", RULES["rules"])
    mapping = mapping_with(lib_dir, {"location": {"rule": rule, "source": "show_as"}})
    assert mapping.apply({**record(), "show_as": value}) == {"location": expected}


@pytest.mark.parametrize("value", ["busy", "BUSY", "oof"])
def test_rule_miss_without_default_is_a_mapping_error(lib_dir: Path, value: str) -> None:
    add(lib_dir, "rules", RULES["rules"])
    mapping = mapping_with(lib_dir, {"location": {"rule": "strict", "source": "show_as"}})
    with pytest.raises(MappingError) as info:
        mapping.apply(record(show_as=value))
    assert info.value.field == "location"
    assert "no entry" in info.value.message and value in info.value.message


def test_lookup_inside_a_formula(lib_dir: Path) -> None:
    mapping = mapping_with(lib_dir, {"title": {"formula": "title_with_show_as"}})
    assert mapping.apply(record(show_as="oof")) == {"title": "[外出 / Out of office] Weekly review"}
    assert mapping.apply(record(show_as="busy")) == {"title": "Weekly review"}


# ----------------------------------------------------------------------------- formulas


def test_formula_variables_default_then_field_then_integration(lib_dir: Path) -> None:
    plain = mapping_with(lib_dir, {"title": {"formula": "title_with_prefix"}})
    assert plain.apply(record()) == {"title": "Weekly review"}  # formula default ""
    field = mapping_with(
        lib_dir, {"title": {"formula": "title_with_prefix", "variables": {"prefix": "[F] "}}}
    )
    assert field.apply(record()) == {"title": "[F] Weekly review"}
    assert field.apply(record(), {"prefix": "[I] "}) == {"title": "[I] Weekly review"}


def test_formula_unknown_variable_at_evaluation_is_a_mapping_error(lib_dir: Path) -> None:
    add(lib_dir, "formulas", {"needs_var": {"expression": "var.team ~ ': ' ~ src.subject"}})
    mapping = mapping_with(lib_dir, {"title": {"formula": "needs_var"}})
    with pytest.raises(MappingError) as info:
        mapping.apply(record())
    assert info.value.field == "title"
    assert "unknown variable var.team" in info.value.message
    assert mapping.apply(record(), {"team": "Ops"}) == {"title": "Ops: Weekly review"}


def test_formula_functions(lib_dir: Path) -> None:
    add(
        lib_dir,
        "formulas",
        {
            "when": {"expression": "src.start_local | dateformat('%Y-%m-%d %H:%M')"},
            "tidy": {
                "expression": (
                    "src.subject | regex_replace('\\\\s*\\\\[[^]]*\\\\]\\\\s*', ' ')"
                    " | trim | upper | truncate(12)"
                )
            },
            "who": {"expression": "src.attendees | map(attribute='name') | join(', ')"},
            "fallback": {"expression": "src.location or var.none_text | default('-')"},
        },
    )
    mapping = mapping_with(
        lib_dir,
        {
            "title": {"formula": "tidy"},
            "location": {"formula": "when"},
            "details": {"formula": "who"},
        },
    )
    out = mapping.apply(
        record(
            subject="[ext] quarterly [draft] planning",
            attendees=[Attendee("a@x.com", "Ann"), Attendee("b@x.com", "Ben")],
        )
    )
    assert out == {
        "title": "QUARTERLY P…",
        "location": "2024-03-01 09:00",
        "details": "Ann, Ben",
    }
    fallback = mapping_with(lib_dir, {"location": {"formula": "fallback"}})
    assert fallback.apply(record(location="")) == {"location": "-"}


# ----------------------------------------------------------------------------- shipped mapping


HTML_BODY = """<html><head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<style type="text/css">p { margin: 0 } .x { color: red }</style>
<title>ignored title</title></head>
<body dir="ltr">
<div class="elementToProof">各位好&nbsp;&#x1F600;，</div>
<p>Agenda:&nbsp;Q3 &amp; Q4 budget &lt;draft&gt; &quot;v2&quot;</p>
<script type="text/javascript">alert("pwned"); document.cookie</script>
<ul><li>预算 review 🎉</li><li>Hiring</li></ul>


<p>Thanks,<br>Alice</p>
</body></html>"""


def test_office365_forward_on_a_realistic_event(shipped: MappingLibrary) -> None:
    ev = event(
        subject="  季度预算评审 🎉 Budget review ",
        body=HTML_BODY,
        body_type="html",
        location="会议室01; Teams",
        attendees=[
            Attendee("bob@contoso.com", "Bob"),
            Attendee("carol@partner.example", "Carol 陈"),
            Attendee("dave@vendor.example", ""),
        ],
    )
    externals = [
        {"email": "carol@partner.example", "name": "Carol 陈"},
        {"email": "dave@vendor.example", "name": ""},
    ]
    rec = forward_record(
        ev, timezone="Asia/Shanghai", color="#2F80ED", external_attendees=externals
    )
    out = shipped.mapping("office365_forward").apply(rec, {"color": "#FF8800"})
    assert out["title"] == "季度预算评审 🎉 Budget review"
    assert out["location"] == "会议室01; Teams"
    assert out["color"] == "#FF8800"
    assert out["details"] == (
        "各位好 😀，\n\n"
        'Agenda: Q3 & Q4 budget <draft> "v2"\n\n'
        "预算 review 🎉\n\nHiring\n\n"
        "Thanks,\nAlice\n\n"
        "外部参与人 / External attendees: Carol 陈 <carol@partner.example>, dave@vendor.example"
    )
    for hidden in ("pwned", "cookie", "color: red", "ignored title", "<", "&nbsp;"):
        assert hidden not in out["details"].replace("<draft>", "").replace(
            "<carol@partner.example>", ""
        )


def test_office365_forward_without_externals_and_plain_text(shipped: MappingLibrary) -> None:
    rec = record(body="Line 1\r\n\r\n\r\n\r\nLine 2 &amp; not decoded   ", body_type="text")
    out = shipped.mapping("office365_forward").apply(rec, {"color": "#2F80ED"})
    assert out["details"] == "Line 1\n\nLine 2 &amp; not decoded"
    assert "External" not in out["details"]


def test_color_falls_back_to_the_record_colour(shipped: MappingLibrary) -> None:
    assert shipped.mapping("exchange_forward").apply(record())["color"] == "#2F80ED"


@pytest.mark.parametrize("suite", ["office365", "exchange", "alimail"])
def test_shipped_mappings_per_suite(shipped: MappingLibrary, suite: str) -> None:
    forward = shipped.mapping(f"{suite}_forward")
    reverse = shipped.mapping(f"{suite}_reverse")
    assert forward.direction == "forward"
    assert forward.targets == {"title", "location", "details", "color"}
    assert reverse.direction == "reverse"
    assert reverse.targets == {"subject", "body", "location"}


@pytest.mark.parametrize(
    ("location", "room", "expected"),
    [
        ("3F east", "会议室01", "会议室01 / 3F east"),
        ("", "会议室01", "会议室01"),
        ("会议室01 (3F)", "会议室01", "会议室01 (3F)"),
        ("Online", "", "Online"),
    ],
)
def test_shipped_reverse_mapping(
    shipped: MappingLibrary, location: str, room: str, expected: str
) -> None:
    rec = reverse_record(
        {"title": "评审\n会", "details": "<p>议程</p>", "location": location, "room_name": room}
    )
    out = shipped.mapping("office365_reverse").apply(rec)
    assert out == {"subject": "评审 会", "body": "<p>议程</p>", "location": expected}


def test_prepare_event_uses_the_library(shipped: MappingLibrary) -> None:
    """The contract with the forward engine (calsync.sync.prepare)."""
    from calsync.sync.prepare import PrepareContext, prepare_event

    variables = {"color": "#2F80ED", "title_pattern": r"^\[skip\]"}
    ctx = PrepareContext(
        integration_id="o365",
        timezone="Asia/Shanghai",
        color="#2F80ED",
        mapping=shipped.mapping("office365_forward"),
        filters=shipped.filters(
            ["skip_cancelled", "skip_title_pattern"], direction="forward", variables=variables
        ),
        users_by_mailbox={"alice@contoso.com": OAUser(1, "alice@contoso.com", "Alice")},
        rooms_by_mailbox={},
        variables=variables,
    )
    user = OAUser(1, "alice@contoso.com", "Alice")
    kept = prepare_event(event(attendees=[Attendee("x@ext.com", "X")]), user, ctx)
    assert kept.data is not None and kept.data.title == "Weekly review"
    assert kept.data.details.endswith("External attendees: X <x@ext.com>")
    skipped = prepare_event(event(subject="[skip] me"), user, ctx)
    assert skipped.skip is not None and skipped.skip.startswith("filter skip_title_pattern: ")


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("name", "overrides", "skipped"),
    [
        ("skip_cancelled", {"is_cancelled": True}, True),
        ("skip_cancelled", {}, False),
        ("skip_private", {"sensitivity": "private"}, True),
        ("skip_private", {"sensitivity": "Confidential"}, True),
        ("skip_private", {"sensitivity": "personal"}, False),
        ("skip_private", {}, False),
        ("skip_free", {"show_as": "free"}, True),
        ("skip_free", {"show_as": "busy"}, False),
        ("skip_title_pattern", {"subject": "[no-sync] 1:1"}, True),
        ("skip_title_pattern", {"subject": "  [NO-SYNC] 1:1"}, True),
        ("skip_title_pattern", {"subject": "1:1 [no-sync]"}, False),
        ("skip_all_day", {"all_day": True, "start": None, "end": None}, True),
        ("skip_all_day", {}, False),
    ],
)
def test_forward_filters(
    shipped: MappingLibrary, name: str, overrides: dict[str, Any], skipped: bool
) -> None:
    filters = shipped.filters([name], direction="forward")
    reason = filters.skip_reason(record(**overrides))
    if skipped:
        description = shipped.filter_defs[name].description
        assert reason == f"filter {name}: {description}"
    else:
        assert reason is None


def test_title_pattern_from_the_integration_variables(shipped: MappingLibrary) -> None:
    custom = shipped.filters(["skip_title_pattern"], "forward", {"title_pattern": "私人|午餐"})
    assert custom.skip_reason(record(subject="团队午餐")) is not None
    assert custom.skip_reason(record(subject="[no-sync] x")) is None
    off = shipped.filters(["skip_title_pattern"], "forward", {"title_pattern": ""})
    assert off.skip_reason(record(subject="[no-sync] x")) is None


def test_first_matching_filter_gives_the_reason(shipped: MappingLibrary) -> None:
    filters = shipped.filters(["skip_cancelled", "skip_free", "skip_private"], "forward")
    assert isinstance(filters, FilterSet)
    rec = record(show_as="free", sensitivity="private")
    assert (filters.skip_reason(rec) or "").startswith("filter skip_free: ")
    assert filters.skip_reason(record()) is None


@pytest.mark.parametrize(
    ("schedule", "skipped"),
    [
        ({"title": "Review", "is_private": True}, True),
        ({"title": "[私人] 看牙医"}, True),
        ({"title": "【Private】 dentist"}, True),
        ({"title": "Review [私人]"}, False),
        ({"title": "Review"}, False),
    ],
)
def test_reverse_filter_skip_private_oa(
    shipped: MappingLibrary, schedule: dict[str, Any], skipped: bool
) -> None:
    filters = shipped.filters(["skip_private_oa"], direction="reverse")
    assert (filters.skip_reason(reverse_record(schedule)) is not None) is skipped


def test_a_failing_filter_condition_is_a_mapping_error(lib_dir: Path) -> None:
    add(
        lib_dir,
        "filters",
        {"team": {"direction": "forward", "condition": "src.subject == var.team"}},
    )
    filters = MappingLibrary.load(lib_dir).filters(["team"])
    with pytest.raises(MappingError, match=r"unknown variable var\.team"):
        filters.skip_reason(record())


# ----------------------------------------------------------------------------- references


def test_unknown_mapping_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    library = MappingLibrary.load(Path("include/mappings"))
    with pytest.raises(ConfigError) as info:
        library.mapping("nope")
    assert (info.value.file, info.value.field) == ("include/mappings/mappings", "nope")
    assert str(info.value).startswith("include/mappings/mappings: nope: no such mapping")


def test_filters_unknown_or_wrong_direction(shipped: MappingLibrary) -> None:
    with pytest.raises(ConfigError) as info:
        shipped.filters(["skip_nothing"], direction="forward")
    assert info.value.field == "filters.skip_nothing"
    assert info.value.file.endswith("filters.yaml")
    with pytest.raises(ConfigError) as info:
        shipped.filters(["skip_private_oa"], direction="forward")
    assert info.value.field == "filters.skip_private_oa.direction"


def test_check_refs(shipped: MappingLibrary) -> None:
    assert shipped.check_refs("office365_forward", ["skip_cancelled"], "forward") == []
    assert shipped.check_refs("office365_reverse", ["skip_private_oa"], "reverse") == []
    problems = shipped.check_refs("nope", ["skip_cancelled", "skip_x"], "forward")
    assert problems[0].startswith("unknown mapping 'nope'")
    assert problems[1].startswith("unknown filter 'skip_x'")
    problems = shipped.check_refs("office365_reverse", ["skip_private_oa"], "forward")
    assert problems == [
        "mapping 'office365_reverse' is for reverse sync, not forward",
        "filter 'skip_private_oa' is for reverse sync, not forward",
    ]
    # calsync.config picks the field by looking for "mapping" in the first problem.
    only_filters = shipped.check_refs("office365_forward", ["skip_x"], "forward")
    assert only_filters and "mapping" not in only_filters[0]


# ----------------------------------------------------------------------------- config errors


BAD_FILES = [
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {source: subject\n",
        None,
        "invalid YAML: expected ',' or '}', but got '<stream end>' (line 4, column 1)",
        id="invalid-yaml",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  colour: {source: subject}\n",
        "fields.colour",
        "unknown target field 'colour' for a forward mapping "
        "(allowed: color, details, location, title)",
        id="unknown-target",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: reverse\nfields:\n  title: {source: title}\n",
        "fields.title",
        "unknown target field 'title' for a reverse mapping (allowed: body, location, subject)",
        id="forward-target-in-reverse-mapping",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {source: topic}\n",
        "fields.title.source",
        "unknown source field 'topic' (known: all_day,",
        id="unknown-source",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {rule: nope, source: subject}\n",
        "fields.title.rule",
        "unknown rule 'nope' (known: category_color, importance_label,",
        id="unknown-rule",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  details: {formula: nope}\n",
        "fields.details.formula",
        "unknown formula 'nope' (known: body_with_external_attendees,",
        id="unknown-formula",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  location: {formula: oa_location}\n",
        "fields.location.formula",
        "formula 'oa_location' reads src.room_name, which a forward record does not have",
        id="formula-of-the-other-direction",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {formula: title_with_prefix, "
        "variables: {prefx: x}}\n",
        "fields.title.variables.prefx",
        "formula 'title_with_prefix' has no variable 'prefx' (its variables: prefix)",
        id="unknown-formula-variable",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {source: subject, value: x}\n",
        "fields.title",
        "give exactly one of {source}, {rule, source}, {formula, variables} or {value}; "
        "got source, value",
        id="two-kinds",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {formula: title_with_prefix, value: x}\n",
        "fields.title",
        "give exactly one of {source}, {rule, source}, {formula, variables} or {value}; "
        "got formula, value",
        id="formula-and-value",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {rule: show_as_label}\n",
        "fields.title",
        "a rule needs the source field to look up: add 'source'",
        id="rule-without-source",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {}\n",
        "fields.title",
        "give exactly one of {source}, {rule, source}, {formula, variables} or {value}; "
        "got none of them",
        id="no-kind",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {value: [1, 2]}\n",
        "fields.title.value",
        "expected a single value (text, number, true/false or empty), not a list",
        id="value-not-scalar",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: sideways\nfields:\n  title: {source: subject}\n",
        "direction",
        "Input should be 'forward' or 'reverse'",
        id="bad-direction",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {source: subject}\n  title: {source: location}\n",
        "fields.title",
        "duplicate key (lines 3 and 4)",
        id="duplicate-target",
    ),
    pytest.param(
        "mappings/bad.yaml",
        "direction: forward\nfields:\n  title: {source: subject}\ndescripton: x\n",
        "descripton",
        "unknown key",
        id="misspelt-key",
    ),
    pytest.param(
        "rules.yaml",
        "rules:\n  show_as_label:\n    table:\n      free: a\n      free: b\n",
        "rules.show_as_label.table.free",
        "duplicate key (lines 4 and 5)",
        id="duplicate-rule-entry",
    ),
    pytest.param(
        "rules.yaml",
        "rules:\n  r:\n    table: {Free: a, free: b}\n",
        "rules.r.table.free",
        "same key as 'Free' (the rule is not case-sensitive)",
        id="case-duplicate-rule-entry",
    ),
    pytest.param(
        "rules.yaml",
        "rules:\n  r:\n    table: {a: 1}\n    defualt: x\n",
        "rules.r.defualt",
        "unknown key",
        id="rule-misspelt-key",
    ),
    pytest.param(
        "formulas.yaml",
        "formulas:\n  title_prefix:\n    expression: 'src.subject }'\n",
        "formulas.title_prefix.expression",
        "syntax error: unexpected '}' (line 1)",
        id="formula-syntax-error",
    ),
    pytest.param(
        "formulas.yaml",
        "formulas:\n  f:\n    expression: 'lookup(\"nope\", src.subject)'\n",
        "formulas.f.expression",
        "unknown rule 'nope' in lookup()",
        id="formula-unknown-rule",
    ),
    pytest.param(
        "formulas.yaml",
        "formulas:\n  f:\n    expression: src.subjet\n",
        "formulas.f.expression",
        "unknown source field src.subjet",
        id="formula-unknown-source-field",
    ),
    pytest.param(
        "formulas.yaml",
        "formulas:\n  f:\n    expression: src.subject | shout\n",
        "formulas.f.expression",
        "filter 'shout' is not allowed",
        id="formula-unknown-filter",
    ),
    pytest.param(
        "formulas.yaml",
        "formulas:\n  f:\n    description: no expression\n",
        "formulas.f.expression",
        "Field required",
        id="formula-without-expression",
    ),
    pytest.param(
        "filters.yaml",
        "filters:\n  f:\n    direction: forward\n    condition: src.title == ''\n",
        "filters.f.condition",
        "unknown source field src.title",
        id="filter-field-of-the-other-direction",
    ),
    pytest.param(
        "filters.yaml",
        "filters:\n  f:\n    direction: forward\n    condition: 'src.subject =='\n",
        "filters.f.condition",
        "syntax error: unexpected 'end of template' (line 1)",
        id="filter-syntax-error",
    ),
    pytest.param(
        "filters.yaml",
        "filters:\n  f:\n    condition: src.is_cancelled\n",
        "filters.f.direction",
        "Field required",
        id="filter-without-direction",
    ),
]


@pytest.mark.parametrize(("file", "content", "field", "message"), BAD_FILES)
def test_config_errors_name_file_and_field(
    lib_dir: Path, file: str, content: str, field: str | None, message: str
) -> None:
    write(lib_dir / file, content)
    error = load_error(lib_dir)
    assert error.file == f"lib/{file}"
    assert error.field == field
    assert error.message.startswith(message)
    where = f"lib/{file}: {field}" if field else f"lib/{file}"
    assert str(error).startswith(f"{where}: {message}")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping directory not found"):
        MappingLibrary.load(tmp_path / "absent")


def test_top_level_must_be_a_mapping(lib_dir: Path) -> None:
    write(lib_dir / "filters.yaml", "- skip_cancelled\n")
    assert str(load_error(lib_dir)) == (
        "lib/filters.yaml: expected a mapping of keys at the top level"
    )


# ----------------------------------------------------------------------------- sandbox


ESCAPES = [
    "src.__class__.__mro__",
    "src.__class__",
    "src['__class__']",
    "src['__cla' ~ 'ss__']",
    "().__class__.__base__.__subclasses__()",
    "''.__class__.__mro__[1].__subclasses__()",
    "{}.__class__",
    "cycler.__init__.__globals__",
    "lipsum.__globals__",
    "joiner()",
    "namespace()",
    "dict(a=1)",
    "self",
    "self._TemplateReference__context",
    "config",
    "config.items()",
    "request",
    "request.environ",
    "src | attr('__class__')",
    "src.subject | attr('upper')",
    "src.subject | map('attr', '__class__') | list",
    "[src.subject] | map(attribute='__class__') | list | string",
    "src | selectattr('__class__') | list",
    "(src.attendees | first).__class__",
    "lookup.__globals__",
    "regex_match.__globals__",
    "strip_html.__code__",
    "src.start_local.replace(year=1)",
    "src.start_local.astimezone()",
    "range(10**9)",
    "range(10) | list",
    "(10 ** 100) ** 100",
    "2 ** 100000",
    "'a' * 10**9",
    "'a' * 1000 * 1000 * 1000",
    "[1] * 10**9",
    "[src.body_text] * 2000000",
    "('a' * 1000000) | join('b' * 1000000)",
    "'x' | replace('', 'y' * 1000000) | replace('', 'y' * 1000)",
    "'{:999999999}'.format(1)",
    "src.subject.format(1)",
    "'%999999999d' % 1",
    "src.subject.center(10**9)",
    "src.subject.ljust(10**9)",
    "src.subject.zfill(10**9)",
    "src.subject.expandtabs(10**9)",
    "src.subject is regex_match('(a+)+$')",
    "src.subject is regex_match('(a|aa)*c')",
    "src.subject is regex_search('.*.*.*.*=')",
    "src.subject | regex_replace('', 'y' * 1000000)",
    "src.nonexistent",
    "var.nonexistent",
    "src.items",
    "(" * 2000 + "1" + ")" * 2000,
    "src.subject }}{{ 7 * 7",
    "src.subject %}{% for x in range(10**9) %}{% endfor %}",
]


@pytest.fixture
def wall_clock() -> Iterator[None]:
    """Fail (instead of hanging) past 10 s; and the attempt itself must stay under 5 s."""
    with deadline(10, 5, "the expression ran for more than 10 s"):
        yield


@pytest.mark.parametrize("expression", ESCAPES)
def test_sandbox_escape_attempts_fail(tmp_path: Path, expression: str, wall_clock: None) -> None:
    lib = tmp_path / "lib"
    shutil.copy(SHIPPED / "rules.yaml", lib / "rules.yaml") if lib.exists() else None
    write(lib / "formulas.yaml", {"formulas": {"probe": {"expression": expression}}})
    write(
        lib / "mappings" / "probe.yaml",
        {"direction": "forward", "fields": {"details": {"formula": "probe"}}},
    )
    try:
        mapping = MappingLibrary.load(lib).mapping("probe")
    except ConfigError as exc:
        assert exc.field == "formulas.probe.expression"
        return
    rec = record(subject="a" * 3000, body="<p>x</p>")
    with pytest.raises(MappingError) as info:
        mapping.apply(rec)
    assert info.value.field == "details"


def test_sandbox_still_allows_ordinary_expressions(lib_dir: Path) -> None:
    add(
        lib_dir,
        "formulas",
        {
            "ok": {
                "expression": (
                    "src.subject.lower().startswith('weekly') and 'a' * 3 ~ (2 ** 10)|string"
                    " ~ src.categories|length|string ~ src.get('location', '')"
                    " ~ (src.start_local.year|string)"
                )
            }
        },
    )
    mapping = mapping_with(lib_dir, {"details": {"formula": "ok"}})
    assert mapping.apply(record(categories=["x", "y"])) == {"details": "aaa10242Room 12024"}


# ----------------------------------------------------------------------------- property


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(max_size=2000),
    body=st.text(max_size=3000),
    body_type=st.sampled_from(["text", "html"]),
    location=st.text(max_size=100),
)
def test_any_text_survives_the_default_mapping(
    shipped: MappingLibrary, subject: str, body: str, body_type: str, location: str
) -> None:
    rec = record(subject=subject, body=body, body_type=body_type, location=location)
    out = shipped.mapping("office365_forward").apply(rec, {"color": "#2F80ED"})
    assert set(out) == {"title", "location", "details", "color"}
    assert len(out["title"]) <= 500 and len(out["location"]) <= 500
    for name in ("title", "location"):
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in out[name])
    assert not any(
        unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" for c in out["details"]
    )
