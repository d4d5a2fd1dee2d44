"""Pydantic models of the files in include/mappings/ (shape only; references between files
are checked by the library loader)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Direction = Literal["forward", "reverse"]


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(
        f"expected a single value (text, number, true/false or empty), not a {type(value).__name__}"
    )


# One YAML scalar, kept as it is (a union would coerce and report one error per member).
Scalar = Annotated[Any, BeforeValidator(_scalar)]

# Target fields per direction and their limits: (max characters, max UTF-8 bytes, one line).
TARGETS: dict[str, dict[str, tuple[int, int | None, bool]]] = {
    "forward": {  # OA schedule columns (oa_schedules)
        "title": (500, None, True),
        "location": (500, None, True),
        "details": (1_048_576, 1_048_576, False),
        "color": (16, None, True),
    },
    "reverse": {  # suite event fields (Exchange caps subject and location at 255)
        "subject": (255, None, True),
        "body": (1_048_576, 1_048_576, False),
        "location": (255, None, True),
    },
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleModel(_Strict):
    description: str = ""
    table: dict[str | int | float | bool | None, Scalar]
    default: Scalar = None  # whether it was given at all: "default" in model_fields_set
    case_sensitive: bool = False


class RulesFile(_Strict):
    rules: dict[str, RuleModel] = Field(default_factory=dict)


class FormulaModel(_Strict):
    description: str = ""
    expression: str
    variables: dict[str, Scalar] = Field(default_factory=dict)


class FormulasFile(_Strict):
    formulas: dict[str, FormulaModel] = Field(default_factory=dict)


class FilterModel(_Strict):
    description: str = ""
    direction: Direction
    condition: str
    variables: dict[str, Scalar] = Field(default_factory=dict)


class FiltersFile(_Strict):
    filters: dict[str, FilterModel] = Field(default_factory=dict)


SPEC_KINDS = ("source", "rule", "formula", "value")


class FieldSpec(_Strict):
    """Exactly one of: {source} copy, {rule, source}, {formula, variables?}, {value}."""

    source: str | None = None
    rule: str | None = None
    formula: str | None = None
    variables: dict[str, Scalar] | None = None
    value: Scalar = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = [k for k in SPEC_KINDS if k in data]
        kinds = set(given) - ({"source"} if "rule" in given else set())
        if len(kinds) != 1:
            shown = ", ".join(given) or "none of them"
            raise ValueError(
                "give exactly one of {source}, {rule, source}, {formula, variables} or "
                f"{{value}}; got {shown}"
            )
        if "rule" in given and "source" not in given:
            raise ValueError("a rule needs the source field to look up: add 'source'")
        if "variables" in data and "formula" not in given:
            raise ValueError("'variables' only goes with 'formula'")
        return data

    @property
    def kind(self) -> str:
        for kind in ("value", "formula", "rule"):
            if kind in self.model_fields_set:
                return kind
        return "source"


class MappingFile(_Strict):
    description: str = ""
    direction: Direction
    fields: dict[str, FieldSpec] = Field(min_length=1)
