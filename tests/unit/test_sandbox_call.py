"""calsync's call of a compiled expression gives what Jinja's own TemplateExpression gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2.runtime import Undefined

from calsync.errors import MappingError
from calsync.mapping.sandbox import Sandbox, SourceRecord, Variables, compile_expression

MAPPINGS = Path(__file__).resolve().parents[2] / "include" / "mappings"
RECORDS = [
    {"subject": "周会", "body_text": "议程\n第 2 组", "external_attendees": [], "color": ""},
    {
        "subject": "[no-sync] x",
        "body_text": "",
        "external_attendees": [{"name": "Pat", "email": "pat@example.org"}],
        "is_cancelled": True,
        "all_day": False,
        "sensitivity": "Private",
        "show_as": "free",
        "details": "a\n\n外部参与人 / External attendees: Pat <pat@example.org>",
        "color": "#2F80ED",
    },
]


def shipped_expressions() -> list[str]:
    formulas = yaml.safe_load((MAPPINGS / "formulas.yaml").read_text())["formulas"]
    filters = yaml.safe_load((MAPPINGS / "filters.yaml").read_text())["filters"]
    return [f["expression"] for f in formulas.values()] + [f["condition"] for f in filters.values()]


def jinja_own(env: Sandbox, source: str, src: dict[str, Any], var: dict[str, Any]) -> Any:
    try:
        return env.compile_expression(source, undefined_to_none=False)(
            src=SourceRecord(src), var=Variables(var)
        )
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("source", shipped_expressions())
@pytest.mark.parametrize("src", RECORDS, ids=["plain", "full"])
def test_shipped_expressions_evaluate_as_jinja_does(source: str, src: dict[str, Any]) -> None:
    env = Sandbox(lambda rule, key: f"{rule}:{key}")
    var = {"external_heading": "外部参与人 / External attendees", "color": "", "prefix": "[O] "}
    var |= {"title_pattern": r"(?i)^\s*\[no-sync\]"}
    expression = compile_expression(env, source)
    expected = jinja_own(env, source, src, var)
    try:
        got = expression.evaluate(src, var, "field")
    except MappingError:  # Jinja raised, or gave an Undefined (evaluate raises on those)
        assert isinstance(expected, Undefined) or (
            isinstance(expected, type) and issubclass(expected, Exception)
        )
        return
    assert got == expected


def test_globals_and_filters_resolve_and_calls_do_not_share_state() -> None:
    env = Sandbox(lambda rule, key: f"{rule}:{key}")
    expression = compile_expression(env, "[src.subject | upper, strip_html('<b>x</b>')]")
    assert expression.evaluate({"subject": "ab"}, {}, "f") == ["AB", "x"]
    assert expression.evaluate({"subject": "cd"}, {}, "f") == ["CD", "x"]
    with pytest.raises(MappingError, match="f"):
        expression.evaluate({}, {}, "f")
