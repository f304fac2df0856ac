"""Running a table: the commit protocol end to end.

    read the committed batch and positions from the table
      -> pull the increment after them            (failpoint after_read)
      -> transform, fit the schema, stage files   (failpoint after_stage)
      -> commit files + batch + positions at once (failpoint after_commit)
      -> acknowledge the source

A crash anywhere before the commit leaves only unreferenced files and the old
position, so the next run pulls the same increment again; a crash after it
finds the new position in the table, so nothing is applied twice. A concurrent
writer that commits first makes this attempt start again from the new state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..declare import TableSpec
from ..errors import (
    CommitConflict,
    ConfigError,
    DataQualityError,
    HeadwaterError,
    UpstreamNotReady,
    failure_kind,
)
from ..project import Project
from ..quality.audit import record as record_checks
from ..quality.gate import CheckResult, Gate
from ..quality.gates import gate_for
from ..sources.base import Increment, ReadContext
from ..sources.upstream import Upstream
from ..tables.delta import DeltaTarget
from ..tables.strategies import StagedWrite, WriteContext, WriteStrategy, get_strategy
from ..tables.strategies.base import CHANGE_TYPE
from ..transform.graph import reads_changes
from .commit import CommitRequest, ConflictRetry, commit
from .context import RunContext
from .failpoints import failpoint
from .interval import Interval
from .lock import table_lock
from .position import CommittedState, find_commit_version, read_committed_state
from .quarantine import quarantine_name, write_quarantine
from .schema_fit import fit_increment
from .side_outputs import Outputs, SideOutput, write_side_output

log = logging.getLogger("headwater.run")
READ_BATCH = 1 << 17
Progress = Callable[[str, str], None]
# The last progress message of every table run.
FINISHED = "finished"


@dataclass
class TableRun:
    """The outcome of running one table."""

    table: str
    run_id: str
    status: str = "up-to-date"  # committed | up-to-date | failed | upstream-failed
    commits: int = 0
    version: int | None = None
    metrics: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    error: str | None = None
    hint: str | None = None
    exception: BaseException | None = None
    # transient | upstream-not-ready | data-quality | fatal (errors.failure_kind)
    failure: str | None = None
    positions: dict[str, Any] = field(default_factory=dict)  # committed after the run
    side_versions: dict[str, int] = field(default_factory=dict)  # recorded by its last commit


@dataclass
class Stage:
    """A staged write and what the run learned while staging it."""

    staged: StagedWrite
    schema: pa.Schema
    snapshot: Any  # the DeltaTable the write builds on (None: new table)
    rejected: pa.Table | None = None  # rows routed to quarantine by row checks
    checks: list[tuple[str, CheckResult]] = field(default_factory=list)
    gate: Gate | None = None
    increment: pa.Table | None = None  # the checked increment (kept only when checks run)

    def absorb(self, later: Stage) -> Stage:
        """Fold the next chunk of a whole-run write into this one."""
        seen = {r.path for r in self.staged.removes}
        self.staged.adds += later.staged.adds
        self.staged.change_files += later.staged.change_files
        self.staged.removes += [r for r in later.staged.removes if r.path not in seen]
        self.staged.metrics.update(later.staged.metrics)
        self.schema, self.snapshot = later.schema, later.snapshot
        self.checks += later.checks
        if later.increment is not None:
            self.increment = (
                later.increment
                if self.increment is None
                else pa.concat_tables([self.increment, later.increment])
            )
        return self


def _stored_rows_mask(increment: pa.Table) -> pa.ChunkedArray | pa.Array:
    """Rows the table will store (a change feed's deletes and pre-images are not checked)."""
    if CHANGE_TYPE not in increment.schema.names:
        return pa.repeat(pa.scalar(True), increment.num_rows)
    kind = increment.column(CHANGE_TYPE)
    return pc.fill_null(pc.invert(pc.is_in(kind, pa.array(["update_preimage", "delete"]))), True)


def _quality_failure(table: str, blocking: list[CheckResult]) -> DataQualityError:
    described = "; ".join(
        f"{r.check}"
        + (f" ({r.failing_rows} rows)" if r.failing_rows else "")
        + (f": {r.message}" if r.message else "")
        for r in blocking[:5]
    )
    return DataQualityError(
        f"table {table}: {len(blocking)} check(s) failed, nothing was published: {described}",
        "see audit.check_results; fix the data or the contract, then run again",
    )


def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class Runner:
    """Runs tables of a project in dependency order."""

    def __init__(
        self,
        project: Project,
        *,
        full_refresh: bool = False,
        run_ts: datetime | None = None,
        progress: Progress | None = None,
        threads: int | None = None,
        interval: Interval | None = None,
        run_id: str | None = None,
    ) -> None:
        self.project = project
        self.full_refresh = full_refresh
        # Rebuild this interval of event time instead of reading what is new.
        self.interval = interval
        if interval is not None and full_refresh:
            raise ConfigError("an interval run and a full refresh do not go together")
        self.run_ts = (run_ts or datetime.now(UTC)).astimezone(UTC)
        # A scheduler passes its attempt's id, so it can find the attempt's commit after a crash.
        self.run_id = run_id or new_run_id(self.run_ts)
        self.progress = progress or (lambda table, message: None)
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.defaults = project.config.defaults
        self.parallel_tables = self.defaults.parallel_tables
        # Tables written at the same time: they share the cores (see `write_threads`).
        self.side_by_side = 1

    @property
    def write_threads(self) -> int:
        """DuckDB threads of one table's write: the cores shared by the tables written side by
        side (more threads than cores only adds switching between them)."""
        return max(1, self.threads // self.side_by_side)

    # -- many tables ----------------------------------------------------------
    def run(self, names: Iterable[str] | None = None) -> list[TableRun]:
        """Run tables in dependency order, independent branches side by side.

        A table starts once every upstream table in the selection has finished;
        downstream of a failure is marked "upstream-failed" and not run.
        """
        order = self.project.order(list(names) if names else None)
        self.side_by_side = max(1, min(self.parallel_tables, len(order)))
        selected = set(order)
        upstream = {
            n: [u for u in self.project.spec(n).upstream_tables() if u in selected] for n in order
        }
        results: dict[str, TableRun] = {}
        failed: set[str] = set()
        pending = list(order)
        running: dict[Future[TableRun], str] = {}
        with ThreadPoolExecutor(
            max(1, self.parallel_tables), thread_name_prefix="headwater-table"
        ) as pool:
            while pending or running:
                for name in [n for n in pending if all(u in results for u in upstream[n])]:
                    if len(running) >= self.parallel_tables:
                        break
                    pending.remove(name)
                    blocked = [u for u in upstream[name] if u in failed]
                    if blocked:
                        results[name] = TableRun(
                            name,
                            self.run_id,
                            "upstream-failed",
                            error=f"upstream {', '.join(blocked)} failed",
                        )
                        failed.add(name)
                        continue
                    running[pool.submit(self.run_table, name)] = name
                if not running:
                    continue  # everything ready was blocked; look at the next tables
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    results[name] = future.result()
                    if results[name].status == "failed":
                        failed.add(name)
        return [results[n] for n in order]

    # -- one table ------------------------------------------------------------
    def run_table(self, name: str) -> TableRun:
        spec = self.project.spec(name)
        run = TableRun(name, self.run_id)
        started = time.monotonic()
        attempts = 0
        try:
            if self.full_refresh and not spec.allow_full_refresh:
                raise ConfigError(
                    f"table {name} refuses --full-refresh ({spec.strategy} history would be lost)",
                    "declare allow_full_refresh=True if rebuilding it from its inputs is really intended",
                )
            target = self.project.target(name)
            wait = lambda: self.progress(name, "waiting for another writer of this table")  # noqa: E731
            while True:
                try:
                    with table_lock(
                        target, f"run {self.run_id}", self.defaults.lock_timeout_seconds, wait
                    ):
                        self._attempt(spec, run)
                    break
                except ConflictRetry as conflict:
                    attempts += 1
                    if attempts > self.defaults.commit_retries:
                        raise CommitConflict(
                            f"table {name}: gave up after {attempts} commit conflicts with concurrent writers",
                            "another process keeps writing this table; run it from one scheduler",
                        ) from conflict
                    delay = min(5.0, 0.05 * 2**attempts) * random.random()
                    self.progress(name, f"concurrent commit won; retrying ({attempts})")
                    time.sleep(delay)
        except HeadwaterError as exc:
            run.status, run.error, run.hint, run.exception = "failed", exc.message, exc.hint, exc
        except Exception as exc:
            run.status, run.error, run.exception = (
                "failed",
                f"table {name}: {type(exc).__name__}: {exc}",
                exc,
            )
        run.seconds = time.monotonic() - started
        if run.exception is not None:
            run.failure = failure_kind(run.exception)
        if run.status != "failed":
            run.status = "committed" if run.commits else "up-to-date"
        self.progress(name, FINISHED)
        return run

    def _attempt(self, spec: TableSpec, run: TableRun) -> None:
        target = self.project.target(spec.name).refresh()
        state = read_committed_state(target, spec.app_id)
        # A full refresh applies to this run's first commit; a retry after it continues incrementally.
        full_refresh = self.full_refresh and run.commits == 0
        positions: dict[str, Any] = {} if full_refresh else dict(state.positions)
        read_ctx = ReadContext(
            spec.name,
            self.project.root,
            self.run_ts,
            self.defaults.chunk_rows,
            full_refresh,
            resolve=self.project.target,
            config=self.project.config,
            interval=self.interval,
        )
        strategy = spec.writer or get_strategy(spec.strategy)
        if self.interval is not None:
            self._attempt_interval(spec, target, strategy, state, positions, run, read_ctx)
            return
        if spec.stream is not None:
            self._attempt_stream(spec, target, strategy, state, run, read_ctx, full_refresh)
            return
        source = spec.source
        self.progress(spec.name, "reading")
        if source is not None:
            if state.position("source") is not None and not full_refresh:
                # A crash between a commit and its acknowledgement left it unacknowledged.
                source.acknowledge(state.position("source"), read_ctx)
            chunks = source.read(positions.get("source"), read_ctx)
            if strategy.whole_run:
                self._write_whole_run(
                    spec, target, strategy, chunks, state, positions, run, full_refresh, read_ctx
                )
                return
            batch = state.batch
            for increment in chunks:
                failpoint("after_read")
                new_positions = {**positions, "source": increment.position}
                committed = self._write(
                    spec,
                    target,
                    strategy,
                    {"source": increment},
                    state,
                    positions,
                    new_positions,
                    batch + 1,
                    run,
                    full_refresh,
                )
                if committed:
                    batch += 1
                    positions = new_positions
                    full_refresh = False
                    source.acknowledge(increment.position, read_ctx)
            return
        increments: dict[str, Increment] = {}
        for alias, upstream in spec.inputs.items():
            found = next(iter(upstream.read(positions.get(alias), read_ctx)), None)
            if found is not None:
                increments[alias] = found
        if not increments:
            return
        failpoint("after_read")
        missing = [a for a in spec.inputs if a not in increments]
        unbuilt = [
            s.table
            for a, s in spec.inputs.items()
            if a in missing and isinstance(s, Upstream) and not self.project.target(s.table).exists
        ]
        if unbuilt:
            # An input not built yet has no schema the function could read: wait for it.
            self.progress(spec.name, f"waiting for {', '.join(unbuilt)} (not built yet)")
            return
        for (
            alias
        ) in missing:  # an input without news still takes part (as empty changes or its snapshot)
            increments[alias] = self._unchanged_input(spec, alias, positions)
        new_positions = {**positions, **{a: i.position for a, i in increments.items()}}
        self._write(
            spec,
            target,
            strategy,
            increments,
            state,
            positions,
            new_positions,
            state.batch + 1,
            run,
            full_refresh,
        )

    def _attempt_interval(
        self,
        spec: TableSpec,
        target: DeltaTarget,
        strategy: WriteStrategy,
        state: CommittedState,
        positions: dict[str, Any],
        run: TableRun,
        read_ctx: ReadContext,
    ) -> None:
        """Rebuild one interval: inputs are read whole (the transform keeps the
        interval's rows), and the table's incremental positions do not move."""
        source = spec.source
        if source is not None:
            if not source.reads_intervals:
                raise ConfigError(
                    f"table {spec.name}: its source ({source.describe()}) cannot re-read an interval",
                    "re-run the tables downstream of it for the interval, or use --full-refresh",
                )
            # The interval is rebuilt by one write, whatever chunks the source reads it in.
            chunks = list(source.read(positions.get("source"), read_ctx))
            if not chunks:
                return
            rows = pa.concat_tables(
                [_as_reader(c.data).read_all() for c in chunks], promote_options="permissive"
            )
            increments = {"source": Increment(rows, positions.get("source"), advances=False)}
        else:
            increments = {}
            for alias, upstream in spec.inputs.items():
                assert isinstance(upstream, Upstream)
                if not self.project.target(upstream.table).exists:
                    raise UpstreamNotReady(
                        f"table {spec.name}: input {upstream.table} is not built yet, so the interval cannot be rebuilt",
                        f"run {upstream.table} first; a scheduler waits for it",
                    )
                increments[alias] = Increment(
                    self.project.target(upstream.table).dataset(),
                    positions.get(alias),
                    advances=False,
                )
        if not increments:
            return
        self._write(
            spec,
            target,
            strategy,
            increments,
            state,
            positions,
            dict(positions),
            state.batch + 1,
            run,
            False,
        )

    def _attempt_stream(
        self,
        spec: TableSpec,
        target: DeltaTarget,
        strategy: WriteStrategy,
        state: CommittedState,
        run: TableRun,
        read_ctx: ReadContext,
        full_refresh: bool,
    ) -> None:
        """A streaming table: commit micro-batch after micro-batch until the inputs
        have nothing more (see docs/streaming.md)."""
        from ..stream.engine import StreamRun, check
        from ..stream.metrics import fold, summary

        check(spec)
        stream = StreamRun(spec, self.project, state, read_ctx, full_refresh, self.threads)
        # One database for the whole run and a cursor (its own registered inputs) per
        # micro-batch: opening and closing a database costs far more than a micro-batch's
        # projection (built-in functions registered, memory returned to the system).
        database = contextlib.ExitStack()
        try:
            function_db = database.enter_context(self._function_database(spec))
            positions = stream.positions
            for alias, source in spec.inputs.items():
                if positions.get(alias) is not None and not full_refresh:
                    source.acknowledge(positions[alias], read_ctx)
            batch = state.batch
            side_versions = dict(state.side_versions)
            self.progress(spec.name, "reading")
            for micro in stream.micro_batches():
                failpoint("after_read")
                if spec.transform is None:
                    data = {a: _as_reader(i.data).read_all() for a, i in micro.increments.items()}
                else:
                    # The table's function pre-processes the micro-batch (one input).
                    assert function_db is not None
                    with contextlib.closing(function_db.cursor()) as con:
                        reader, side = self._transform(spec, con, micro.increments, full_refresh)
                        data = {next(iter(micro.increments)): reader.read_all()}
                    if side:
                        raise ConfigError(
                            f"table {spec.name}: a streaming table's function returns rows "
                            "only; its side tables (__state, __late) are the stream's"
                        )
                produced = stream.process(data, micro, batch + 1)
                increments = dict(micro.increments)
                if produced.rejected is not None:
                    first = next(iter(increments))
                    increments[first] = _with_rejected(increments[first], produced.rejected)
                rows = produced.rows
                if rows is None:
                    if not target.refresh().exists:
                        # Nothing to write and no table to hold a position yet (an interval
                        # join whose other input has delivered nothing): stop here, so the
                        # next run reads this micro-batch again.
                        stream.abandon()
                        break
                    rows = pa.schema(target.table.schema()).empty_table()
                new_positions = {**positions, **micro.positions}
                committed = self._write(
                    spec,
                    target,
                    strategy,
                    increments,
                    replace(state, side_versions=side_versions),
                    positions,
                    new_positions,
                    batch + 1,
                    run,
                    full_refresh,
                    produced=(_as_reader(rows), produced.side),
                    stream=produced.checkpoint,
                )
                if not committed:
                    stream.abandon()
                    continue
                batch += 1
                side_versions = dict(run.side_versions)
                stream.committed(batch, side_versions)
                positions = new_positions
                stream.advance_positions(positions)
                full_refresh = False
                fold(run.metrics, produced.metrics)
                self.progress(spec.name, summary(batch, produced.metrics, produced.watermark))
                for alias, increment in micro.increments.items():
                    spec.inputs[alias].acknowledge(increment.position, read_ctx)
        finally:
            stream.close()
            database.close()

    # -- writing ----------------------------------------------------------------
    def _write(
        self,
        spec: TableSpec,
        target: DeltaTarget,
        strategy: WriteStrategy,
        increments: dict[str, Increment],
        state: CommittedState,
        old_positions: dict[str, Any],
        new_positions: dict[str, Any],
        batch: int,
        run: TableRun,
        full_refresh: bool,
        produced: tuple[pa.RecordBatchReader, dict[str, SideOutput]] | None = None,
        stream: dict[str, Any] | None = None,
    ) -> bool:
        """Transform (unless `produced` already holds the output), stage and commit one batch.

        `stream` is a streaming table's checkpoint: it goes into the commit, and
        with the new positions into the side commits made before it.
        """
        with self._function_database(spec if produced is None else None) as con:
            if produced is not None:
                reader, side = produced
            else:
                reader, side = self._transform(
                    spec, con, increments, full_refresh, state.side_versions
                )
            self.progress(spec.name, "writing")
            stage = self._stage(spec, target, strategy, reader, full_refresh, run)
            staged, schema, snapshot = stage.staged, stage.schema, stage.snapshot
        advances = any(i.advances for i in increments.values()) and new_positions != old_positions
        if (
            staged.is_empty
            and snapshot is not None
            and not full_refresh
            and not advances
            and not side
        ):
            return False
        self._check_table(spec, target, stage)
        failpoint("after_stage")
        # Side tables first: for a stream, they record where the batch ends.
        side_versions = self._write_side_outputs(
            spec, batch, side, state.side_versions, new_positions if stream else None, stream
        )
        self._quarantine(
            spec, batch, [*[i.rejected for i in increments.values()], stage.rejected], run
        )
        failpoint("after_quarantine")
        self._commit(
            spec,
            target,
            snapshot,
            staged,
            schema,
            new_positions,
            batch,
            run,
            full_refresh,
            side_versions,
            stream,
            source_metrics(increments.values()),
        )
        self._audit(spec, stage.checks, published=True)
        return True

    def _write_side_outputs(
        self,
        spec: TableSpec,
        batch: int,
        side: dict[str, SideOutput],
        committed: dict[str, int],
        positions: dict[str, Any] | None = None,
        stream: dict[str, Any] | None = None,
    ) -> dict[str, int]:
        """Commit the batch's side outputs before the main commit; the versions to record."""
        versions = dict(committed)
        for name, output in sorted(side.items()):
            versions[name] = write_side_output(
                self.project,
                spec.name,
                name,
                batch,
                self.run_id,
                self.run_ts,
                output,
                positions,
                stream,
            )
        return versions

    def _quarantine(
        self, spec: TableSpec, batch: int, rejected: list[pa.Table | None], run: TableRun
    ) -> None:
        """Write the batch's rejected rows to the table's quarantine, before its commit."""
        tables = [t for t in rejected if t is not None and t.num_rows]
        if not tables:
            return
        rows = pa.concat_tables(tables, promote_options="permissive")
        written = write_quarantine(self.project, spec.name, batch, self.run_id, self.run_ts, rows)
        run.metrics["quarantined"] += rows.num_rows
        if written:
            self.progress(
                spec.name, f"{written} row(s) quarantined in {quarantine_name(spec.name)}"
            )

    def _write_whole_run(
        self,
        spec: TableSpec,
        target: DeltaTarget,
        strategy: WriteStrategy,
        increments: Iterator[Increment],
        state: CommittedState,
        positions: dict[str, Any],
        run: TableRun,
        full_refresh: bool,
        read_ctx: ReadContext,
    ) -> None:
        """Stage every chunk of the run, then publish them in one commit."""
        total: Stage | None = None
        first_version: int | None = None
        schema_commits = 0
        last: Increment | None = None
        rejected: list[pa.Table | None] = []
        for increment in increments:
            failpoint("after_read")
            last = increment
            rejected.append(increment.rejected)
            before = target.refresh().version
            with self._function_database(spec) as con:
                reader, side = self._transform(
                    spec, con, {"source": increment}, full_refresh, state.side_versions
                )
                if side:
                    raise ConfigError(
                        f"table {spec.name}: side outputs need a strategy that commits per increment, not {spec.strategy}"
                    )
                stage = self._stage(spec, target, strategy, reader, full_refresh, run)
            after = None if stage.snapshot is None else stage.snapshot.version()
            if first_version is None:
                first_version = before
            elif before is not None and after is not None:
                schema_commits += after - before
            rejected.append(stage.rejected)
            total = stage if total is None else total.absorb(stage)
        if total is None or last is None:
            return
        current = None if total.snapshot is None else total.snapshot.version()
        if (
            first_version is not None
            and current is not None
            and current - first_version != schema_commits
        ):
            target.delete_files(total.staged.written_paths())
            raise ConflictRetry("the table changed while the run was staged")
        self._check_table(spec, target, total)
        failpoint("after_stage")
        self._quarantine(spec, state.batch + 1, rejected, run)
        new_positions = {**positions, "source": last.position}
        self._commit(
            spec,
            target,
            total.snapshot,
            total.staged,
            total.schema,
            new_positions,
            state.batch + 1,
            run,
            full_refresh,
            source_metrics=source_metrics([last]),
        )
        self._audit(spec, total.checks, published=True)
        assert spec.source is not None
        spec.source.acknowledge(last.position, read_ctx)

    def _commit(
        self,
        spec: TableSpec,
        target: DeltaTarget,
        snapshot: Any,
        staged: StagedWrite,
        schema: pa.Schema,
        positions: dict[str, Any],
        batch: int,
        run: TableRun,
        full_refresh: bool,
        side_versions: dict[str, int] | None = None,
        stream: dict[str, Any] | None = None,
        source_metrics: dict[str, dict[str, float]] | None = None,
    ) -> None:
        request = CommitRequest(
            app=spec.app_id,
            batch=batch,
            run_id=self.run_id,
            run_ts=self.run_ts.isoformat(),
            table=spec.name,
            positions=positions,
            strategy=spec.strategy,
            schema=schema,
            partition_by=spec.options.partition_by,
            description=spec.description,
            full_refresh=full_refresh,
            checkpoint_interval=self.project.config.maintenance.checkpoint_interval,
            interval=self.interval.as_json() if self.interval is not None else None,
            side_versions=side_versions or {},
            stream=stream,
            source_metrics=source_metrics or {},
        )
        base = None if snapshot is None else snapshot.version()
        try:
            commit(target, snapshot, staged, request)
        except ConflictRetry:
            target.delete_files(staged.written_paths())  # nobody references them
            raise
        failpoint("after_commit")
        run.commits += 1
        run.positions = positions
        run.side_versions = dict(side_versions or {})
        run.metrics.update(staged.metrics)
        run.version = find_commit_version(
            target,
            spec.app_id,
            batch,
            self.run_id,
            after=base,
        )
        self.progress(spec.name, f"committed version {run.version}")

    # -- transform ----------------------------------------------------------------
    @contextlib.contextmanager
    def _function_database(
        self, spec: TableSpec | None
    ) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A DuckDB database for the table's function while its output is read; none
        for a table fed straight from its input (creating one costs about 25 ms of CPU,
        a fixed cost of every small run, such as each micro-batch of a CDC table)."""
        if spec is None or spec.transform is None:
            yield None
            return
        con = duckdb.connect(config={"threads": self.threads})
        try:
            yield con
        finally:
            con.close()

    def _transform(
        self,
        spec: TableSpec,
        con: duckdb.DuckDBPyConnection | None,
        increments: dict[str, Increment],
        full_refresh: bool,
        side_versions: dict[str, int] | None = None,
    ) -> tuple[pa.RecordBatchReader, dict[str, SideOutput]]:
        """The function's output, and the side outputs it returned (see side_outputs)."""
        if spec.transform is None:
            if len(increments) != 1:
                raise ConfigError(
                    f"{spec.defined_at}: table {spec.name} has several inputs but no function to combine them"
                )
            (only,) = increments.values()
            return _as_reader(only.data), {}
        if con is None:
            raise RuntimeError(f"table {spec.name}: its function needs a DuckDB database")
        ctx = RunContext(
            spec.name,
            self.run_id,
            self.run_ts,
            full_refresh,
            con,
            self.project,
            interval=self.interval,
            side_versions=dict(side_versions or {}),
        )
        if self.interval is not None:
            # SQL sees the interval as getvariable('interval_start') / getvariable('interval_end').
            con.execute(
                "SET VARIABLE interval_start = CAST(? AS TIMESTAMPTZ)",
                [self.interval.start.isoformat()],
            )
            con.execute(
                "SET VARIABLE interval_end = CAST(? AS TIMESTAMPTZ)",
                [self.interval.end.isoformat()],
            )
        for alias, increment in increments.items():
            data = increment.data
            if isinstance(data, pa.RecordBatchReader):
                data = data.read_all()  # inputs may be scanned more than once by the function
            con.register(alias, data)
            ctx.inputs[alias] = con.table(alias)
        kwargs: dict[str, Any] = {}
        data_params = [p for p in spec.parameters if p != "ctx"]
        for param in spec.parameters:
            if param == "ctx":
                kwargs[param] = ctx
            elif len(increments) == 1 and len(data_params) == 1:
                kwargs[param] = next(iter(ctx.inputs.values()))
            else:
                kwargs[param] = ctx.inputs[param]
        try:
            result = spec.transform(**kwargs)
        except HeadwaterError:
            raise
        except duckdb.Error as exc:
            raise HeadwaterError(
                f"table {spec.name}: SQL failed in {spec.defined_at}: {str(exc).splitlines()[0]}",
                "check column and input names in the function",
            ) from exc
        if isinstance(result, str):
            try:
                result = ctx.sql(result)
            except duckdb.Error as exc:
                raise HeadwaterError(
                    f"table {spec.name}: SQL failed in {spec.defined_at}: {str(exc).splitlines()[0]}",
                    "check column and input names in the query",
                ) from exc
        side: dict[str, SideOutput] = {}
        if isinstance(result, Outputs):
            result, side = result.rows, result.side
            if isinstance(result, str):
                result = ctx.sql(result)
        return _result_reader(result, spec), side

    def _unchanged_input(self, spec: TableSpec, alias: str, positions: dict[str, Any]) -> Increment:
        from ..sources.upstream import Upstream
        from ..tables.change_feed import change_schema

        upstream = spec.inputs[alias]
        assert isinstance(upstream, Upstream)
        source = self.project.target(upstream.table)
        table = source.table
        if upstream.mode == "snapshot":
            return Increment(source.dataset(), positions.get(alias), advances=False)
        schema = change_schema(pa.schema(table.schema()))
        return Increment(schema.empty_table(), positions.get(alias), advances=False)

    # -- staging ----------------------------------------------------------------
    def _stage(
        self,
        spec: TableSpec,
        target: DeltaTarget,
        strategy: WriteStrategy,
        reader: pa.RecordBatchReader,
        full_refresh: bool,
        run: TableRun,
    ) -> Stage:
        plan, data = fit_increment(
            spec.name,
            spec.schema_policy,
            target,
            reader,
            strategy,
            spec.options,
            spec.app_id,
            run.metrics,
            lambda message: self.progress(spec.name, message),
        )
        snapshot = target.load()
        gate = gate_for(spec, self.project)
        checks: list[tuple[str, CheckResult]] = []
        rejected: pa.Table | None = None
        increment: pa.Table | None = None
        if gate is not None:
            data, increment, rejected, row_results = self._check_rows(spec, gate, data)
            checks += [("rows", r) for r in row_results]
        wctx = WriteContext(
            table=spec.name,
            target=target,
            snapshot=snapshot,
            schema=plan.table_schema,
            options=spec.options,
            run_ts=self.run_ts,
            run_id=self.run_id,
            target_file_size=spec.target_file_size or self.defaults.target_file_size,
            compression=spec.compression or self.defaults.compression,
            full_refresh=full_refresh,
            record_changes=spec.change_feed
            if spec.change_feed is not None
            else reads_changes(self.project.tables, spec.name),
            threads=self.write_threads,
            memory_limit=self.defaults.memory_limit,
            interval=self.interval,
        )
        try:
            staged = strategy.stage_with_refresh(wctx, data)
        finally:
            wctx.close()
        return Stage(staged, plan.table_schema, snapshot, rejected, checks, gate, increment)

    def _check_rows(
        self, spec: TableSpec, gate: Gate, data: pa.RecordBatchReader
    ) -> tuple[pa.RecordBatchReader, pa.Table, pa.Table | None, list[CheckResult]]:
        """Row-level checks: failing rows go to quarantine, or an error blocks the batch."""
        increment = data.read_all()
        checked_mask = _stored_rows_mask(increment)
        outcome = gate.check_rows(increment.filter(checked_mask))
        blocking = [r for r in outcome.results if r.blocks]
        if blocking:
            self._audit(spec, [("rows", r) for r in outcome.results], published=False)
            raise _quality_failure(spec.name, blocking)
        # Deletes and pre-images of a change feed are not checked; they stay as they are.
        passed = pa.concat_tables(
            [
                outcome.good.select(increment.schema.names).cast(increment.schema),
                increment.filter(pc.invert(checked_mask)),
            ]
        )
        reader = pa.RecordBatchReader.from_batches(
            passed.schema, passed.to_batches(max_chunksize=READ_BATCH)
        )
        return reader, passed, outcome.rejected, outcome.results

    def _check_table(self, spec: TableSpec, target: DeltaTarget, stage: Stage) -> None:
        """Table-level checks on the table as it would be; an error deletes the staged files."""
        if stage.gate is None:
            return
        would_be = target.dataset_after(
            stage.snapshot, stage.schema, stage.staged.adds, stage.staged.removes
        )
        increment = stage.increment if stage.increment is not None else stage.schema.empty_table()
        results = stage.gate.check_table(would_be, increment)
        stage.checks += [("table", r) for r in results]
        blocking = [r for r in results if r.blocks]
        if blocking:
            target.delete_files(stage.staged.written_paths())
            self._audit(spec, stage.checks, published=False)
            raise _quality_failure(spec.name, blocking)

    def _audit(
        self, spec: TableSpec, checks: list[tuple[str, CheckResult]], published: bool
    ) -> None:
        record_checks(self.project, spec.name, self.run_id, self.run_ts, checks, published)


# Gauges a source may report in Increment.info that are kept with the commit, so lag
# and retained log can be read back from the table's Delta history.
SOURCE_GAUGES = (
    "lag_seconds",
    "lag_bytes",
    "retained_wal_bytes",
    "changes",
    "changes_per_second",
    "transactions",
    "lag",
)


def source_metrics(increments: Iterable[Increment]) -> dict[str, dict[str, float]]:
    """The gauges of the batch's last increment, per source kind that reported any."""
    found: dict[str, dict[str, float]] = {}
    for increment in increments:
        info = increment.info
        gauges = {
            k: info[k]
            for k in SOURCE_GAUGES
            if isinstance(info.get(k), int | float) and not isinstance(info.get(k), bool)
        }
        if gauges:
            found[str(info.get("source") or "source")] = gauges
    return found


def _with_rejected(increment: Increment, rejected: pa.Table) -> Increment:
    """The increment with more rows for the quarantine."""
    both = [t for t in (increment.rejected, rejected) if t is not None]
    merged = pa.concat_tables(both, promote_options="permissive")
    return replace(increment, rejected=merged)


def _as_reader(data: Any) -> pa.RecordBatchReader:
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return pa.RecordBatchReader.from_batches(
            data.schema, data.to_batches(max_chunksize=READ_BATCH)
        )
    if isinstance(data, ds.Dataset):
        return data.scanner(batch_size=READ_BATCH).to_reader()
    raise TypeError(f"unexpected increment data {type(data).__name__}")


def _result_reader(result: Any, spec: TableSpec) -> pa.RecordBatchReader:
    if isinstance(result, duckdb.DuckDBPyRelation):
        try:
            return result.to_arrow_reader(READ_BATCH)
        except duckdb.Error as exc:
            raise HeadwaterError(
                f"table {spec.name}: the function's query failed: {str(exc).splitlines()[0]}",
                f"see {spec.defined_at}",
            ) from exc
    if isinstance(result, pa.Table | pa.RecordBatchReader | ds.Dataset):
        return _as_reader(result)
    if isinstance(result, list):
        return _as_reader(pa.Table.from_pylist(result))
    if hasattr(result, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(result)
    raise HeadwaterError(
        f"table {spec.name}: the function returned {type(result).__name__}",
        "return a DuckDB relation, an Arrow table or reader, a list of dicts, or a SQL string",
    )
