"""Suite templates (F11): ``include/integrations/templates/<type>.yaml``.

A template is an integration file whose required values are placeholders, ``"{{ key }}"``
(``key`` is the dotted field path, e.g. ``exchange.server``), each with a comment saying what
it wants; optional settings are commented-out lines showing their defaults. Filling one is
text editing, so the comments stay: a placeholder becomes a quoted string, ``--set key=value``
replaces (or uncomments, or adds) a key's line with the value read as YAML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from calsync.config import ID_PATTERN, SuiteType

TEMPLATES_DIR = Path("integrations") / "templates"  # under include/
SUITE_TYPES: tuple[str, ...] = SuiteType.__args__  # type: ignore[attr-defined]
PLACEHOLDER = re.compile(r'"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}"')
KEY_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# a key line, active or commented out: indent, comment mark, indent after it, key, the rest
_KEY_LINE = re.compile(r"^(\s*)(?:(#) ?(\s*))?([A-Za-z_][A-Za-z0-9_]*):(\s.*|)$")


class TemplateError(ValueError):
    """A template cannot be filled as asked (unknown key, bad value)."""


@dataclass(frozen=True)
class Placeholder:
    key: str
    description: str


def template_path(include_dir: Path, suite_type: str) -> Path:
    return Path(include_dir) / TEMPLATES_DIR / f"{suite_type}.yaml"


def _comment_of(rest: str) -> str:
    """The trailing ``# comment`` of a line's value part ('' when none)."""
    match = re.search(r"\s#\s?(.*)$", rest)
    return match.group(1).strip() if match else ""


def placeholders(text: str) -> list[Placeholder]:
    """The template's required values, in order, with the comment beside each."""
    found: list[Placeholder] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in PLACEHOLDER.finditer(line):
            rest = line[match.end() :]
            found.append(Placeholder(match.group(1), _comment_of(rest)))
    return found


def slug(name: str) -> str:
    """An integration id from a display name ('' when the name has no usable letters)."""
    text = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")[:63]
    return text if ID_PATTERN.fullmatch(text) else ""


def yaml_scalar(value: Any) -> str:
    """``value`` written as a one-line YAML value (JSON is valid YAML; non-ASCII kept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False, default=str)


def parse_value(raw: str) -> Any:
    """A ``--set`` value read as YAML (``5`` → 5, ``true``, ``[a, b]``), a string otherwise."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _parse_line(line: str) -> tuple[int, bool, str, str] | None:
    match = _KEY_LINE.match(line)
    if not match:
        return None
    lead, mark, inner, key, rest = match.groups()
    if not mark and line.lstrip().startswith("#"):
        return None
    return len(lead) + len(inner or ""), bool(mark), key, rest


def _with_value(indent: int, key: str, rendered: str, rest: str) -> str:
    comment = _comment_of(rest)
    line = f"{' ' * indent}{key}: {rendered}"
    if comment:
        line = f"{line:<38} # {comment}"
    return line


def set_key(text: str, key: str, rendered: str) -> str:
    """Set ``key`` (dotted) to the YAML value ``rendered``: its line is replaced, or
    uncommented (with its commented-out parents), or the key is added under its nearest
    existing parent (at the end when there is none)."""
    parts = key.split(".")
    lines = text.splitlines()
    stack: list[tuple[int, int, str]] = []  # (indent, line number, key) of the enclosing keys
    deepest: tuple[int, int] | None = None  # (depth, line number) of the nearest active parent
    for number, line in enumerate(lines):
        parsed = _parse_line(line)
        if parsed is None:
            continue
        indent, commented, name, rest = parsed
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, _, k in stack] + [name]
        if path == parts:
            for parent_indent, parent_number, _ in stack:  # uncomment commented parents
                parent = _parse_line(lines[parent_number])
                if parent is not None and parent[1]:
                    _, _, parent_key, parent_rest = parent
                    comment = _comment_of(parent_rest)
                    head = f"{' ' * parent_indent}{parent_key}:"
                    lines[parent_number] = f"{head:<38} # {comment}" if comment else head
            lines[number] = _with_value(indent, name, rendered, rest)
            return "\n".join(lines) + "\n"
        if not commented and path == parts[: len(path)] and len(path) < len(parts):
            deepest = (len(path), number)
        stack.append((indent, number, name))  # commented keys too: parents of commented keys
    # not in the template: add it under the nearest parent present
    depth, after = deepest if deepest is not None else (0, len(lines) - 1)
    added = [f"{'  ' * i}{parts[i]}:" for i in range(depth, len(parts) - 1)]
    added.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {rendered}")
    if deepest is None:
        lines.extend(added)
    else:
        lines[after + 1 : after + 1] = added
    return "\n".join(lines) + "\n"


def _header(text: str, suite_type: str, integration_id: str) -> str:
    """The template's leading comment block made the new file's: usage paragraphs dropped."""
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    paragraphs: list[list[str]] = [[]]
    for line in lines[:end]:
        if line.strip() == "#":
            paragraphs.append([])
        else:
            paragraphs[-1].append(line)
    kept = [p for p in paragraphs[1:] if p and not any("calsync new" in x or "{{" in x for x in p)]
    title = (paragraphs[0][0] if paragraphs[0] else "").removeprefix("# calsync template: ")
    out = [
        f"# calsync integration `{integration_id}`: {title}",
        f"# Made by `calsync new --type {suite_type}` from {TEMPLATES_DIR}/{suite_type}.yaml.",
    ]
    for paragraph in kept:
        out += ["#", *paragraph]
    return "\n".join(out + lines[end:]) + "\n"


def fill(
    text: str, suite_type: str, integration_id: str, required: dict[str, str], extra: dict[str, Any]
) -> str:
    """The new file's text: placeholders replaced by ``required`` (strings, all of them
    given), then each ``extra`` key set as a YAML value."""
    missing = [p.key for p in placeholders(text) if p.key not in required]
    if missing:
        raise TemplateError(f"no value for {', '.join(missing)}")

    def filled(line: str) -> str:
        match = PLACEHOLDER.search(line)
        if match is None or line.lstrip().startswith("#"):
            return line
        value = line[: match.start()] + yaml_scalar(str(required[match.group(1)]))
        comment = _comment_of(line[match.end() :])
        return f"{value:<38} # {comment}" if comment else value

    out = "\n".join(filled(line) for line in text.splitlines())
    for key, value in extra.items():
        if not KEY_PATH.fullmatch(key):
            raise TemplateError(f"not a field path: {key!r} (e.g. window_days, exchange.server)")
        out = set_key(out, key, yaml_scalar(value))
    return _header(out, suite_type, integration_id)
