"""Table declarations: `@table(...)` on a function, or `table(...)` on its own.

    @table("silver.orders", inputs=["bronze.orders"], keys=["order_id"],
           strategy="merge", version_column="updated_at")
    def orders(orders):                      # the changes of bronze.orders
        return orders.filter("status <> 'test'")

A table reads either one `source` (a connector) or `inputs` (other tables: their
changes since last run by default, or `snapshot("layer.table")` for the whole
table); a stream that joins two connectors takes them by name,
`source={"person": files(...), "auction": files(...)}`. Inputs reach the
function as DuckDB relations, matched to parameters by name (a single input
goes to the single parameter); a parameter named `ctx` receives the run context. The function returns a DuckDB relation, an Arrow
table or reader, or a SQL string over the inputs. Without a function, the input
is written as it arrives.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from ._units import parse_size
from .errors import ConfigError
from .orchestrate.options import Duration, Orchestration, orchestration
from .orchestrate.retries import RetryPolicy
from .orchestrate.sla import Sla
from .orchestrate.triggers.base import Trigger
from .quality.gate import Gate
from .sources.base import Source
from .sources.upstream import Upstream
from .stream.spec import Stream
from .tables.schema_policy import POLICIES
from .tables.strategies import WriteOptions, WriteStrategy, get_strategy

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STANDARD_LAYERS = ("bronze", "silver", "gold")


def changes(table: str) -> Upstream:
    """Input: the rows of `table` that changed since this table last read it."""
    return Upstream(table, "changes")


def snapshot(table: str) -> Upstream:
    """Input: all of `table` as of the run (re-read whenever it has a new version)."""
    return Upstream(table, "snapshot")


@dataclass
class TableSpec:
    """A declared table: where its data comes from and how it is written."""

    name: str
    inputs: dict[str, Source]
    strategy: str  # the strategy's name
    options: WriteOptions
    transform: Callable[..., Any] | None = None
    schema_policy: str = "evolve"
    description: str = ""
    change_feed: bool | None = None
    allow_full_refresh: bool = True
    target_file_size: int | None = None
    compression: str | None = None
    zorder_by: tuple[str, ...] = ()
    defined_at: str = ""
    parameters: list[str] = field(default_factory=list)
    # Checks guarding publication: a data contract file, or any object with the
    # quality.Gate methods (write-audit-publish).
    contract: str | None = None
    gate: Gate | None = None
    # Declared tables its contract's checks read (relationships): they run first.
    checked_against: tuple[str, ...] = ()
    # The configured strategy object (set from `strategy` when not given).
    writer: WriteStrategy | None = None

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = get_strategy(self.strategy)

    # When `headwater serve` / `headwater backfill` run it (docs/orchestrate.md).
    orchestration: Orchestration = field(default_factory=Orchestration)
    # A streaming table: event time, watermark and stream operators (docs/streaming.md).
    stream: Stream | None = None

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def app_id(self) -> str:
        """The Delta transaction application id under which this table's batches commit."""
        return f"headwater/{self.name}"

    @property
    def source(self) -> Source | None:
        """The single connector input, for tables that land a source."""
        if len(self.inputs) == 1:
            (only,) = self.inputs.values()
            return None if isinstance(only, Upstream) else only
        return None

    def upstream_tables(self) -> list[str]:
        read = {t for s in self.inputs.values() for t in s.upstream_tables()}
        # A stream's temporal joins read their dimension tables: those run first.
        joined = set(self.stream.upstream_tables()) if self.stream is not None else set()
        return sorted(read | joined | set(self.checked_against))


_collector: ContextVar[list[TableSpec] | None] = ContextVar("headwater_collector", default=None)
_declared: list[TableSpec] = []


def declared_tables() -> list[TableSpec]:
    """Tables declared outside project discovery (e.g. in a script or a test)."""
    return list(_declared)


class _Collector:
    """Collects the declarations made while importing a project's pipeline files."""

    def __enter__(self) -> list[TableSpec]:
        self._items: list[TableSpec] = []
        self._token = _collector.set(self._items)
        return self._items

    def __exit__(self, *exc: object) -> None:
        _collector.reset(self._token)


def collecting() -> _Collector:
    return _Collector()


