"""Conversion rules: named lookup tables (rules.yaml), usable from a mapping field
(``{rule, source}``) and from formulas (``lookup("rule", value)``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calsync.errors import MappingError

MISSING: Any = object()  # "no default" (None is a valid default)


def normalise(value: Any, case_sensitive: bool) -> str:
    """The key a value is looked up by: text, booleans as true/false, None as ""."""
    if value is None:
        key = ""
    elif isinstance(value, bool):
        key = "true" if value else "false"
    else:
        key = str(value)
    return key if case_sensitive else key.casefold()


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    table: dict[str, Any]  # normalised keys
    default: Any = MISSING
    case_sensitive: bool = False

    def lookup(self, value: Any) -> Any:
        """The table's value for ``value``, else the default; MappingError when neither."""
        found = self.table.get(normalise(value, self.case_sensitive), MISSING)
        if found is MISSING:
            found = self.default
        if found is MISSING:
            shown = str(value)[:100]
            raise MappingError(
                f"rules.{self.name}",
                f"rule {self.name!r} has no entry for {shown!r} and no default",
            )
        return found


class RuleBook:
    """The rule library; ``lookup`` is also the ``lookup()`` global of formulas."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules

    def __contains__(self, name: object) -> bool:
        return name in self.rules

    def lookup(self, name: Any, value: Any) -> Any:
        rule = self.rules.get(str(name))
        if rule is None:
            raise MappingError(f"rules.{name}", f"unknown rule {str(name)[:100]!r}")
        return rule.lookup(value)
