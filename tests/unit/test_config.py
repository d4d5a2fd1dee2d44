from pathlib import Path

import pytest

from calsync.config import load_integrations, parse_integration
from calsync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
name: HQ
type: office365_cn
connection_id: o365_hq
window_days: 5
schedule: "*/30 * * * *"
timezone: China Standard Time
"""


def parse(text: str, name: str = "hq.yaml"):
    return parse_integration(Path(name), text, display=f"include/integrations/{name}")


def test_minimal_config_gets_sensible_defaults():
    config = parse(GOOD)
    assert config.id == "hq" and config.dag_id == "calsync_hq"
    assert config.timezone == "Asia/Shanghai"  # Windows name mapped through CLDR
    assert config.office365 is not None and config.office365.page_size == 100
    assert config.binding.field == "email" and config.forward and not config.reverse


def test_shipped_demo_config_validates():
    results = load_integrations(ROOT / "include" / "integrations")
    assert results and all(r.error is None for r in results), [str(r.error) for r in results]


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            GOOD.replace("window_days: 5", "window_days: 0"),
            "window_days",
            "greater than or equal to 1",
        ),
        (
            GOOD.replace("window_days: 5", "window_days: 16"),
            "window_days",
            "less than or equal to 15",
        ),
        (GOOD.replace("office365_cn", "lotus_notes"), "type", "office365_global"),
        (GOOD.replace("*/30 * * * *", "*/30 * * *  x"), "schedule", "not a cron expression"),
        (GOOD.replace("China Standard Time", "Mars/Olympus"), "timezone", "unknown time zone"),
        (GOOD.replace("connection_id: o365_hq", ""), "connection_id", "Field required"),
        (GOOD + "colour: red\n", "colour", "Extra inputs are not permitted"),
        (GOOD + "client_secret: abc\n", "client_secret", "must not be written in a config file"),
        (GOOD + "office365: {page_size: 5}\n", "office365.page_size", "greater than or equal"),
        (GOOD + "exchange: {server: x}\n", "(top level)", "does not apply"),
        (GOOD + "binding: {field: phone}\n", "binding.field", "unknown HR field"),
        (
            GOOD + "scope: {conditions: [{attribute: salary, value: 1}]}\n",
            "scope.conditions[0].attribute",
            "unknown HR attribute",
        ),
        ("name: [unclosed\n", "line 2, column 1", "invalid YAML"),
        ("- a\n- b\n", None, "expected a mapping"),
        (GOOD + "window_days: 3\n", "window_days", "duplicate key (lines 5 and 8)"),
        (
            GOOD.replace("office365_cn", "alimail_v2")
            + "alimail: {calendar_folder: '"
            + "项" * 201
            + "'}\n",
            "alimail.calendar_folder",
            "at most 200 characters",
        ),
    ],
)
def test_bad_config_names_file_and_field(text, field, message):
    with pytest.raises(ConfigError) as info:
        parse(text)
    error = info.value
    assert error.file == "include/integrations/hq.yaml"
    assert error.field == field
    assert message in str(error)
    assert "abc" not in str(error)


def test_secret_value_never_echoed():
    with pytest.raises(ConfigError) as info:
        parse(GOOD + "office365: {client_secret: Sup3rS3cret}\n")
    assert "Sup3rS3cret" not in str(info.value)
    assert info.value.field == "office365.client_secret"


def test_bad_file_name_is_refused():
    with pytest.raises(ConfigError, match="not a valid integration id"):
        parse(GOOD, name="My HQ.yaml")


def test_one_broken_file_never_hides_the_others(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(GOOD.replace("window_days: 5", "window_days: 99"))
    (tmp_path / "notes.txt").write_text("ignored")
    results = {r.stem: r for r in load_integrations(tmp_path)}
    assert set(results) == {"good", "bad"}
    assert results["good"].config is not None
    assert results["bad"].error is not None and "window_days" in str(results["bad"].error)


def test_presets_and_manual_only():
    assert parse(GOOD.replace('"*/30 * * * *"', "'@daily'")).schedule == "0 0 * * *"
    assert parse(GOOD.replace('"*/30 * * * *"', "null")).schedule is None


def test_batches_one_task_per_user_then_batches():
    config = parse(GOOD + "execution: {per_user_task_limit: 3, batch_size: 2}\n")
    assert config.execution.batches([1, 2, 3]) == [[1], [2], [3]]
    assert config.execution.batches([1, 2, 3, 4, 5]) == [[1, 2], [3, 4], [5]]


@pytest.mark.parametrize(("folder", "kept"), [("'  '", None), ("' 项目 '", "项目"), ("null", None)])
def test_alimail_calendar_folder_blank_is_the_default_calendar(folder, kept):
    text = GOOD.replace("office365_cn", "alimail_v2") + f"alimail: {{calendar_folder: {folder}}}\n"
    config = parse(text)
    assert config.alimail is not None and config.alimail.calendar_folder == kept
