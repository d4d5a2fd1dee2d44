"""YAML parsing for the files the DAG file reads on every parse (integrations, mappings).

PyYAML's pure-Python parser took ~60% of parsing 50 integration configs; its libyaml binding
(``CSafeLoader``, shipped in PyYAML's wheels) is ~10× faster. Errors are re-raised from the
pure-Python parser so messages and line marks stay exactly what users have seen so far.
"""

from __future__ import annotations

from typing import Any

import yaml

_FAST: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load``, through libyaml when it is there."""
    try:
        return yaml.load(text, Loader=_FAST)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return yaml.safe_load(text)  # raises again, with the pure-Python parser's message


def compose(text: str) -> yaml.Node | None:
    """``yaml.compose`` with a safe loader (the node tree, with line marks)."""
    try:
        return yaml.compose(text, Loader=_FAST)
    except yaml.YAMLError:
        return yaml.compose(text, Loader=yaml.SafeLoader)
