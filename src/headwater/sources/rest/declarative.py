"""REST resources declared in YAML, next to the pipeline that uses them.

    # pipelines/shop_api.yaml
    connection: shop_api            # base_url and secrets come from this connection
    defaults:                       # apply to every resource (a resource's own keys win)
      auth: {type: bearer}
      paginator: {type: cursor, cursor_path: meta.next_cursor, param: cursor}
      rate_limit: 5
    resources:
      - name: orders
        endpoint: /orders
        records: data
        incremental: {param: updated_since, field: updated_at}
        columns: {updated_at: timestamp}
      - name: order_lines
        endpoint: /orders/{order_id}/lines
        parent: {table: bronze.orders, params: {order_id: id}}
        paginator: single

    # pipelines/shop.py
    api = load_resources("shop_api.yaml")   # relative to this file
    table("bronze.orders_raw", source=rest(api["orders"]), strategy="append")

Every key is checked: a misspelt key is an error naming the file, the resource
and the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError
from .auth import ApiKey, Auth, Basic, Bearer, OAuth2ClientCredentials
from .paginate import PAGINATORS, Paginator
from .resource import Incremental, Parent, Resource, Retry

_AUTHS: dict[str, type[Auth]] = {
    "bearer": Bearer,
    "basic": Basic,
    "api_key": ApiKey,
    "oauth2_client_credentials": OAuth2ClientCredentials,
}
_TOP = {"connection", "base_url", "defaults", "resources"}
_RESOURCE = {
    "name",
    "endpoint",
    "base_url",
    "connection",
    "method",
    "params",
    "headers",
    "body",
    "records",
    "paginator",
    "auth",
    "incremental",
    "parent",
    "columns",
    "rate_limit",
    "retry",
    "timeout",
    "pages_per_commit",
    "keep_headers",
    "skip_status",
}
# Mappings that defaults and a resource combine key by key.
_MERGED = ("params", "headers", "columns")


def load_resources(path: str | Path) -> dict[str, Resource]:
    """The resources of a YAML file (a relative path is relative to the calling file)."""
    file = Path(path)
    if not file.is_absolute():
        frame = inspect.currentframe()
        caller_file = frame.f_back.f_code.co_filename if frame and frame.f_back else "."
        caller = Path(caller_file).parent
        file = caller / file if (caller / file).exists() or not file.exists() else file
    if not file.exists():
        raise ConfigError(f"REST resources file {file} does not exist", "check the path")
    try:
        document = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{file}: not valid YAML{where}: {problem}") from None
    return parse_resources(document, str(file))


def parse_resources(document: Any, origin: str = "resources") -> dict[str, Resource]:
    """Resources from an already-parsed document (a dict shaped like the YAML above)."""
    top = _mapping(document, origin)
    _known(top, _TOP, origin)
    defaults = _mapping(top.get("defaults") or {}, f"{origin}: defaults")
    _known(defaults, _RESOURCE - {"name", "endpoint"}, f"{origin}: defaults")
    inherited = {k: top[k] for k in ("connection", "base_url") if top.get(k) is not None}
    items = top.get("resources")
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"{origin}: 'resources' must be a list of resources",
            "e.g. resources: [{name: orders, endpoint: /orders}]",
        )
    found: dict[str, Resource] = {}
    for position, item in enumerate(items, 1):
        entry = _mapping(item, f"{origin}: resource #{position}")
        name = entry.get("name")
        where = f"{origin}: resource {name!r}" if name else f"{origin}: resource #{position}"
        _known(entry, _RESOURCE, where)
        if not isinstance(name, str) or not entry.get("endpoint"):
            raise ConfigError(f"{where}: every resource needs a name and an endpoint")
        if name in found:
            raise ConfigError(f"{where}: two resources are named {name!r}")
        merged: dict[str, Any] = {**inherited, **defaults, **entry}
        for key in _MERGED:
            if key in defaults or key in entry:
                merged[key] = {
                    **_mapping(defaults.get(key) or {}, f"{origin}: defaults.{key}"),
                    **_mapping(entry.get(key) or {}, f"{where}: {key}"),
                }
        found[name] = _resource(merged, where)
    return found


def _resource(spec: dict[str, Any], where: str) -> Resource:
    options: dict[str, Any] = {}
    for key, value in spec.items():
        if value is None:
            continue
        if key == "paginator":
            options[key] = _build(value, PAGINATORS, "paginator", f"{where}: paginator")
        elif key == "auth":
            options[key] = _build(value, _AUTHS, "auth", f"{where}: auth")
        elif key == "incremental":
            options[key] = _dataclass(Incremental, value, f"{where}: incremental")
        elif key == "retry":
            options[key] = _dataclass(Retry, value, f"{where}: retry")
        elif key == "parent":
            parent = _mapping(value, f"{where}: parent")
            _known(parent, {"table", "params"}, f"{where}: parent")
            params = _mapping(parent.get("params") or {}, f"{where}: parent.params")
            options[key] = Parent(
                str(parent.get("table", "")), {str(k): str(v) for k, v in params.items()}
            )
        elif key in ("keep_headers", "skip_status"):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: {key} must be a list")
            options[key] = (
                tuple(str(v).lower() for v in value)
                if key == "keep_headers"
                else tuple(_int(v, f"{where}: {key}") for v in value)
            )
        elif key in ("rate_limit", "timeout"):
            options[key] = _number(value, f"{where}: {key}")
        elif key == "pages_per_commit":
            options[key] = _int(value, f"{where}: {key}")
        elif key in ("params", "headers", "columns"):
            options[key] = {
                str(k): v if key == "params" else str(v)
                for k, v in _mapping(value, f"{where}: {key}").items()
            }
        elif key in ("method",):
            options[key] = str(value).upper()
        else:
            options[key] = value if key == "body" else str(value)
    try:
        return Resource(**options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.hint) from None


def _build(value: Any, kinds: Mapping[str, type[Any]], what: str, where: str) -> Any:
    spec: dict[str, Any] = {"type": value} if isinstance(value, str) else _mapping(value, where)
    kind = spec.pop("type", None)
    if not isinstance(kind, str) or kind not in kinds:
        raise ConfigError(f"{where}: type must be one of {', '.join(kinds)}, not {kind!r}")
    if "scopes" in spec and isinstance(spec["scopes"], list):
        spec["scopes"] = tuple(spec["scopes"])
    built = _dataclass(kinds[kind], spec, f"{where} ({kind})")
    assert isinstance(built, Paginator | Auth)
    return built


def _dataclass(cls: type[Any], value: Any, where: str) -> Any:
    spec = _mapping(value, where)
    allowed = {f.name for f in dataclasses.fields(cls)}
    _known(spec, allowed, where)
    try:
        return cls(**spec)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}", f"keys: {', '.join(sorted(allowed))}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping (key: value), got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _known(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}",
            f"allowed: {', '.join(sorted(allowed))}",
        )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    return value
