"""cdc-apply: apply a change log (insert/update/delete) in log order.

Each row carries an operation (`op_column`: Debezium's c/r/u/d, or
insert/update/delete, or a change feed's `_change_type`) and a position in the
log (`sequence_by`: an LSN, binlog position, offset). Changes to one key within
an increment collapse to the last by sequence; the stored sequence guards the
target, so a change at or before what the table already holds is ignored and a
replay never moves a row backwards. Deletes remove the row, or stamp
`_deleted_at` (soft), keeping the sequence so late older changes stay ignored.
With soft deletes, a delete of a key the table does not hold (created and
deleted within one increment) still writes that tombstone, so a redelivered
older create cannot bring the row back.
"""

from __future__ import annotations

from ..._sql import q
from ...errors import ConfigError, DataError
from ._keyed import DELETE
from .base import CHANGE_COLUMNS, CHANGE_TYPE, RUN_TS, WriteContext, WriteOptions
from .merge import Merge

_INSERT = ("c", "r", "i", "insert", "create", "read", "snapshot")
_UPDATE = ("u", "update", "update_postimage")
_DELETE = ("d", "delete")


def _literals(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # fixed operation names, not user input


class CdcApply(Merge):
    name = "cdc-apply"
    summary = "apply insert/update/delete in log order"
    operation = "MERGE"

    def check(self, table: str, options: WriteOptions) -> None:
        super().check(table, options)
        if not options.sequence_by:
            raise ConfigError(
                f"table {table}: strategy 'cdc-apply' needs sequence_by (the log position column)",
                "add sequence_by='lsn' (or the column holding the change's position)",
            )

    def guard_column(self, options: WriteOptions) -> str | None:
        return options.sequence_by

    def control_columns(self, options: WriteOptions) -> set[str]:
        return set(CHANGE_COLUMNS) | {options.op_column}

    def order_columns(self, ctx: WriteContext, columns: list[str]) -> list[str]:
        return [ctx.options.sequence_by] if ctx.options.sequence_by else []

    def _op(self, columns: list[str], op_column: str) -> str:
        if op_column in columns:
            source = f"lower(CAST(i.{q(op_column)} AS VARCHAR))"
        elif CHANGE_TYPE in columns:
            source = f"i.{q(CHANGE_TYPE)}"
        else:
            return "NULL"
        return (
            f"CASE WHEN {source} IN ({_literals(_INSERT)}) THEN 'I' WHEN {source} IN ({_literals(_UPDATE)}) THEN 'U' "
            f"WHEN {source} IN ({_literals(_DELETE)}) THEN 'D' END"
        )

    def validate_increment(self, ctx: WriteContext, columns: list[str]) -> None:
        op = ctx.options.op_column
        if op not in columns and CHANGE_TYPE not in columns:
            raise DataError(
                f"table {ctx.table}: cdc-apply needs an operation column {op!r} in the increment",
                "select it in the transform, or set op_column=... in the declaration",
            )
        if op in columns:
            bad = ctx.con.sql(
                f"SELECT DISTINCT CAST(i.{q(op)} AS VARCHAR) FROM incoming i WHERE ({self._op(columns, op)}) IS NULL LIMIT 5"
            ).fetchall()
            if bad:
                raise DataError(
                    f"table {ctx.table}: unknown operation value(s) in column {op!r}: {', '.join(repr(b[0]) for b in bad)}",
                    "operations must be insert/update/delete or Debezium's c/r/u/d",
                )

    def delete_expression(self, ctx: WriteContext, columns: list[str]) -> str:
        return f"coalesce(({self._op(columns, ctx.options.op_column)}) = 'D', FALSE)"

    def keep_expression(self, ctx: WriteContext, columns: list[str]) -> str:
        if ctx.options.op_column in columns:
            return "TRUE"
        return super().keep_expression(ctx, columns)

    def inserts(self, ctx: WriteContext) -> str:
        rows = super().inserts(ctx)
        if ctx.options.deletes != "soft":
            return rows
        deleted_at = ctx.options.deleted_at
        tombstone = ", ".join(
            f"{RUN_TS} AS {q(c)}" if c == deleted_at else f"s.{q(c)}" for c in ctx.schema.names
        )
        return f"{rows} UNION ALL SELECT {tombstone} FROM fresh s WHERE s.{DELETE}"
