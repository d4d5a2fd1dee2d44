"""Integration configuration: one YAML file per integration under ``include/integrations/``.

The typed model below is the whole contract of such a file (F1–F15). It holds settings only:
every credential lives in the Airflow connection named by ``connection_id`` (F15), and a key
that looks like a secret is refused with a message that says so.

Errors are :class:`calsync.errors.ConfigError` naming the file and the field path, e.g.
``include/integrations/hq.yaml: window_days: Input should be less than or equal to 15``.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calsync import yamlfast
from calsync.errors import ConfigError
from calsync.oa.schema import BINDING_FIELDS, HR_ATTRIBUTES

SuiteType = Literal["office365_global", "office365_cn", "exchange", "alimail_v2"]
Direction = Literal["forward", "reverse", "both"]
CONFIG_SUFFIXES = (".yaml", ".yml")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
# Keys that would put a credential into a YAML file (F15); matched on the key name.
SECRET_KEY_PATTERN = re.compile(
    r"(secret|password|passwd|pwd|token|api_?key|private_?key|credential)", re.IGNORECASE
)
SCHEDULE_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}
MANUAL_RANGE_DAYS = 15  # F10: a manual range lies within today ± 15 days


def resolve_timezone(name: str) -> str:
    """An IANA zone name for ``name``, which may also be a Windows zone name (CLDR table)."""
    from tzlocal.windows_tz import win_tz

    candidate = win_tz.get(name, name)
    try:
        zoneinfo.ZoneInfo(candidate)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as Asia/Shanghai)"
        ) from exc
    return candidate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Binding(_Strict):
    """F4: which HR-card field holds the mailbox; optionally a login name plus a domain."""

    field: str = "email"
    domain: str | None = None

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if value not in BINDING_FIELDS:
            raise ValueError(f"unknown HR field {value!r}; one of {', '.join(BINDING_FIELDS)}")
        return value

    @field_validator("domain")
    @classmethod
    def _plain_domain(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", value):
            raise ValueError(f"not a mail domain: {value!r}")
        return value.lower() if value else None

    def mailbox_for(self, raw: str | None) -> str | None:
        """The mailbox address for an HR field value, or None when it yields none (F22)."""
        value = (raw or "").strip()
        if not value:
            return None
        if self.domain:
            value = value.split("@", 1)[0] + "@" + self.domain
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            return None
        return value.lower()


class ScopeCondition(_Strict):
    """One HR-attribute test of the user scope (F7)."""

    attribute: str
    op: Literal["eq", "ne", "in", "not_in", "contains", "startswith"] = "eq"
    value: str | bool | int | list[str | int | bool]

    @field_validator("attribute")
    @classmethod
    def _known_attribute(cls, value: str) -> str:
        if value not in HR_ATTRIBUTES:
            raise ValueError(f"unknown HR attribute {value!r}; one of {', '.join(HR_ATTRIBUTES)}")
        return value

    @model_validator(mode="after")
    def _list_for_in(self) -> ScopeCondition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        return self


class Scope(_Strict):
    """F7: departments and explicit users select (union; both empty = everyone active);
    every condition must then hold; excluded users are removed."""

    departments: list[str] = Field(default_factory=list)
    include_subdepartments: bool = True
    users: list[str] = Field(default_factory=list)  # login names
    exclude_users: list[str] = Field(default_factory=list)
    conditions: list[ScopeCondition] = Field(default_factory=list)


class Office365Params(_Strict):
    """F13. Tenant id, client id and secret live in the `msgraph` Airflow connection."""

    page_size: int = Field(100, ge=10, le=1000)
    request_timeout_s: float = Field(60, gt=0, le=600)


class ExchangeParams(_Strict):
    """F12. The service account (impersonation mode) lives in the Airflow connection."""

    server: str
    access_mode: Literal["impersonation", "user"] = "impersonation"
    domain_auth: bool = False
    check_mailbox_domain: bool = False
    domain: str | None = None
    invitation_mode: Literal["SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"] = "SendToNone"
    delete_mode: Literal["HardDelete", "SoftDelete", "MoveToDeletedItems"] = "MoveToDeletedItems"
    cancellation_mode: Literal["SendToNone", "SendOnlyToAll", "SendToAllAndSaveCopy"] = "SendToNone"
    ca_bundle: str | None = None  # an internal CA to trust; TLS is always verified

    @model_validator(mode="after")
    def _domain_when_checked(self) -> ExchangeParams:
        if self.check_mailbox_domain and not self.domain:
            raise ValueError("check_mailbox_domain needs 'domain'")
        return self


class AlimailParams(_Strict):
    """F14. App id and secret live in the Airflow connection."""

    endpoint: str = "https://alimail-cn.aliyuncs.com"
    # None: the user's default calendar ("my calendar"); a name or id otherwise (its ids are
    # kept per folder name in calsync_calendar_ids, whose column holds 200 characters)
    calendar_folder: str | None = Field(None, max_length=200)
    send_notifications: bool = False

    @field_validator("calendar_folder")
    @classmethod
    def _folder_or_default(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None


class DeleteGuard(_Strict):
    """E10: when deletions are held (calsync.sync.guard); per user and run, both directions."""

    enabled: bool = True
    delete_share: float = Field(0.5, gt=0, le=1)  # of the linked events in the window
    delete_count: int = Field(50, ge=1)
    min_links: int = Field(4, ge=1)  # below this many links the share rule does not apply


class Execution(_Strict):
    """How a run is cut into Airflow tasks (DESIGN: retry unit)."""

    per_user_task_limit: int = Field(200, ge=1, le=1000)  # up to this many users: a task each
    batch_size: int = Field(50, ge=1, le=5000)  # above it: users per mapped task
    concurrency: int = Field(8, ge=1, le=64)  # mailboxes read at once inside a task
    retries: int = Field(2, ge=0, le=10)
    retry_delay_s: int = Field(60, ge=0, le=3600)
    # Reverse sync: one change's delivery is retried with exponential back-off
    # (retry_backoff_s, doubling, at most retry_backoff_max_s) and marked dead after
    # max_attempts; a drain's claim on a change lapses after claim_lease_s.
    max_attempts: int = Field(8, ge=1, le=100)
    retry_backoff_s: float = Field(10, ge=0, le=3600)
    retry_backoff_max_s: float = Field(3600, ge=0, le=86400)
    claim_lease_s: float = Field(300, ge=0.5, le=86400)

    def batches(self, items: list[Any]) -> list[list[Any]]:
        if len(items) <= self.per_user_task_limit:
            return [[item] for item in items]
        size = max(self.batch_size, math.ceil(len(items) / 1000))  # Airflow's max_map_length
        return [items[i : i + size] for i in range(0, len(items), size)]


class IntegrationConfig(_Strict):
    id: str  # the file's stem; also the DAG id's suffix
    enabled: bool = True
    name: str = Field(min_length=1, max_length=200)
    type: SuiteType
    connection_id: str = Field(min_length=1)
    oa_connection_id: str = "calsync_oa"
    binding: Binding = Binding()
    color: str = "#2F80ED"
    direction: Direction = "forward"
    scope: Scope = Scope()
    window_days: int = Field(3, ge=1, le=15)
    schedule: str | None = None  # cron or preset, in `timezone`; None = manual only
    timezone: str = "Asia/Shanghai"
    mapping: str | None = None  # name of include/mappings/mappings/<name>.yaml
    filters: list[str] = Field(default_factory=lambda: ["skip_cancelled"])
    reverse_mapping: str | None = None  # default <suite>_reverse
    reverse_filters: list[str] = Field(default_factory=list)
    # Two-way: who wins when a schedule changed on both sides since the last sync.
    conflict_policy: Literal["oa_wins", "suite_wins", "latest_wins"] = "latest_wins"
    variables: dict[str, str | int | float | bool] = Field(default_factory=dict)
    office365: Office365Params | None = None
    exchange: ExchangeParams | None = None
    alimail: AlimailParams | None = None
    execution: Execution = Execution()
    delete_guard: DeleteGuard = DeleteGuard()
    log_retention_days: int | None = Field(None, ge=1, le=3650)
    tags: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"file name {value!r} is not a valid integration id: use lower-case letters, "
                "digits and underscores"
            )
        return value

    @field_validator("color")
    @classmethod
    def _hex_colour(cls, value: str) -> str:
        if not re.fullmatch(r"#[0-9A-Fa-f]{6}", value):
            raise ValueError(f"not a colour like #2F80ED: {value!r}")
        return value.upper()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return resolve_timezone(value)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "none", "manual"):
            return None
        value = SCHEDULE_PRESETS.get(value.strip(), value.strip())
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(
                f"not a cron expression or preset: {value!r} "
                f"(e.g. '0 2 * * *', '*/30 * * * *', {', '.join(SCHEDULE_PRESETS)})"
            )
        return value

    @model_validator(mode="after")
    def _params_for_type(self) -> IntegrationConfig:
        wanted = {
            "office365_global": "office365",
            "office365_cn": "office365",
            "exchange": "exchange",
            "alimail_v2": "alimail",
        }[self.type]
        for section in ("office365", "exchange", "alimail"):
            if section != wanted and getattr(self, section) is not None:
                raise ValueError(f"section {section!r} does not apply to type {self.type!r}")
        if wanted == "exchange" and self.exchange is None:
            raise ValueError("type 'exchange' needs an 'exchange' section (at least 'server')")
        if wanted == "office365" and self.office365 is None:
            object.__setattr__(self, "office365", Office365Params())
        if wanted == "alimail" and self.alimail is None:
            object.__setattr__(self, "alimail", AlimailParams())
        return self

    @property
    def dag_id(self) -> str:
        return f"calsync_{self.id}"

    @property
    def forward(self) -> bool:
        return self.direction in ("forward", "both")

    @property
    def reverse(self) -> bool:
        return self.direction in ("reverse", "both")

    @property
    def suite_family(self) -> str:
        return "office365" if self.type.startswith("office365") else self.type.split("_")[0]

    @property
    def mapping_name(self) -> str:
        return self.mapping or f"{self.suite_family}_forward"

    @property
    def reverse_mapping_name(self) -> str:
        return self.reverse_mapping or f"{self.suite_family}_reverse"


@dataclass(frozen=True)
class LoadedConfig:
    """The outcome of loading one file: a config, or the error that names file and field."""

    path: Path
    config: IntegrationConfig | None = None
    error: ConfigError | None = None

    @property
    def stem(self) -> str:
        return self.path.stem


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _secret_keys(node: Any, prefix: str = "", seen: set[int] | None = None) -> Iterable[str]:
    # YAML aliases share nodes: visit each once, or a "billion laughs" file (nested aliases,
    # 9**9 paths from 80 lines) would keep the dag-processor walking for hours.
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(key, str) and SECRET_KEY_PATTERN.search(key) and key != "connection_id":
                yield where
            yield from _secret_keys(value, where, seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _secret_keys(value, f"{prefix}[{i}]", seen)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _refuse_duplicate_keys(text: str, where: str) -> None:
    """PyYAML keeps the last of two equal keys silently (``window_days`` twice: the second
    one wins unseen); refuse them, as the mapping files do."""
    from calsync.mapping.loading import _no_duplicates

    node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if node is not None:
        _no_duplicates(node, [], where, set())


def parse_integration(path: Path, text: str, display: str | None = None) -> IntegrationConfig:
    """Validate one integration file's text; raises ConfigError naming file and field."""
    where = display or _display(path)
    try:
        data = yamlfast.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(where, at, f"invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(where, None, "expected a mapping of settings at the top level")
    _refuse_duplicate_keys(text, where)
    if "id" in data:
        raise ConfigError(where, "id", "the integration id is the file name; remove 'id'")
    for key in _secret_keys(data):
        raise ConfigError(
            where,
            key,
            "credentials must not be written in a config file; put them in the Airflow "
            "connection named by 'connection_id'",
        )
    try:
        return IntegrationConfig.model_validate({**data, "id": path.stem})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(
            p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise ConfigError(where, _field_path(loc), msg + more) from None


def check_references(config: IntegrationConfig, library: Any, display: str) -> None:
    """Check the mapping and filter names a config uses against the mapping library."""
    if config.forward:
        problems = library.check_refs(config.mapping_name, list(config.filters), "forward")
        if problems:
            field = "mapping" if "mapping" in problems[0] else "filters"
            raise ConfigError(display, field, "; ".join(problems))
    if config.reverse:
        problems = library.check_refs(
            config.reverse_mapping_name, list(config.reverse_filters), "reverse"
        )
        if problems:
            field = "reverse_mapping" if "mapping" in problems[0] else "reverse_filters"
            raise ConfigError(display, field, "; ".join(problems))


def load_integrations(directory: Path, library: Any | None = None) -> list[LoadedConfig]:
    """Load every integration file in ``directory``, each on its own: one broken file never
    hides the others. With a mapping library, references to mappings/filters are checked.
    Only files directly in ``directory`` count: ``templates/`` (``calsync new``) is not read."""
    results: list[LoadedConfig] = []
    if not directory.is_dir():
        return results
    files = (p for p in directory.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    for path in sorted(files):
        display = _display(path)
        try:
            config = parse_integration(path, path.read_text(encoding="utf-8"), display)
            if library is not None:
                check_references(config, library, display)
            results.append(LoadedConfig(path, config=config))
        except ConfigError as exc:
            results.append(LoadedConfig(path, error=exc))
        except (OSError, UnicodeDecodeError) as exc:
            results.append(
                LoadedConfig(path, error=ConfigError(display, None, f"unreadable: {exc}"))
            )
    return results
