"""include/housekeeping.yaml: defaults, errors naming file and field, the time zone rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from calsync.config import parse_integration
from calsync.errors import ConfigError
from calsync.housekeeping import HousekeepingSettings, housekeeping_timezone, load_settings


def test_absent_or_empty_file_gives_the_defaults(tmp_path: Path):
    assert load_settings(tmp_path) == HousekeepingSettings()
    (tmp_path / "housekeeping.yaml").write_text("# nothing set\n")
    defaults = load_settings(tmp_path)
    assert defaults.schedule == "30 3 * * *" and defaults.enabled
    assert defaults.batch_size == 5000 and defaults.sync_log.enabled
    assert defaults.sync_log.retention_days is None  # records are kept unless a retention says
    assert defaults.reverse.retention_days == 7 and defaults.sync_state.retention_days == 30


def test_settings_file_is_read(tmp_path: Path):
    (tmp_path / "housekeeping.yaml").write_text(
        "schedule: '@daily'\ntimezone: China Standard Time\nbatch_size: 2000\n"
        "sync_log: {enabled: false, retention_days: 180}\n"
    )
    settings = load_settings(tmp_path)
    assert settings.schedule == "0 0 * * *"
    assert settings.timezone == "Asia/Shanghai"  # Windows zone names are accepted
    assert settings.batch_size == 2000
    assert not settings.sync_log.enabled and settings.sync_log.retention_days == 180


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("batch_size: 50\n", "batch_size", "greater than or equal to 100"),
        ("schedule: every night\n", "schedule", "not a cron expression"),
        ("sync_log: {retention: 5}\n", "sync_log.retention", "Extra inputs are not permitted"),
        ("reverse: {retention_days: 0}\n", "reverse.retention_days", "greater than or equal"),
        ("timezone: Mars/Olympus\n", "timezone", "unknown time zone"),
        ("- a list\n", None, "expected a mapping"),
        ("schedule: [\n", "line 2", "invalid YAML"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, field: str | None, message: str):
    (tmp_path / "housekeeping.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    assert caught.value.file.endswith("housekeeping.yaml")
    if field is not None:
        assert caught.value.field is not None and caught.value.field.startswith(field)
    assert message in str(caught.value)


def test_time_zone_is_the_integrations_unless_set():
    def config(name: str, zone: str):
        return parse_integration(
            Path(f"{name}.yaml"),
            f"name: {name}\ntype: office365_global\nconnection_id: c\ntimezone: {zone}\n",
        )

    configs = [config("a", "Europe/Berlin"), config("b", "Asia/Tokyo"), config("c", "Asia/Tokyo")]
    assert housekeeping_timezone(HousekeepingSettings(), configs) == "Asia/Tokyo"
    assert housekeeping_timezone(HousekeepingSettings(), configs[:1]) == "Europe/Berlin"
    assert housekeeping_timezone(HousekeepingSettings(), []) == "Asia/Shanghai"
    fixed = HousekeepingSettings(timezone="America/New_York")
    assert housekeeping_timezone(fixed, configs) == "America/New_York"


def test_dag_ids():
    from calsync.airflow.housekeeping_dag import housekeeping_dag_id

    assert housekeeping_dag_id("calsync_oa") == "calsync_housekeeping"
    assert housekeeping_dag_id("branch_oa") == "calsync_housekeeping__branch_oa"
