"""The mapping library: conversion rules, formulas, filters and field mappings of
include/mappings/, loaded and cross-checked once (:meth:`MappingLibrary.load`).

Layout::

    rules.yaml       rules:    {name: {description, table, default, case_sensitive}}
    formulas.yaml    formulas: {name: {description, expression, variables}}
    filters.yaml     filters:  {name: {description, direction, condition, variables}}
    mappings/<name>.yaml       {description, direction, fields: {target: spec}}

Variables seen by a formula, later ones winning: the formula's defaults, the ``variables`` of
the mapping field that uses it, the variables given to :meth:`FieldMapping.apply` (the
integration's, which include ``color``). A filter sees its defaults, then the variables given
to :meth:`MappingLibrary.filters`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calsync.errors import ConfigError, MappingError
from calsync.mapping import loading
from calsync.mapping.models import (
    TARGETS,
    FieldSpec,
    FiltersFile,
    FormulasFile,
    MappingFile,
    RulesFile,
)
from calsync.mapping.records import FORWARD_SOURCE_FIELDS, REVERSE_SOURCE_FIELDS
from calsync.mapping.rules import MISSING, Rule, RuleBook, normalise
from calsync.mapping.sandbox import (
    Expression,
    ExpressionError,
    Sandbox,
    SourceRecord,
    Variables,
    compile_expression,
)
from calsync.mapping.text import one_line, strip_control, to_text, truncate

SOURCE_FIELDS = {"forward": FORWARD_SOURCE_FIELDS, "reverse": REVERSE_SOURCE_FIELDS}
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
COLOUR = re.compile(r"#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})")
MAPPING_SUFFIXES = (".yaml", ".yml")


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


@dataclass(frozen=True)
class Formula:
    name: str
    description: str
    expression: Expression
    variables: dict[str, Any]


@dataclass(frozen=True)
class Filter:
    name: str
    description: str
    direction: str
    condition: Expression
    variables: dict[str, Any]


@dataclass(frozen=True)
class _Field:
    target: str
    spec: FieldSpec
    formula: Formula | None = None


class FieldMapping:
    """One field mapping (``mappings/<name>.yaml``) for one direction."""

    def __init__(
        self, name: str, description: str, direction: str, fields: list[_Field], rules: RuleBook
    ) -> None:
        self.name = name
        self.description = description
        self.direction = direction
        self._fields = fields
        self._rules = rules

    @property
    def targets(self) -> set[str]:
        """The target fields this mapping sets."""
        return {f.target for f in self._fields}

    @property
    def source_fields(self) -> frozenset[str] | None:
        """Every source field the mapping reads; None when a formula may read any."""
        found: set[str] = set()
        for item in self._fields:
            if item.formula is not None:
                expression = item.formula.expression
                if not expression.src_fields_complete:
                    return None
                found |= expression.src_fields
            elif item.spec.source is not None:
                found.add(item.spec.source)
        return frozenset(found)

    def apply(
        self, record: dict[str, Any], variables: dict[str, Any] | None = None
    ) -> dict[str, str]:
        """Map one source record: target field → text.

        Values are strings (None → ""), control characters removed (single-line targets also
        get their whitespace runs collapsed to one space) and truncated to the target's limit:
        forward title 500 and location 500 characters, details 1 MiB, color 16 (and it must
        look like #RRGGBB); reverse subject and location 255, body 1 MiB. Raises
        MappingError naming the target field."""
        src = SourceRecord(record)
        out: dict[str, str] = {}
        for item in self._fields:
            try:
                value = self._value(item, src, variables or {})
                out[item.target] = self._finish(item.target, to_text(value, item.target))
            except MappingError as exc:
                raise MappingError(item.target, exc.message) from None
            except Exception as exc:  # e.g. an undefined value inside a list result
                raise MappingError(item.target, f"{type(exc).__name__}: {exc}"[:500]) from None
        return out

    def _value(self, item: _Field, src: SourceRecord, variables: dict[str, Any]) -> Any:
        spec = item.spec
        kind = spec.kind
        if kind == "value":
            return spec.value
        if kind == "formula":
            assert item.formula is not None
            var = Variables({**item.formula.variables, **(spec.variables or {}), **variables})
            return item.formula.expression.evaluate(src, var, item.target)
        assert spec.source is not None
        if spec.source not in src:
            raise MappingError(item.target, f"the record has no field {spec.source!r}")
        if kind == "rule":
            return self._rules.lookup(spec.rule, src[spec.source])
        return src[spec.source]

    def _finish(self, target: str, text: str) -> str:
        max_chars, max_bytes, single_line = TARGETS[self.direction][target]
        text = one_line(text) if single_line else strip_control(text)
        if target == "color" and text and not COLOUR.fullmatch(text):
            raise MappingError(target, f"{text[:40]!r} is not a colour like #2F80ED")
        return truncate(text, max_chars, max_bytes)


class FilterSet:
    """Data filters chosen for one integration and direction (F17)."""

    def __init__(self, filters: list[tuple[Filter, Variables]]) -> None:
        self._filters = filters

    @property
    def names(self) -> list[str]:
        return [f.name for f, _ in self._filters]

    @property
    def source_fields(self) -> frozenset[str] | None:
        """Every source field the conditions read; None when one may read any."""
        found: set[str] = set()
        for flt, _ in self._filters:
            if not flt.condition.src_fields_complete:
                return None
            found |= flt.condition.src_fields
        return frozenset(found)

    def skip_reason(self, record: dict[str, Any]) -> str | None:
        """None to keep the record, else ``"filter <name>: <description>"`` for the first
        filter whose condition is true. A failing condition raises MappingError."""
        src = SourceRecord(record)
        for flt, var in self._filters:
            if flt.condition.evaluate(src, var, f"filter {flt.name}"):
                return f"filter {flt.name}: {flt.description or flt.name}"
        return None


@dataclass
class MappingLibrary:
    """Everything in include/mappings/, loaded and cross-checked."""

    directory: Path
    rules: RuleBook
    formulas: dict[str, Formula] = field(default_factory=dict)
    filter_defs: dict[str, Filter] = field(default_factory=dict)
    mappings: dict[str, FieldMapping] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> MappingLibrary:
        """Load and check every file; the first problem raises ConfigError(file, field)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(loading.display(directory), None, "mapping directory not found")
        rules = _load_rules(directory / "rules.yaml")
        env = Sandbox(rules.lookup)
        formulas = _load_formulas(directory / "formulas.yaml", env, rules)
        filters = _load_filters(directory / "filters.yaml", env, rules)
        mappings = _load_mappings(directory / "mappings", rules, formulas)
        return cls(directory, rules, formulas, filters, mappings)

    def _where(self, name: str) -> str:
        return loading.display(self.directory / name)

    def mapping(self, name: str) -> FieldMapping:
        """The field mapping ``mappings/<name>.yaml``; ConfigError when there is none."""
        found = self.mappings.get(name)
        if found is None:
            raise ConfigError(
                self._where("mappings"), name, f"no such mapping (known: {_known(self.mappings)})"
            )
        return found

    def filters(
        self,
        names: Iterable[str],
        direction: str = "forward",
        variables: dict[str, Any] | None = None,
    ) -> FilterSet:
        """The named filters for ``direction``, with ``variables`` over their defaults."""
        chosen: list[tuple[Filter, Variables]] = []
        for name in names:
            flt = self.filter_defs.get(name)
            if flt is None:
                raise ConfigError(
                    self._where("filters.yaml"),
                    f"filters.{name}",
                    f"no such filter (known: {_known(self.filter_defs)})",
                )
            if flt.direction != direction:
                raise ConfigError(
                    self._where("filters.yaml"),
                    f"filters.{name}.direction",
                    f"the filter is for {flt.direction} sync, not {direction}",
                )
            chosen.append((flt, Variables({**flt.variables, **(variables or {})})))
        return FilterSet(chosen)

    def check_refs(self, mapping: str, filters: list[str], direction: str) -> list[str]:
        """Problems with a configuration's mapping and filter names, as sentences (empty
        when all is well); mapping problems come first and mention "mapping"."""
        problems: list[str] = []
        found = self.mappings.get(mapping)
        if found is None:
            problems.append(f"unknown mapping {mapping!r} (known: {_known(self.mappings)})")
        elif found.direction != direction:
            problems.append(f"mapping {mapping!r} is for {found.direction} sync, not {direction}")
        for name in filters:
            flt = self.filter_defs.get(name)
            if flt is None:
                problems.append(f"unknown filter {name!r} (known: {_known(self.filter_defs)})")
            elif flt.direction != direction:
                problems.append(f"filter {name!r} is for {flt.direction} sync, not {direction}")
        return problems


def _check_name(name: str, where: str, path: str) -> None:
    if not NAME.fullmatch(name):
        raise ConfigError(
            where, path, "names start with a letter and use letters, digits and underscores"
        )


def _load_rules(path: Path) -> RuleBook:
    where = loading.display(path)
    if not path.exists():
        return RuleBook({})
    model = loading.validate(RulesFile, loading.read_yaml(path, where), where)
    rules: dict[str, Rule] = {}
    for name, rule in model.rules.items():
        _check_name(name, where, f"rules.{name}")
        table: dict[str, Any] = {}
        originals: dict[str, Any] = {}
        for key, value in rule.table.items():
            norm = normalise(key, rule.case_sensitive)
            if norm in table:
                raise ConfigError(
                    where,
                    f"rules.{name}.table.{key}",
                    f"same key as {originals[norm]!r} (the rule is not case-sensitive)",
                )
            table[norm], originals[norm] = value, key
        default = rule.default if "default" in rule.model_fields_set else MISSING
        rules[name] = Rule(name, rule.description, table, default, rule.case_sensitive)
    return RuleBook(rules)


def _compile(
    env: Sandbox, source: str, rules: RuleBook, where: str, path: str, fields: frozenset[str]
) -> Expression:
    try:
        expression = compile_expression(env, source)
    except ExpressionError as exc:
        raise ConfigError(where, path, str(exc)) from None
    if unknown_rules := sorted(expression.rule_names - set(rules.rules)):
        raise ConfigError(where, path, f"unknown rule {unknown_rules[0]!r} in lookup()")
    if unknown_fields := sorted(expression.src_fields - fields):
        raise ConfigError(where, path, f"unknown source field src.{unknown_fields[0]}")
    return expression


def _load_formulas(path: Path, env: Sandbox, rules: RuleBook) -> dict[str, Formula]:
    where = loading.display(path)
    if not path.exists():
        return {}
    model = loading.validate(FormulasFile, loading.read_yaml(path, where), where)
    everything = FORWARD_SOURCE_FIELDS | REVERSE_SOURCE_FIELDS  # per direction: at use
    formulas: dict[str, Formula] = {}
    for name, formula in model.formulas.items():
        _check_name(name, where, f"formulas.{name}")
        path_ = f"formulas.{name}.expression"
        expression = _compile(env, formula.expression, rules, where, path_, everything)
        formulas[name] = Formula(name, formula.description, expression, dict(formula.variables))
    return formulas


def _load_filters(path: Path, env: Sandbox, rules: RuleBook) -> dict[str, Filter]:
    where = loading.display(path)
    if not path.exists():
        return {}
    model = loading.validate(FiltersFile, loading.read_yaml(path, where), where)
    filters: dict[str, Filter] = {}
    for name, flt in model.filters.items():
        _check_name(name, where, f"filters.{name}")
        fields = SOURCE_FIELDS[flt.direction]
        condition = _compile(env, flt.condition, rules, where, f"filters.{name}.condition", fields)
        filters[name] = Filter(name, flt.description, flt.direction, condition, dict(flt.variables))
    return filters


def _load_mappings(
    directory: Path, rules: RuleBook, formulas: dict[str, Formula]
) -> dict[str, FieldMapping]:
    mappings: dict[str, FieldMapping] = {}
    if not directory.is_dir():
        return mappings
    for path in sorted(p for p in directory.iterdir() if p.suffix in MAPPING_SUFFIXES):
        where = loading.display(path)
        if path.stem in mappings:
            raise ConfigError(where, None, f"a second file for mapping {path.stem!r}")
        _check_name(path.stem, where, "(file name)")
        model = loading.validate(MappingFile, loading.read_yaml(path, where), where)
        mappings[path.stem] = _build_mapping(path.stem, model, rules, formulas, where)
    return mappings


def _build_mapping(
    name: str, model: MappingFile, rules: RuleBook, formulas: dict[str, Formula], where: str
) -> FieldMapping:
    targets = TARGETS[model.direction]
    sources = SOURCE_FIELDS[model.direction]
    fields: list[_Field] = []
    for target, spec in model.fields.items():
        path = f"fields.{target}"
        if target not in targets:
            raise ConfigError(
                where,
                path,
                f"unknown target field {target!r} for a {model.direction} mapping "
                f"(allowed: {_known(targets)})",
            )
        if spec.source is not None and spec.source not in sources:
            raise ConfigError(
                where,
                f"{path}.source",
                f"unknown source field {spec.source!r} (known: {_known(sources)})",
            )
        if spec.rule is not None and spec.rule not in rules:
            raise ConfigError(
                where, f"{path}.rule", f"unknown rule {spec.rule!r} (known: {_known(rules.rules)})"
            )
        formula = None
        if spec.formula is not None:
            formula = formulas.get(spec.formula)
            if formula is None:
                raise ConfigError(
                    where,
                    f"{path}.formula",
                    f"unknown formula {spec.formula!r} (known: {_known(formulas)})",
                )
            if unknown_fields := sorted(formula.expression.src_fields - sources):
                raise ConfigError(
                    where,
                    f"{path}.formula",
                    f"formula {spec.formula!r} reads src.{unknown_fields[0]}, which a "
                    f"{model.direction} record does not have",
                )
            if unknown_vars := sorted(set(spec.variables or {}) - set(formula.variables)):
                raise ConfigError(
                    where,
                    f"{path}.variables.{unknown_vars[0]}",
                    f"formula {spec.formula!r} has no variable {unknown_vars[0]!r} "
                    f"(its variables: {_known(formula.variables)})",
                )
        fields.append(_Field(target, spec, formula))
    return FieldMapping(name, model.description, model.direction, fields, rules)
