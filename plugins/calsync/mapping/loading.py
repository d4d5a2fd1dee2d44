"""Reading one YAML file of include/mappings/ into a pydantic model; every problem becomes a
ConfigError naming the file (as displayed) and the field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from calsync import yamlfast
from calsync.errors import ConfigError

MAX_FILE_BYTES = 1_000_000

M = TypeVar("M", bound=BaseModel)


def display(path: Path) -> str:
    """The path as shown in messages: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _key(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


def _no_duplicates(node: yaml.Node, path: list[str], where: str, seen: set[int]) -> None:
    """PyYAML keeps the last of two equal keys silently; refuse them instead."""
    if id(node) in seen:  # an alias: already checked (and no exponential walk)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = _key(key_node)
            line = key_node.start_mark.line + 1
            if key in lines and key != "<<":
                raise ConfigError(
                    where, ".".join([*path, key]), f"duplicate key (lines {lines[key]} and {line})"
                )
            lines[key] = line
            _no_duplicates(value_node, [*path, key], where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            last = f"{path[-1]}[{index}]" if path else f"[{index}]"
            _no_duplicates(item, [*path[:-1], last], where, seen)


def read_yaml(path: Path, where: str) -> Any:
    """Parse a YAML file, refusing duplicate keys; ConfigError on any problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(where, None, f"unreadable: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(where, None, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        node = yamlfast.compose(text)
        if node is not None:
            _no_duplicates(node, [], where, set())
        return yamlfast.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(where, None, "not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(where, None, f"invalid YAML: {problem}{at}") from None


def field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def validate(model: type[M], data: Any, where: str) -> M:
    """Validate parsed YAML; the first error becomes a ConfigError with its field path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, None, "expected a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(where, field_path(tuple(first["loc"])), message + more) from None
