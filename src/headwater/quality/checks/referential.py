"""referential integrity: every non-NULL key of a row exists in another table.

The referenced table is read as last committed, through its Delta snapshot
(only the key columns are scanned); a missing referenced table fails the check.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..._sql import q
from .base import ROWS, CheckUnavailable, Env, RowCheck, scan


class References(RowCheck):
    kind = "references"
    joins = True

    def __init__(
        self, columns: list[str], parent: str, parent_columns: list[str], **kwargs: Any
    ) -> None:
        kwargs.setdefault(
            "name", f"references({', '.join(columns)} -> {parent}.{', '.join(parent_columns)})"
        )
        super().__init__(columns[0], **kwargs)
        self.keys = columns
        self.parent = parent
        self.parent_keys = parent_columns
        self.view = "__hw_ref_" + "_".join([parent.replace(".", "__"), *parent_columns])

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.keys)

    def prepare(self, env: Env) -> None:
        if env.project is None:
            raise CheckUnavailable(f"table {self.parent} cannot be read here")
        target = env.project.target(self.parent)
        if not target.refresh().exists:
            raise CheckUnavailable(f"the referenced table {self.parent} does not exist yet")
        schema = target.schema
        assert schema is not None
        missing = [c for c in self.parent_keys if schema.get_field_index(c) < 0]
        if missing:
            raise CheckUnavailable(f"the referenced table {self.parent} has no column {missing[0]}")
        # Only the key columns are scanned; filters and projections reach the Parquet files.
        scan(env.con, self.view, target.dataset())

    def predicate(self, schema: pa.Schema) -> tuple[str, list[Any]]:
        present = " AND ".join(f"{ROWS}.{q(c)} IS NOT NULL" for c in self.keys)
        if len(self.keys) == 1:
            parent = q(self.parent_keys[0])
            inner = f"SELECT {parent} FROM {self.view} WHERE {parent} IS NOT NULL"
            return f"{present} AND {ROWS}.{q(self.keys[0])} NOT IN ({inner})", []
        match = " AND ".join(
            f"r.{q(p)} = {ROWS}.{q(c)}" for c, p in zip(self.keys, self.parent_keys, strict=True)
        )
        return f"{present} AND NOT EXISTS (SELECT 1 FROM {self.view} r WHERE {match})", []

    def describe(self) -> str:
        return f"has no match in {self.parent} ({', '.join(self.parent_keys)})"

    @property
    def expected(self) -> Any:
        return {"table": self.parent, "columns": self.parent_keys}
