"""The data contract file: Open Data Contract Standard (ODCS) v3, parsed and validated.

Only the shape is checked here (fields, types, required keys). Turning a
contract into checks, and the rules that need the table to judge, live in
`quality.contract`. Every ODCS field is known, so a misspelt key (`requried`)
is an error naming the file and the field instead of a silently absent check.
Headwater's own settings travel in ODCS `customProperties` (see docs/contracts.md),
so a Headwater contract stays a valid ODCS document.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

HINT = "see docs/contracts.md for the contract format (ODCS v3)"
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
LOGICAL_TYPES = (
    "string",
    "date",
    "timestamp",
    "time",
    "number",
    "integer",
    "object",
    "array",
    "boolean",
)
# A YAML scalar as written: numbers, text, and dates YAML reads as dates.
Scalar = str | int | float | bool | date | datetime


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CustomProperty(_Model):
    id: str | None = None
    property: str
    value: Any = None
    description: str | None = None


class Relationship(_Model):
    id: str | None = None
    type: Literal["foreignKey"] = "foreignKey"
    from_: str | list[str] | None = Field(default=None, alias="from")
    to: str | list[str]
    customProperties: list[CustomProperty] = Field(default_factory=list)


class Quality(_Model):
    """A quality rule: `library` metric, `sql` query, `custom` engine, or `text`."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    type: Literal["library", "text", "sql", "custom"] | None = None
    metric: str | None = None
    rule: str | None = None  # ODCS v3.0 name of `metric`
    arguments: dict[str, Any] | None = None
    validValues: list[Any] | None = None  # ODCS v3.0 place of arguments.validValues
    mustBe: float | None = None
    mustNotBe: float | None = None
    mustBeGreaterThan: float | None = None
    mustBeGreaterOrEqualTo: float | None = None
    mustBeLessThan: float | None = None
    mustBeLessOrEqualTo: float | None = None
    mustBeBetween: tuple[float, float] | None = None
    mustNotBeBetween: tuple[float, float] | None = None
    unit: str | None = None
    query: str | None = None
    engine: str | None = None
    implementation: str | dict[str, Any] | None = None
    dimension: str | None = None
    method: str | None = None
    severity: str | None = None
    businessImpact: str | None = None
    customProperties: list[CustomProperty] = Field(default_factory=list)
    tags: list[Any] | None = None
    authoritativeDefinitions: list[Any] | None = None
    scheduler: str | None = None
    schedule: str | None = None


class LogicalTypeOptions(_Model):
    minimum: Scalar | None = None
    maximum: Scalar | None = None
    exclusiveMinimum: Scalar | None = None
    exclusiveMaximum: Scalar | None = None
    pattern: str | None = None
    format: str | None = None
    minLength: int | None = Field(default=None, ge=0)
    maxLength: int | None = Field(default=None, ge=0)
    multipleOf: float | None = None
    timezone: bool | None = None
    defaultTimezone: str | None = None
    minItems: int | None = None
    maxItems: int | None = None
    uniqueItems: bool | None = None
    minProperties: int | None = None
    maxProperties: int | None = None
    required: list[str] | None = None


class _Element(_Model):
    id: str | None = None
    name: str
    physicalName: str | None = None
    physicalType: str | None = None
    description: str | None = None
    businessName: str | None = None
    authoritativeDefinitions: list[Any] | None = None
    quality: list[Quality] = Field(default_factory=list)
    tags: list[Any] | None = None
    customProperties: list[CustomProperty] = Field(default_factory=list)
    relationships: list[Relationship] = Field(default_factory=list)


class Property(_Element):
    """A column of the table (ODCS: a property of a schema object)."""

    primaryKey: bool = False
    primaryKeyPosition: int = -1
    logicalType: (
        Literal[
            "string", "date", "timestamp", "time", "number", "integer", "object", "array", "boolean"
        ]
        | None
    ) = None
    logicalTypeOptions: LogicalTypeOptions | None = None
    required: bool = False
    unique: bool = False
    partitioned: bool = False
    partitionKeyPosition: int = -1
    classification: str | None = None
    encryptedName: str | None = None
    transformSourceObjects: list[str] | None = None
    transformLogic: str | None = None
    transformDescription: str | None = None
    examples: list[Any] | None = None
    criticalDataElement: bool = False
    items: dict[str, Any] | None = None
    properties: list[Property] | None = None  # nested fields of an object column

    @property
    def column(self) -> str:
        """The column's name in the table."""
        return self.physicalName or self.name


class SchemaObject(_Element):
    """A table (ODCS: a schema object)."""

    logicalType: Literal["object"] | None = None
    dataGranularityDescription: str | None = None
    properties: list[Property] = Field(default_factory=list)


