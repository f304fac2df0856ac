"""Running a streaming table: one micro-batch at a time, through its operators.

The engine's run loop (engine/run.py) reads micro-batches, stages their output
and commits it; this module turns a micro-batch into that output:

    event time -> watermark per event -> dedup -> temporal joins -> interval join
      -> windows (or the rows themselves) -> output rows, `__late`, `__state`, checkpoint

and keeps the operator state's working copy (state.py) in step with what the
table committed. A micro-batch that was cut short by a crash after its side
tables were committed is replayed exactly: `replay_plan` finds the positions
and dimension versions that attempt recorded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._sql import q
from ..engine.position import META_KEY, CommittedState
from ..engine.side_outputs import SideOutput, side_table_name
from ..errors import ConfigError, HeadwaterError
from ..sources.base import Increment, ReadContext
from . import LAG, PARTITION_COLUMN, deduplicate, emit, lateness, windows
from .checkpoint import Checkpoint
from .frame import INTERNAL, Frame, micros
from .inputs import MicroBatch, micro_batches
from .joins import interval, temporal
from .metrics import rates
from .spec import Stream, TemporalJoin
from .state import PREFIX, SIDE, STATE_SCHEMA, StateStore, Tag
from .timestamps import read_event_time
from .watermark import advance

if TYPE_CHECKING:
    from ..declare import TableSpec
    from ..project import Project

log = logging.getLogger("headwater.stream")
LATE = "late"  # <table>__late
EMITTED = "emitted"  # the rows a then= step reads (by name in SQL it returns)


@dataclass
class Produced:
    """What a micro-batch produced: rows for the table, side outputs, the checkpoint."""

    rows: pa.Table | None
    side: dict[str, SideOutput]
    checkpoint: dict[str, Any]
    metrics: Counter[str]
    rejected: pa.Table | None
    watermark: int | None


def state_path(project: Project, table: str) -> Path:
    return project.root / ".headwater" / "stream" / f"{table}.duckdb"


class StreamRun:
    """One run of a streaming table: its state store, checkpoint and micro-batches."""

    def __init__(
        self,
        spec: TableSpec,
        project: Project,
        committed: CommittedState,
        read_ctx: ReadContext,
        full_refresh: bool,
        threads: int,
    ) -> None:
        assert spec.stream is not None
        self.spec = spec
        self.stream: Stream = spec.stream
        self.project = project
        self.read_ctx = read_ctx
        self.full_refresh = full_refresh
        self.checkpoint = Checkpoint() if full_refresh else Checkpoint.from_json(committed.stream)
        self.positions: dict[str, Any] = {} if full_refresh else dict(committed.positions)
        memory = self.stream.state_memory or project.config.defaults.memory_limit
        self.store = StateStore(state_path(project, spec.name), memory, threads)
        self._previous: Checkpoint | None = None
        self._prepare(committed)
        self.plan = None if full_refresh else replay_plan(project, spec.name, committed.batch + 1)

    # -- state ---------------------------------------------------------------------------
    def _prepare(self, committed: CommittedState) -> None:
        """Bring the working copy to what the table committed (or rebuild it)."""
        version = committed.side_versions.get(SIDE)
        if self.full_refresh:
            self.store.reset()
            return
        wanted = Tag(committed.batch, version)
        if self.store.tag == wanted:
            return
        restart = self.checkpoint.restart
        if (
            self.stream.guarantee == "at-least-once"
            and restart is not None
            and self.checkpoint.exported < committed.batch
        ):
            # The durable state is older than the table: go back to it and replay.
            self.positions = dict(restart["positions"])
            self.checkpoint = Checkpoint.from_json(restart["checkpoint"])
            self.checkpoint.restart = restart
        log.info("table %s: rebuilding the state store from %s", self.spec.name, SIDE)
        rows = None
        if version is not None:
            target = self.project.target(side_table_name(self.spec.name, SIDE))
            snapshot = target.load(version)
            if snapshot is not None:
                rows = target.dataset(table=snapshot).to_table()
        self.store.rebuild(rows, self.checkpoint.schemas, wanted)

    def close(self) -> None:
        self.store.close()

    # -- micro-batches ---------------------------------------------------------------------
    def micro_batches(self) -> Iterator[MicroBatch]:
        """Micro-batches after the committed positions; a crashed one first, exactly.

        From inputs that read files in place, the next micro-batch is read while the
        caller processes and commits this one (parsing overlaps the operators and
        the Delta commits)."""
        batches = self._micro_batches()
        if all(_reads_ahead(source) for source in self.spec.inputs.values()):
            batches = _read_ahead(batches)
        yield from batches

    def _micro_batches(self) -> Iterator[MicroBatch]:
        positions = self.positions
        if self.plan is not None:
            until = self.plan["positions"]
            yield from micro_batches(self.spec.inputs, self.stream, positions, self.read_ctx, until)
            # Go on from where the replay ends, not from `self.positions`: read ahead,
            # the next micro-batch is read before the replayed one is committed.
            positions = {**positions, **until}
        yield from micro_batches(self.spec.inputs, self.stream, positions, self.read_ctx)

    def process(self, data: dict[str, pa.Table], micro: MicroBatch, batch: int) -> Produced:
        """Turn one micro-batch (after the table's function) into its output."""
        started = time.monotonic()
        stream = self.stream
        checkpoint = self.checkpoint.copy()
        self._previous = self.checkpoint
        metrics: Counter[str] = Counter()
        self.store.begin()
        try:
            produced = self._process(data, micro, batch, checkpoint, metrics)
        except BaseException:
            self.store.rollback()
            raise
        rates(metrics, time.monotonic() - started, self.checkpoint.metrics.get("ended_at_ms"))
        rows, size = self.store.size()
        metrics["state_rows"], metrics["state_bytes"] = rows, size
        lag = [int(i.info[LAG]) for i in micro.increments.values() if i.info.get(LAG) is not None]
        if lag:
            metrics["consumer_lag"] = sum(lag)
        checkpoint.metrics = {
            **{k: float(v) for k, v in sorted(metrics.items())},
            "ended_at_ms": round(datetime.now(UTC).timestamp() * 1000),
        }
        if stream.guarantee == "at-least-once":
            # Where to go back to if the working copy is lost: the last exported state.
            if checkpoint.exported == batch:
                point = checkpoint.copy()
                point.restart = None
                positions = {**self.positions, **micro.positions}
                checkpoint.restart = {"positions": positions, "checkpoint": point.to_json()}
            elif checkpoint.restart is None:
                checkpoint.restart = {"positions": {}, "checkpoint": {}}
        self.checkpoint = checkpoint
        produced.checkpoint = checkpoint.to_json()
        produced.metrics = metrics
        return produced

    def _process(
        self,
        data: dict[str, pa.Table],
        micro: MicroBatch,
        batch: int,
        checkpoint: Checkpoint,
        metrics: Counter[str],
    ) -> Produced:
        stream = self.stream
        aliases = list(data)
        times: list[np.ndarray] = []
        tables: dict[str, pa.Table] = {}
        rejected: list[pa.Table] = []
        codes: list[np.ndarray] = []
        names: list[str] = []
        for alias in aliases:
            table = data[alias]
            if table.num_rows == 0 and stream.event_time.column not in table.schema.names:
                continue  # nothing arrived (an increment that only moves the position)
            ts, good, bad = read_event_time(
                table, stream.event_time, self.spec.name, self._describe(alias)
            )
            if bad is not None:
                rejected.append(bad)
                metrics["quarantined_events"] += bad.num_rows
            tables[alias] = good
            times.append(ts)
            codes.append(self._partition_codes(alias, good, micro.increments.get(alias), names))
        all_times = np.concatenate(times) if times else np.empty(0, np.int64)
        all_codes = np.concatenate(codes) if codes else np.empty(0, np.int64)
        moved = advance(
            checkpoint.watermark,
            all_times,
            all_codes,
            names,
            micros(stream.watermark),
            None if stream.idle_timeout is None else micros(stream.idle_timeout),
            list(self.spec.inputs),
        )
        checkpoint.watermark = moved.state
        checkpoint.lateness = lateness.add(
            checkpoint.lateness, lateness.bucket_counts(moved.behind)
        )
        metrics["events_in"] += len(all_times)
        watermark = moved.state.watermark
        if watermark is not None and moved.state.stream_max is not None:
            metrics["watermark_delay_ms"] = (moved.state.stream_max - watermark) // 1000
        frame = Frame(
            self.spec.name,
            stream,
            self.store,
            batch,
            watermark if watermark is not None else np.iinfo(np.int64).min // 4,
            metrics=metrics,
        )
        seq = np.arange(checkpoint.seq, checkpoint.seq + len(all_times), dtype=np.int64)
        checkpoint.seq += len(all_times)
        offset = 0
        registered: dict[str, str] = {}
        for alias, table in tables.items():
            n = table.num_rows
            events = table.append_column("_ts", pa.array(all_times[offset : offset + n]))
            events = events.append_column("_seq", pa.array(seq[offset : offset + n]))
            events = events.append_column("_wm", pa.array(moved.watermark[offset : offset + n]))
            offset += n
            clash = [c for c in INTERNAL if c in table.schema.names]
            if clash:
                raise ConfigError(
                    f"table {self.spec.name}: input {alias} has column(s) {clash}, "
                    "which streams use for event time, arrival and watermark",
                    "rename them in the table's function",
                )
            name = f"_events_{alias}"
            self.store.con.register(name, events)
            registered[alias] = name
        try:
            rows = self._operators(frame, registered, checkpoint, aliases)
            side = self._side_outputs(frame, checkpoint, bool(rejected))
            # On failure the caller rolls the transaction back, temp tables with it;
            # dropping them here would hide the error behind an aborted transaction.
            frame.drop_temps()
        finally:
            for name in registered.values():
                with contextlib.suppress(duckdb.Error):
                    self.store.con.unregister(name)
        return Produced(
            rows,
            side,
            {},
            metrics,
            pa.concat_tables(rejected, promote_options="permissive") if rejected else None,
            watermark,
        )

    def _operators(
        self, frame: Frame, events: dict[str, str], checkpoint: Checkpoint, aliases: list[str]
    ) -> pa.Table | None:
        stream = self.stream
        main_alias = aliases[0]
        source = self._describe(main_alias)
        main = events.get(main_alias)
        if main is not None:
            if stream.dedup is not None:
                main = deduplicate.deduplicate(frame, main, source)
            dims = dict(self.plan_dims())
            for join in stream.joins:
                if isinstance(join, TemporalJoin):
                    version = dims.get(join.table)
                    if version is None:
                        version = temporal.current_version(self.project, join, self.spec.name)
                    checkpoint.dims[join.table] = version
                    main = temporal.join(frame, main, join, self.project, version)
        paired = stream.interval_join
        if paired is not None:
            # A side without events in this micro-batch joins as an empty relation shaped
            # like its held rows; a side that never delivered anything cannot join yet.
            main = main or self._held_shape(frame, interval.LEFT)
            other = events.get(paired.other) or self._held_shape(frame, interval.RIGHT)
            if main is None or other is None:
                return None
            main = interval.join(frame, main, other, paired, (source, self._describe(paired.other)))
        if main is None:
            return None  # nothing arrived (an increment that only moves the position)
        if stream.aggregating:
            rows = windows.aggregate(stream.window, frame, main, source)
            if frame.retractions and rows is not None:
                rows = _with_retractions(rows, frame.retractions)
        else:
            rows = frame.con.sql(
                f"SELECT * EXCLUDE ({', '.join(INTERNAL)}) FROM {q(main)} ORDER BY _seq"
            ).to_arrow_table()
            frame.metrics["emitted"] += rows.num_rows
        if stream.then is not None and rows is not None:
            rows = self._then(frame, rows)
        deduplicate.expire(frame)
        if stream.interval_join is not None:
            interval.expire(frame, stream.interval_join)
        return rows

    def _then(self, frame: Frame, rows: pa.Table) -> pa.Table:
        """The stream's step after its operators, over the rows they emitted."""
        assert self.stream.then is not None
        con = frame.con
        con.register(EMITTED, rows)
        try:
            result = self.stream.then(con.table(EMITTED))
            if isinstance(result, str):
                result = con.sql(result)
            return result.to_arrow_table()
        except duckdb.Error as exc:
            raise HeadwaterError(
                f"table {self.spec.name}: SQL failed in the stream's then= step: "
                f"{str(exc).splitlines()[0]}",
                f"check the column names of the emitted rows: {', '.join(rows.schema.names)}",
            ) from exc
        finally:
            con.unregister(EMITTED)

    def _held_shape(self, frame: Frame, operator: str) -> str | None:
        """An empty relation with the columns of an interval join side's held events."""
        if not self.store.has(operator):
            return None
        return frame.materialise(
            "held_shape",
            f"SELECT * EXCLUDE (_key, _born), NULL::BIGINT AS _wm FROM {q(PREFIX + operator)} "
            "WHERE FALSE",
        )

    def plan_dims(self) -> dict[str, int]:
        if self.plan is None:
            return {}
        stream = self.plan.get("stream") or {}
        return {str(k): int(v) for k, v in (stream.get("dims") or {}).items()}

    def _side_outputs(
        self, frame: Frame, checkpoint: Checkpoint, rejected: bool
    ) -> dict[str, SideOutput]:
        side: dict[str, SideOutput] = {}
        # The first micro-batch of a full refresh starts `__late` over, as the table.
        restart = self.full_refresh and checkpoint.seq == frame.metrics["events_in"]
        late: pa.Table | None = None
        if frame.late:
            late = pa.concat_tables(frame.late, promote_options="permissive")
        elif restart:
            earlier = self.project.target(side_table_name(self.spec.name, LATE)).refresh()
            if earlier.exists:
                late = pa.schema(earlier.table.schema()).empty_table()
        if late is not None:
            side[LATE] = SideOutput(
                late,
                "overwrite" if restart else "append",
                description=f"events too late for {self.spec.name}",
            )
        checkpointing = self.stream.guarantee == "exactly-once" or (
            frame.batch % self.stream.checkpoint_every == 0
        )
        if checkpointing:
            # The changelog is rewritten as the live rows when it has grown well past
            # them, when the changes outnumber them (windows that come and go: the
            # rewrite is the smaller write), and on a full refresh; otherwise the
            # changes are appended.
            live_rows = self.store.size()[0]
            compact = (
                restart
                or checkpoint.log_rows > 2 * live_rows + COMPACT_SLACK
                or self.store.pending() > live_rows + COMPACT_SLACK
            )
            if compact:
                state = self.store.export_all(frame.batch)
                checkpoint.log_rows = state.num_rows
                side[SIDE] = SideOutput(state, "overwrite", description=_STATE_DOC)
                frame.metrics["state_compacted"] += 1
            else:
                changes = self.store.export(checkpoint.exported, frame.batch)
                if changes is not None:
                    checkpoint.log_rows += changes.num_rows
                    side[SIDE] = SideOutput(changes, "append", description=_STATE_DOC)
            checkpoint.exported = frame.batch
            checkpoint.schemas = self.store.schemas()
        if rejected and not side:
            # The first durable write of a micro-batch records its end positions (a replay
            # must read the same rows): make it a side commit even when nothing else is.
            side[SIDE] = SideOutput(STATE_SCHEMA.empty_table(), "append", description=_STATE_DOC)
        return side

    def committed(self, batch: int, side_versions: dict[str, int]) -> None:
        """The table committed the micro-batch: keep the working copy's changes."""
        self.store.commit(Tag(batch, side_versions.get(SIDE)))
        self.full_refresh = False
        self.plan = None

    def abandon(self) -> None:
        """The micro-batch was not committed: forget its changes."""
        self.store.rollback()
        if self._previous is not None:
            self.checkpoint = self._previous
        self.plan = None

    def advance_positions(self, positions: dict[str, Any]) -> None:
        self.positions = dict(positions)

    # -- helpers -----------------------------------------------------------------------------
    def _describe(self, alias: str) -> str:
        return f"{alias} ({self.spec.inputs[alias].describe()})"

    def _partition_codes(
        self, alias: str, table: pa.Table, increment: Increment | None, names: list[str]
    ) -> np.ndarray:
        """Partition of each row as a code into `names` (extended in place)."""
        source = self.spec.inputs[alias]
        column = (
            self.stream.partition_column
            or (increment.info.get(PARTITION_COLUMN) if increment is not None else None)
            or getattr(source, "partition_column", None)
        )
        if column is None or column not in table.schema.names:
            if column is not None and self.stream.partition_column is not None:
                raise ConfigError(
                    f"table {self.spec.name}: partition column {column!r} is not in the "
                    f"events of {self._describe(alias)}"
                )
            key = alias
            if key not in names:
                names.append(key)
            return np.full(table.num_rows, names.index(key), dtype=np.int64)
        encoded = pc.dictionary_encode(pc.cast(table.column(column), pa.string())).combine_chunks()
        local = [f"{alias}/{v}" for v in encoded.dictionary.to_pylist()]
        mapping = []
        for key in local:
            if key not in names:
                names.append(key)
            mapping.append(names.index(key))
        indices = np.asarray(
            encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64
        )
        null_key = f"{alias}/"
        if (indices < 0).any():
            if null_key not in names:
                names.append(null_key)
            mapping.append(names.index(null_key))
        lookup = np.asarray(mapping, dtype=np.int64)
        return lookup[np.where(indices < 0, len(mapping) - 1, indices)]


_STATE_DOC = "operator state of a streaming table (a changelog of its keys, as JSON)"
COMPACT_SLACK = 10_000  # changelog rows tolerated beyond twice the live state


def _reads_ahead(source: object) -> bool:
    """Whether reading `source` ahead of the commits is safe: files read in place
    (acknowledging them does nothing, reading them changes nothing)."""
    from ..sources.files import FilesSource

    return type(source) is FilesSource and not source.archive_to


def _read_ahead(batches: Iterator[MicroBatch]) -> Iterator[MicroBatch]:
    """`batches`, each next one read on a thread while the caller has this one."""
    with ThreadPoolExecutor(1, thread_name_prefix="headwater-read") as pool:
        pending: Future[MicroBatch | None] = pool.submit(next, batches, None)
        try:
            while (micro := pending.result()) is not None:
                pending = pool.submit(next, batches, None)
                yield micro
        finally:
            # The caller stopped (or failed): let the read in flight end, then close.
            with contextlib.suppress(BaseException):
                pending.result()
            batches.close()  # type: ignore[attr-defined]


def _with_retractions(rows: pa.Table, retractions: list[pa.Table]) -> pa.Table:
    gone = pa.concat_tables(retractions, promote_options="permissive")
    rows = rows.append_column("_change_type", pa.array(["insert"] * rows.num_rows, pa.string()))
    gone = gone.append_column("_change_type", pa.array(["delete"] * gone.num_rows, pa.string()))
    return pa.concat_tables([rows, gone], promote_options="permissive")


def replay_plan(project: Project, table: str, batch: int) -> dict[str, Any] | None:
    """The end positions (and checkpoint) a crashed attempt of `batch` recorded in a
    side commit, or None when no side table holds that batch."""
    for name in (SIDE, LATE, "quarantine"):
        target = project.target(side_table_name(table, name)).refresh()
        snapshot = target.load()
        if snapshot is None:
            continue
        app = f"headwater/{side_table_name(table, name)}"
        if (snapshot.transaction_version(app) or 0) < batch:
            continue
        for entry in snapshot.history(64):
            meta = entry.get(META_KEY)
            if (
                isinstance(meta, dict)
                and meta.get("app") == app
                and meta.get("batch") == batch
                and meta.get("positions")
            ):
                return {"positions": meta["positions"], "stream": meta.get("stream")}
    return None


def check(spec: TableSpec) -> None:
    """Refuse what a streaming table cannot do, before reading anything."""
    if spec.transform is not None and len(spec.inputs) > 1:
        raise ConfigError(
            f"{spec.defined_at}: table {spec.name}: a stream with two inputs takes no function",
            "pre-process each input in a table of its own",
        )


__all__ = ["Produced", "StreamRun", "check", "emit", "replay_plan", "state_path"]
