"""docs/reliability.md cannot go stale: each figure of its table is counted here from the
test corpus (data files, test modules read as source: nothing is imported or collected)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
TESTS = ROOT / "tests"
CORPUS = TESTS / "badinput" / "data"
ESCAPE = re.compile(r"^# (Sandbox escape|Resource exhaustion)", re.M)


def table() -> dict[str, tuple[str, str]]:
    """First words of each row's first cell → (count, where)."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] and cells[0] not in ("What is tried", "---"):
            rows[cells[0].split(" (")[0].split(":")[0]] = (cells[1], cells[2])
    return rows


def default_of(source: str, name: str) -> int:
    """``NAME = int(os.environ.get("...", "N"))`` → N."""
    found = re.search(rf'^{name} = int\(os\.environ\.get\("[A-Z_]+", "(\d+)"\)\)', source, re.M)
    assert found, name
    return int(found[1])


def cases_in(path: Path) -> int:
    """Test cases of a module: each test function times its literal parametrize lists and
    the params of the module's parametrized fixtures it takes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fixture_params: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func) == "pytest.fixture":
                    for kw in dec.keywords:
                        if kw.arg == "params" and isinstance(kw.value, ast.List | ast.Tuple):
                            fixture_params[node.name] = len(kw.value.elts)
    total = 0
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        n = 1
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and ast.unparse(dec.func) == "pytest.mark.parametrize":
                values = dec.args[1]
                assert isinstance(values, ast.List | ast.Tuple), ast.unparse(values)
                n *= len(values.elts)
        for arg in node.args.args:
            n *= fixture_params.get(arg.arg, 1)
        total += n
    return total


def test_every_figure_matches_the_corpus():
    rows = table()
    crash = (TESTS / "integration" / "test_crash_trials.py").read_text()
    reverse_crash = (TESTS / "integration" / "test_reverse_crash.py").read_text()
    backends = re.search(r"^BACKENDS = \((.*)\)$", (TESTS / "conftest.py").read_text(), re.M)
    assert backends
    mappings = list((CORPUS / "configs" / "mappings").glob("*.yaml"))
    escapes = [p for p in mappings if ESCAPE.search(p.read_text(encoding="utf-8"))]
    suite_records = json.loads((CORPUS / "graph_suite_events.json").read_text())["pages"]
    sql = (TESTS / "security" / "test_sql_parameters.py").read_text()
    injections = re.search(r"^INJECTIONS = \[\n(.*?)^\]", sql, re.M | re.S)
    assert injections

    expected = {
        "Crash trials, forward sync": default_of(crash, "TRIALS"),
        "Crash trials, reverse drain": default_of(crash, "TRIALS"),
        "Killed reverse drains resumed by another worker": default_of(reverse_crash, "TRIALS")
        * len(backends[1].split(",")),
        "Fault scenarios, Office 365": cases_in(TESTS / "integration" / "test_faults.py"),
        "Fault scenarios, Exchange and Alibaba Mail": cases_in(
            TESTS / "integration" / "test_faults_exchange_alimail.py"
        ),
        "Partial Graph `$batch` failures": len(
            re.findall(
                r"^def test_\w*(sub_request|retries)\w*\(",
                (TESTS / "integration" / "test_graph_batch.py").read_text(),
                re.M,
            )
        ),
        "Bad integration files": len(list((CORPUS / "configs" / "integrations").glob("*.yaml"))),
        "Bad mapping-library changes": len(mappings) - len(escapes),
        "Formula sandbox escapes": len(escapes),
        "Bad manual-trigger confs": len(
            json.loads((CORPUS / "trigger_confs.json").read_text())["cases"]
        ),
        "Bad or odd suite records": sum(len(page) for page in suite_records) - 1,  # one is good
        "Bad OA data": cases_in(TESTS / "badinput" / "test_oa_data.py"),
        "Connectors refusing a server whose CA they were not given": len(
            re.findall(
                r'^    "[a-z_0-9]+": \("',
                (TESTS / "security" / "test_tls_verification.py").read_text(),
                re.M,
            )
        ),
        "SQL injection payloads through sync-log filters and an event subject": len(
            [line for line in injections[1].splitlines() if line.strip()]
        ),
    }
    counts = {}
    for what in expected:
        [count] = [c for row, (c, _) in rows.items() if row.startswith(what)]  # one row each
        counts[what] = int(count)
    assert counts == expected
    for what, (_, where) in rows.items():  # every place named exists
        for path in re.findall(r"`((?:tests|plugins)/[^`]+)`", where):
            assert (ROOT / path).exists(), (what, path)


def test_storm_tests_assert_zero_violations():
    """The 'violations: 0' row holds because every storm test asserts it."""
    [count] = [c for row, (c, _) in table().items() if row.startswith("Retry-After")]
    assert count == "0"
    for name, storms in (("test_faults.py", 3), ("test_faults_exchange_alimail.py", 3)):
        source = (TESTS / "integration" / name).read_text()
        zero = re.findall(r"assert .*violations.*== 0", source)
        assert len(zero) >= storms, name
