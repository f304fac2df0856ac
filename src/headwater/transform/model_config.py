"""The options of a SQL model: its `-- headwater:` header lines and its sidecar YAML.

    -- headwater: strategy=merge keys=[order_id] partition_by=[order_date]
    -- headwater: description="Orders, cleaned" snapshot=[silver.customers]
    SELECT ...

or `models/<layer>/<name>.yaml` beside the SQL file:

    strategy: merge
    keys: [order_id]

Every keyword option of `table(...)` can be set, plus `snapshot` (tables whose
plain references read the whole table). Values are YAML scalars and flow lists,
so `[a, b]`, `"text with spaces"`, `true` and `128MB` mean what they look like.
Each option remembers where it was set (`file:line`) for error messages.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..declare import table
from ..errors import ConfigError

HEADER = re.compile(r"^\s*--\s*headwater\s*:(?P<body>.*)$", re.IGNORECASE)
COMMENT = re.compile(r"^\s*(--.*)?$")
# Options only models have; the rest are table()'s keyword options.
MODEL_OPTIONS = {"snapshot": "Sequence[str]"}
# table() options a model cannot take: its inputs come from the SQL, and a gate
# is a Python object.
NOT_FOR_MODELS = {"source", "inputs", "gate"}
SIDECAR_SUFFIXES = (".yaml", ".yml")


@dataclass
class ModelConfig:
    """Options of one model and the `file:line` each was set at."""

    options: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def where(self, option: str | None = None) -> str | None:
        """Where `option` (or, without one, the first option) was set."""
        if option is not None:
            return self.origins.get(option)
        return next(iter(self.origins.values()), None)


def table_options() -> dict[str, str]:
    """Option name -> its annotation, for every option a model may set."""
    options = {
        name: str(parameter.annotation)
        for name, parameter in inspect.signature(table).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in NOT_FOR_MODELS
    }
    return {**options, **MODEL_OPTIONS}


def read_config(sql_path: Path, text: str) -> ModelConfig:
    """The model's options from its header lines and its sidecar (set in one place each)."""
    header = _read_header(sql_path, text)
    sidecar = _read_sidecar(sql_path)
    for option in header.options.keys() & sidecar.options.keys():
        raise ConfigError(
            f"{sidecar.origins[option]}: option {option} is also set at {header.origins[option]}",
            "set each option in one place: the SQL header or the YAML file",
        )
    config = ModelConfig(
        {**header.options, **sidecar.options}, {**header.origins, **sidecar.origins}
    )
    known = table_options()
    for option, value in list(config.options.items()):
        where = config.origins[option]
        if option not in known:
            close = difflib.get_close_matches(option, known, n=1)
            raise ConfigError(
                f"{where}: unknown model option {option!r}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                f"options: {', '.join(sorted(known))}",
            )
        config.options[option] = _coerce(option, value, known[option], where)
    return config


def _read_header(path: Path, text: str) -> ModelConfig:
    config = ModelConfig()
    leading = True
    for number, line in enumerate(text.splitlines(), 1):
        match = HEADER.match(line)
        if match is None:
            leading = leading and COMMENT.match(line) is not None
            continue
        where = f"{path}:{number}"
        if not leading:
            raise ConfigError(
                f"{where}: a `-- headwater:` line after the start of the query",
                "put the option lines at the top of the file, before the SELECT",
            )
        for item in _split_items(match.group("body"), where):
            option, equals, value = item.partition("=")
            option = option.strip()
            if not equals or not option:
                raise ConfigError(
                    f"{where}: expected option=value, not {item!r}",
                    "e.g. -- headwater: strategy=merge keys=[order_id]",
                )
            if option in config.options:
                raise ConfigError(
                    f"{where}: option {option} is also set at {config.origins[option]}"
                )
            config.options[option] = _yaml_value(value, where, option)
            config.origins[option] = where
    return config


def _split_items(body: str, where: str) -> list[str]:
    """`a=1 b=[x, y] c="p q"` -> ['a=1', 'b=[x, y]', 'c="p q"'] (commas between items allowed)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    for char in body:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif depth == 0 and (char.isspace() or char == ","):
            if current:
                items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote is not None or depth != 0:
        raise ConfigError(
            f"{where}: unbalanced {'quote' if quote else 'brackets'} in the option line",
            "lists are [a, b]; text with spaces is quoted",
        )
    if current:
        items.append("".join(current))
    return items


def _yaml_value(text: str, where: str, option: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a valid value"
        raise ConfigError(
            f"{where}: option {option}: {problem}: {text.strip()}",
            "lists are [a, b]; text with spaces is quoted",
        ) from None


def _read_sidecar(sql_path: Path) -> ModelConfig:
    found = [p for p in (sql_path.with_suffix(s) for s in SIDECAR_SUFFIXES) if p.exists()]
    if not found:
        return ModelConfig()
    if len(found) > 1:
        raise ConfigError(
            f"{found[1]}: model {sql_path.name} has two option files ({found[0].name} too)",
            "keep one",
        )
    (path,) = found
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: not valid YAML: {problem}") from None
    if values is None:
        return ModelConfig()
    if not isinstance(values, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"{path}:1: model options must be a mapping of option: value",
            "e.g. strategy: merge\\nkeys: [order_id]",
        )
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    return ModelConfig(
        {str(k): v for k, v in values.items()},
        {str(k): f"{path}:{lines.get(str(k), 1)}" for k in values},
    )


def _coerce(option: str, value: Any, annotation: str, where: str) -> Any:
    """Check a value against the type table() declares for the option."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{where}: option {option} must be {expected}, not {value!r}")

    if value is None:
        if "None" in annotation:
            return None
        raise wrong("set")
    if "Sequence[str]" in annotation:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise wrong(f"a list of names, e.g. {option}=[a, b]")
        return items
    if annotation.startswith("dict"):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise wrong(f"a mapping, e.g. {option}={{a: b}}")
        return value
    if "bool" in annotation:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if "int" in annotation and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "str" in annotation or "Literal" in annotation:
        if not isinstance(value, str):
            raise wrong("text")
        return value
    raise ConfigError(
        f"{where}: option {option} cannot be set in a model",
        "declare the table in Python (pipelines/*.py) to use it",
    )