class _Declaration:
    """Returned by `table(...)`: registered at once; calling it attaches a function."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        spec = self.spec
        parameters = list(inspect.signature(function).parameters)
        data_params = [p for p in parameters if p != "ctx"]
        if len(spec.inputs) == 1:
            if len(data_params) > 1:
                raise ConfigError(
                    f"{spec.defined_at}: table {spec.name} has one input but its function takes {data_params}",
                    "take one parameter for the input (and optionally ctx)",
                )
        else:
            unknown = [p for p in data_params if p not in spec.inputs]
            if unknown:
                raise ConfigError(
                    f"{spec.defined_at}: table {spec.name}: parameter(s) {unknown} match no input",
                    f"inputs are: {', '.join(spec.inputs)}",
                )
        spec.transform = function
        spec.parameters = parameters
        function.__headwater_table__ = spec  # type: ignore[attr-defined]
        return function


def table(
    name: str,
    *,
    source: Source | Mapping[str, Source] | None = None,
    inputs: Sequence[str | Upstream] | dict[str, str | Upstream] | None = None,
    strategy: str | WriteStrategy = "append",
    keys: Sequence[str] = (),
    partition_by: Sequence[str] = (),
    order_by: str | None = None,
    version_column: str | None = None,
    tracked_columns: Sequence[str] | None = None,
    valid_from_column: str | None = None,
    sequence_by: str | None = None,
    op_column: str = "_op",
    deletes: Literal["hard", "soft"] = "hard",
    scd2_columns: dict[str, str] | None = None,
    schema: str = "evolve",
    description: str = "",
    change_feed: bool | None = None,
    allow_full_refresh: bool | None = None,
    target_file_size: str | int | None = None,
    compression: str | None = None,
    zorder_by: Sequence[str] = (),
    contract: str | None = None,
    gate: Gate | None = None,
    trigger: Trigger | None = None,
    interval: Duration | None = None,
    safety_delay: Duration | None = None,
    lookback: Duration | None = None,
    retries: RetryPolicy | int | None = None,
    sla: Sla | Sequence[Sla] | None = None,
    stream: Stream | None = None,
) -> _Declaration:
    """Declare a table. See the module docstring and docs/tables.md for every option."""
    frame = inspect.stack()[1]
    defined_at = f"{frame.filename}:{frame.lineno}"
    if not NAME.match(name):
        raise ConfigError(
            f"{defined_at}: table name {name!r} must be 'layer.table' (e.g. 'silver.orders')"
        )
    strategy_name = strategy.name if isinstance(strategy, WriteStrategy) else strategy
    if (source is None) == (inputs is None):
        raise ConfigError(
            f"{defined_at}: table {name} needs exactly one of source=... or inputs=[...]"
        )
    resolved: dict[str, Source] = {}
    if source is not None:
        # Several named sources: a stream joining them (interval_join names the second).
        named = dict(source) if isinstance(source, Mapping) else {"source": source}
        for key, connector in named.items():
            if not isinstance(connector, Source):
                raise ConfigError(
                    f"{defined_at}: table {name}: source must be a connector from "
                    "headwater.sources (or a dict of them, by name)"
                )
            if not ALIAS.match(key) or key == "ctx":
                raise ConfigError(
                    f"{defined_at}: table {name}: source name {key!r} is not a valid parameter name"
                )
            resolved[key] = connector
        if not resolved:
            raise ConfigError(f"{defined_at}: table {name}: source={{}} names no connector")
    else:
        assert inputs is not None
        items = inputs.items() if isinstance(inputs, dict) else [(None, i) for i in inputs]
        for alias, item in items:
            upstream = (
                item
                if isinstance(item, Upstream)
                else changes(str(item))
                if strategy_name != "overwrite"
                else snapshot(str(item))
            )
            if not NAME.match(upstream.table):
                raise ConfigError(
                    f"{defined_at}: table {name}: input {upstream.table!r} must be 'layer.table'"
                )
            key = alias or upstream.table.split(".", 1)[1]
            if not ALIAS.match(key) or key == "ctx":
                raise ConfigError(
                    f"{defined_at}: table {name}: input name {key!r} is not a valid parameter name"
                )
            if key in resolved:
                raise ConfigError(
                    f"{defined_at}: table {name}: two inputs are both called {key!r}",
                    "name them: inputs={'a': 'x.t', 'b': 'y.t'}",
                )
            resolved[key] = upstream
        if not resolved:
            raise ConfigError(f"{defined_at}: table {name}: inputs=[] lists no table")
    if schema not in POLICIES:
        raise ConfigError(
            f"{defined_at}: table {name}: schema policy must be one of {', '.join(POLICIES)}"
        )
    columns = dict(scd2_columns or {})
    unknown_columns = set(columns) - {"valid_from", "valid_to", "is_current", "row_hash"}
    if unknown_columns:
        raise ConfigError(
            f"{defined_at}: table {name}: scd2_columns has unknown keys {sorted(unknown_columns)}"
        )
    options = WriteOptions(
        keys=tuple(keys),
        partition_by=tuple(partition_by),
        order_by=order_by,
        version_column=version_column,
        tracked_columns=tuple(tracked_columns) if tracked_columns is not None else None,
        valid_from_column=valid_from_column,
        sequence_by=sequence_by,
        op_column=op_column,
        deletes=deletes,
        **columns,
    )
    try:
        writer = strategy if isinstance(strategy, WriteStrategy) else get_strategy(strategy)
        writer.check(name, options)
    except ConfigError as exc:
        raise ConfigError(f"{defined_at}: {exc.message}", exc.hint) from None
    if deletes not in ("hard", "soft"):
        raise ConfigError(f"{defined_at}: table {name}: deletes must be 'hard' or 'soft'")
    scheduling = orchestration(
        defined_at, name, trigger, interval, safety_delay, lookback, retries, sla
    )
    spec = TableSpec(
        name=name,
        inputs=resolved,
        strategy=strategy_name,
        writer=writer,
        options=options,
        schema_policy=schema,
        description=description,
        change_feed=change_feed,
        # Rebuilding an SCD2 or dimension table from its source would erase its history.
        allow_full_refresh=allow_full_refresh
        if allow_full_refresh is not None
        else strategy_name not in ("scd2", "dimension"),
        target_file_size=parse_size(target_file_size, "target_file_size")
        if target_file_size is not None
        else None,
        compression=compression,
        zorder_by=tuple(zorder_by),
        defined_at=defined_at,
        contract=contract,
        gate=gate,
        orchestration=scheduling,
    )
    if stream is not None:
        if not isinstance(stream, Stream):
            raise ConfigError(
                f"{defined_at}: table {name}: stream= takes stream(...) from headwater.stream"
            )
        spec.stream = stream
        stream.bind(spec)
    collector = _collector.get()
    (collector if collector is not None else _declared).append(spec)
    return _Declaration(spec)
