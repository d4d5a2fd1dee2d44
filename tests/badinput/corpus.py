"""Reading the bad-config corpus (``data/configs/``): each file is one bad input, with what
calsync must answer in its leading comment lines::

    # <what is wrong>
    # expect-file: formulas.yaml            (mapping cases: the library file that is named)
    # expect-field: window_days             ("(none)": the message names the file only)
    # expect-error: Input should be less than or equal to 15
    # expect-at: sync                       (mapping cases refused when applied, not loaded)
    # secret: <a value that must never be echoed>

``integrations/<stem>.yaml`` is a whole integration file (its name is the integration id).
``mappings/<stem>.yaml`` maps library files (``formulas.yaml``, ``mappings/<name>.yaml``...)
to fragments merged into a copy of the shipped library: for each top-level key, the
fragment's entries replace the shipped ones (``fields: {title: ...}`` replaces ``title``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).parent / "data" / "configs"
SHIPPED_MAPPINGS = Path(__file__).resolve().parents[2] / "include" / "mappings"


@dataclass(frozen=True)
class Case:
    path: Path
    what: str
    field: str | None
    error: str
    file: str | None = None
    at: str = "load"
    secret: str | None = None

    @property
    def stem(self) -> str:
        return self.path.stem

    def expected(self, shown_file: str) -> str:
        """The start of the error text: the file as shown, the field, the message."""
        return f"{shown_file}: {self.field}: " if self.field else f"{shown_file}: "


def read_case(path: Path) -> Case:
    # latin-1 reads any byte: one case is deliberately not UTF-8 below its header
    header: dict[str, str] = {}
    what = ""
    for line in path.read_bytes().decode("latin-1").splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep and key.startswith(("expect-", "secret")):
            header[key] = value
        elif not what:
            what = line[1:].strip()
    missing = {"expect-field", "expect-error"} - set(header)
    if missing or not what:
        raise ValueError(f"{path}: corpus header lacks {sorted(missing) or 'a description'}")
    field = header["expect-field"]
    return Case(
        path=path,
        what=what,
        field=None if field == "(none)" else field,
        error=header["expect-error"],
        file=header.get("expect-file"),
        at=header.get("expect-at", "load"),
        secret=header.get("secret"),
    )


def cases(kind: str) -> list[Case]:
    return [read_case(p) for p in sorted((CORPUS / kind).glob("*.yaml"))]


def patched_library(case: Case, target: Path) -> Path:
    """A copy of the shipped mapping library with the case's fragments merged in."""
    shutil.copytree(SHIPPED_MAPPINGS, target)
    fragments: dict[str, dict[str, Any]] = yaml.safe_load(case.path.read_text(encoding="utf-8"))
    for name, fragment in fragments.items():
        path = target / name
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for key, value in fragment.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return target
