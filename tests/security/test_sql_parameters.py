"""SQL is built only with bound parameters (issue 7).

1. A source scan of ``plugins/calsync``: SQL text built with an f-string, ``%`` or
   ``.format`` from anything but module constants fails, as does a ``text()`` /
   ``exec_driver_sql()`` / ``execute()`` of a string that is not a literal or a constant —
   except the few listed below, each with the reason it is safe. The scanner is checked
   against injectable snippets, so it cannot pass by finding nothing.
2. Values with SQL metacharacters round-trip harmlessly on every OA database: sync-log page
   filters (user, text, integration, run id) match exactly what the oracle says, and an event
   subject that tries to close a string and drop a table arrives as its own text.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from calsync.oa.seed import seed_demo

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "plugins" / "calsync"
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|BEGIN|WHERE|TRIGGER|VALUES|"
    r"TRANSACTION|KILL|GRANT)\b"
)
CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
RAW_SQL = {"text", "exec_driver_sql", "executescript", "DDL"}
EXECUTE = {"execute", "executemany"}
# (file relative to plugins/calsync, the interpolated expression): why it is safe
ALLOWED = {
    ("oa/db.py", "mode"): "checked against IMMEDIATE / DEFERRED / EXCLUSIVE just before",
    **{
        ("oa/store.py", name): "the schema's own table name (ANALYZE takes no parameters)"
        for name in ("t.meetings.name", "t.links.name")
    },
    ("oa/migrations/versions/0003_reverse_outbox.py", "name"): (
        "loops over the module's constant tuple of trigger names"
    ),
    **{
        ("oa/migrations/versions/0003_reverse_outbox.py", value): (
            "loops over the module's constant tuple of trigger events"
        )
        for value in ("event", "event_sql", "row")
    },
}


def _constant(node: ast.AST) -> bool:
    """A literal, a module constant (UPPER_CASE), or built only from those."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return bool(CONSTANT.match(node.id))
    if isinstance(node, ast.Attribute):
        return bool(CONSTANT.match(node.attr)) or _constant(node.value)
    if isinstance(node, ast.BinOp):
        return _constant(node.left) and _constant(node.right)
    if isinstance(node, ast.JoinedStr):
        return all(_constant(v.value) for v in node.values if isinstance(v, ast.FormattedValue))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
    ):
        return _constant(node.func.value) and all(
            _constant(a) for a in [*node.args, *(k.value for k in node.keywords)]
        )
    return False


def _literal(node: ast.AST, strings: dict[str, str]) -> str:
    """The literal text of a string expression (module string constants resolved)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp):
        return _literal(node.left, strings) + _literal(node.right, strings)
    if isinstance(node, ast.Name):
        return strings.get(node.id, "")
    return ""


def unsafe_sql(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every value interpolated into SQL text that is not a constant,
    and of every non-constant string handed to a raw-SQL call."""
    tree = ast.parse(source)
    strings: dict[str, str] = {}
    for node in tree.body:  # module-level SQL templates, e.g. TEMPLATE = "... {event} ..."
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                strings[target.id] = _literal(node.value, strings)
    found: dict[tuple[int, str], None] = {}
    for node in ast.walk(tree):
        for part in _interpolated(node, strings) + _raw_sql_argument(node):
            if not _constant(part):
                found[(getattr(part, "lineno", 0), ast.unparse(part))] = None
    return list(found)


def _interpolated(node: ast.AST, strings: dict[str, str]) -> list[ast.AST]:
    """The values put into SQL text by an f-string, ``.format`` or ``%`` / ``+``."""
    if isinstance(node, ast.JoinedStr) and SQL_WORDS.search(_literal(node, strings)):
        return [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
    is_format = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    if (
        is_format
        and node.func.attr == "format"  # type: ignore[attr-defined]
        and SQL_WORDS.search(_literal(node.func.value, strings))  # type: ignore[attr-defined]
    ):
        return [*node.args, *(k.value for k in node.keywords)]  # type: ignore[attr-defined]
    is_glue = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add)
    if is_glue and SQL_WORDS.search(_literal(node, strings)):
        return [p for p in (node.left, node.right) if not _literal(p, strings)]  # type: ignore[attr-defined]
    return []


def _raw_sql_argument(node: ast.AST) -> list[ast.AST]:
    """The SQL handed to ``text()``, ``exec_driver_sql()``, ``DDL()``, ``executescript()``
    (a literal or a constant, else reported) or built in the call to ``execute()``."""
    if not isinstance(node, ast.Call) or not node.args:
        return []
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    argument = node.args[0]
    if name in RAW_SQL and isinstance(argument, ast.JoinedStr):
        return [v.value for v in argument.values if isinstance(v, ast.FormattedValue)]
    if name in RAW_SQL and not isinstance(argument, ast.Constant):
        return [argument]
    building = isinstance(argument, ast.JoinedStr | ast.BinOp) or (
        isinstance(argument, ast.Call)
        and isinstance(argument.func, ast.Attribute)
        and argument.func.attr == "format"
    )
    return [argument] if name in EXECUTE and building else []


