"""Small helpers for generated SQL: identifiers are always quoted, values always bound."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def q(name: str) -> str:
    """Quote an identifier for DuckDB (and standard SQL)."""
    return '"' + name.replace('"', '""') + '"'


def cols(names: Iterable[str], prefix: str = "") -> str:
    p = f"{prefix}." if prefix else ""
    return ", ".join(p + q(n) for n in names)


def key_match(keys: Iterable[str], left: str, right: str) -> str:
    """NULL-safe equality of key columns between two relations."""
    return (
        " AND ".join(f"{left}.{q(k)} IS NOT DISTINCT FROM {right}.{q(k)}" for k in keys) or "TRUE"
    )


def same_values(columns: Iterable[str], left: str, right: str) -> str:
    return (
        " AND ".join(f"{left}.{q(c)} IS NOT DISTINCT FROM {right}.{q(c)}" for c in columns)
        or "TRUE"
    )


def canonical_hash(columns: Iterable[str], types: dict[str, str], alias: str = "") -> str:
    """md5 over an unambiguous text form of the columns (NULL-safe, length-prefixed).

    Each value is written as `<len>:<text>` and NULL as `N`, so ('a', NULL) and
    (NULL, 'a') or values containing the separator never collide. Temporal and
    nested values use explicit formats so the hash does not depend on display settings.
    """
    p = f"{alias}." if alias else ""
    parts = []
    for name in columns:
        ref = p + q(name)
        kind = types.get(name, "").upper()
        if kind.startswith("TIMESTAMP"):
            text = f"strftime({ref}, '%Y-%m-%dT%H:%M:%S.%f')"
        elif kind == "DATE":
            text = f"strftime({ref}, '%Y-%m-%d')"
        elif kind.startswith(("STRUCT", "MAP")) or kind.endswith("[]"):
            text = f"CAST(to_json({ref}) AS VARCHAR)"
        elif kind == "BLOB":
            text = f"hex({ref})"
        else:
            text = f"CAST({ref} AS VARCHAR)"
        parts.append(
            f"CASE WHEN {ref} IS NULL THEN 'N' ELSE CAST(length({text}) AS VARCHAR) || ':' || {text} END"
        )
    if not parts:
        return "md5('')"
    return "md5(" + " || '|' || ".join(parts) + ")"


def scalar(con: Any, sql: str, params: list[Any] | None = None) -> Any:
    """The single value of a query (the result is drained, as DuckDB requires)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None