class SlaProperty(_Model):
    id: str | None = None
    property: str
    value: Scalar | None
    valueExt: Scalar | None = None
    unit: str | None = None
    element: str | None = None
    driver: str | None = None
    description: str | None = None
    scheduler: str | None = None
    schedule: str | None = None


class Description(_Model):
    usage: str | None = None
    purpose: str | None = None
    limitations: str | None = None
    authoritativeDefinitions: list[Any] | None = None
    customProperties: list[CustomProperty] = Field(default_factory=list)


class TeamMember(_Model):
    id: str | None = None
    username: str
    name: str | None = None
    description: str | None = None
    role: str | None = None
    dateIn: Scalar | None = None
    dateOut: Scalar | None = None
    replacedByUsername: str | None = None
    tags: list[Any] | None = None
    customProperties: list[CustomProperty] = Field(default_factory=list)
    authoritativeDefinitions: list[Any] | None = None


class Team(_Model):
    id: str | None = None
    name: str | None = None
    description: str | None = None
    members: list[TeamMember] = Field(default_factory=list)
    tags: list[Any] | None = None
    customProperties: list[CustomProperty] = Field(default_factory=list)
    authoritativeDefinitions: list[Any] | None = None


class Contract(_Model):
    """One ODCS v3 document."""

    apiVersion: str
    kind: Literal["DataContract"]
    id: str
    version: str
    status: str
    name: str | None = None
    tenant: str | None = None
    tags: list[Any] | None = None
    servers: list[Any] | None = None
    dataProduct: str | None = None
    description: Description | None = None
    domain: str | None = None
    schema_: list[SchemaObject] = Field(default_factory=list, alias="schema")
    support: Any = None
    price: Any = None
    team: Team | list[TeamMember] | None = None
    roles: list[Any] | None = None
    slaDefaultElement: str | None = None
    slaProperties: list[SlaProperty] = Field(default_factory=list)
    authoritativeDefinitions: list[Any] | None = None
    customProperties: list[CustomProperty] = Field(default_factory=list)
    contractCreatedTs: Scalar | None = None

    @field_validator("version", "id", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        # YAML reads `version: 2` as a number; the format check below names the problem.
        return str(value) if isinstance(value, int | float) else value

    @field_validator("apiVersion")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not re.match(r"^v3\.\d+\.\d+$", value):
            raise ValueError(
                f"{value!r} is not an ODCS v3 version (v3.0.0 ... v3.1.0); "
                "ODCS v2 contracts need upgrading to v3"
            )
        return value

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER.match(value):
            raise ValueError(f"{value!r} is not a semantic version such as 1.0.0")
        return value

    @property
    def owner(self) -> str | None:
        """The team member whose role is owner, else the team's name."""
        members = (
            self.team if isinstance(self.team, list) else (self.team.members if self.team else [])
        )
        for member in members:
            if (member.role or "").lower() in ("owner", "data owner", "product owner"):
                return member.name or member.username
        return self.team.name if isinstance(self.team, Team) else None


def semver(version: str) -> tuple[int, int, int]:
    match = SEMVER.match(version)
    assert match is not None  # validated on load
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def load(path: Path, shown: str | None = None) -> Contract:
    """Parse and validate a contract file; any problem is a ConfigError naming file and field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{shown or path}: cannot read the contract: {exc.strerror}") from None
    return _parse_cached(text, shown or str(path))


@lru_cache(maxsize=64)
def _parse_cached(text: str, shown: str) -> Contract:
    # The engine asks for a table's gate once per chunk; the file is read, not re-parsed.
    return parse(text, shown)


def parse(text: str, where: str) -> Contract:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{at}: not valid YAML: {problem}", HINT) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: a contract is a YAML mapping (apiVersion, kind, schema, ...)", HINT
        )
    try:
        return Contract.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe_error(exc, raw)}", HINT) from None


def describe_error(exc: ValidationError, raw: Any) -> str:
    """The most specific validation error as `field path: what is wrong`."""
    # A union reports one error per alternative; the deepest names the field best.
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    path = field_path(error["loc"], raw)
    kind = error["type"]
    if kind == "missing":
        return f"field {path} is required"
    if kind == "extra_forbidden":
        return f"unknown field {path} (misspelt? ODCS fields are camelCase, e.g. logicalType)"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
    return f"field {path}: {message}{shown}"


def field_path(loc: tuple[int | str, ...], raw: Any) -> str:
    """`schema[orders].properties[amount].required`: list items named by their `name`."""
    parts: list[str] = []
    node = raw
    for i, step in enumerate(loc):
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            item = node[step]
            label = item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{label or step}]")
            node = item
        elif (
            isinstance(step, str) and isinstance(node, dict) and (step in node or i == len(loc) - 1)
        ):
            parts.append(f".{step}")
            node = node.get(step)
        # Anything else is a label pydantic gives a branch of a union: not in the file.
    return "".join(parts).lstrip(".") or "(top level)"