@pytest.mark.parametrize(
    "snippet",
    [
        "conn.execute(sa.text(f\"SELECT * FROM oa_users WHERE login_name = '{login}'\"))",
        'conn.exec_driver_sql("DELETE FROM calsync_links WHERE id = %s" % link_id)',
        "q = \"SELECT * FROM calsync_sync_log WHERE title LIKE '%{}%'\".format(needle)",
        'conn.execute(sa.text("UPDATE oa_schedules SET title = \'" + title + "\'"))',
        "cur.execute(f'PRAGMA {pragma}')",
        "conn.exec_driver_sql(statement_from_user)",
        'TEMPLATE = "DROP TABLE {table}"\nconn.exec_driver_sql(TEMPLATE.format(table=name))',
    ],
)
def test_the_scanner_finds_sql_built_from_values(snippet: str):
    assert unsafe_sql(snippet), snippet


def test_the_scanner_accepts_bound_parameters_and_constants():
    ok = (
        'conn.execute(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": NAME, "t": 5})\n'
        "conn.execute(sa.select(t.users).where(t.users.c.login_name == login))\n"
        "stmt = sa.delete(t.links).where(t.links.c.id.in_(ids))\nconn.execute(stmt)\n"
        'cur.execute(f"PRAGMA busy_timeout = {TIMEOUT_S * 1000}")\n'
        'log.info("SELECT took %s s", elapsed)\n'
    )
    assert unsafe_sql(ok) == []


def test_calsync_builds_sql_only_with_bound_parameters():
    found = []
    allowed_seen = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, expression in unsafe_sql(path.read_text(encoding="utf-8")):
            if (rel, expression) in ALLOWED:
                allowed_seen.add((rel, expression))
            else:
                found.append(f"plugins/calsync/{rel}:{line}: {expression}")
    assert found == [], "SQL text built from values (bind them instead):\n" + "\n".join(found)
    assert allowed_seen == set(ALLOWED), "stale entries in ALLOWED: remove them"


# --- metacharacters round-trip harmlessly ------------------------------------------------------

INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE calsync_sync_log; --",
    '" OR ""="',
    "%",
    "_",
    "\\",
    "%' OR 1=1 #",
    "1; DELETE FROM oa_users",
    "周会' UNION SELECT login_name FROM oa_users --",
]


@pytest.mark.integration
def test_log_filters_with_sql_metacharacters_match_exactly(oa_engine: sa.Engine):
    from calsync.airflow.ui.queries import LogFilter, Paging, query_log
    from tests.integration.synclog_data import seed_sync_log

    seed_demo(oa_engine)
    seeded = seed_sync_log(oa_engine, count=80)
    with oa_engine.connect() as conn:
        users_before = conn.execute(sa.select(sa.func.count()).select_from(t.users)).scalar()
        for value in INJECTIONS:
            for field in ("user", "text", "integration", "run_id"):
                page = query_log(conn, LogFilter(**{field: value}), Paging(1, 200))
                expected = seeded.match(**{field: value})
                assert page.total == len(expected), (field, value)
                assert [r.id for r in page.records] == [r["id"] for r in expected], (field, value)
        log_rows = conn.execute(sa.select(sa.func.count()).select_from(t.sync_log)).scalar()
        users_after = conn.execute(sa.select(sa.func.count()).select_from(t.users)).scalar()
    assert log_rows == len(seeded.rows) and users_after == users_before


@pytest.mark.integration
def test_an_event_subject_with_sql_arrives_as_text(
    oa_engine: sa.Engine, config: Any, graph: Any
) -> None:
    from tests.integration.conftest import TODAY, ForwardRunner

    seed_demo(oa_engine)
    subject = 'Robert\'); DROP TABLE oa_schedules; -- 100% _x_ \\ "q" `b` ；周会'
    body = "<p>'; DELETE FROM calsync_links WHERE '1'='1</p>"
    graph.store.add_event(
        "lina@contoso.com",
        {
            "subject": subject,
            "body": {"contentType": "html", "content": body},
            "location": {"displayName": "Room ' OR 1=1 --"},
            "start": {"dateTime": f"{TODAY}T10:00:00", "timeZone": "Asia/Shanghai"},
            "end": {"dateTime": f"{TODAY}T11:00:00", "timeZone": "Asia/Shanghai"},
        },
    )
    result = ForwardRunner(oa_engine, config)(only=["lina@contoso.com"])
    assert not [r.error for r in result["results"].values() if r.error]
    with oa_engine.connect() as conn:
        row = conn.execute(
            sa.select(t.schedules.c.title, t.schedules.c.location, t.schedules.c.details).where(
                t.schedules.c.title == subject
            )
        ).one()
        links = conn.execute(sa.select(sa.func.count()).select_from(t.links)).scalar()
        logged = conn.execute(
            sa.select(t.sync_log.c.title).where(t.sync_log.c.title == subject)
        ).scalars()
        assert list(logged) == [subject]
    assert row.location == "Room ' OR 1=1 --"
    assert "'; DELETE FROM calsync_links WHERE '1'='1" in row.details
    assert links == result["totals"]["created"] >= 1  # nothing deleted behind our back
    with oa_engine.connect() as conn:  # the OA is intact: every table still answers
        for table in (t.schedules, t.links, t.users, t.sync_log):
            conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
