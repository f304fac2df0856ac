"""Stream-stream interval join: this.time + lower <= other.time <= this.time + upper.

Both inputs feed one watermark. An event older than watermark - allowed
lateness at its arrival is late (`join horizon`): events that old may have lost
partners already. The others are paired with every earlier or simultaneous
event of the other side that is still held, and held themselves until no
on-time event can pair with them: this side's rows while time + upper is not
behind the watermark - lateness, the other side's while time - lower is not.
A pair appears at the arrival of its later event; its time is this side's.

With `same_window` both events must also fall in the same tumbling window
(aligned to the epoch, as the tumbling windows are), and held rows go as soon
as their window has closed.
"""

from __future__ import annotations

from ..._sql import q
from ...errors import ConfigError
from ..frame import INTERNAL, Frame, micros
from ..spec import IntervalJoin
from ..state import PREFIX, scalar
from ..windows.base import floor_to

LEFT, RIGHT = "join_left", "join_right"


def join(frame: Frame, left: str, right: str, spec: IntervalJoin, sources: tuple[str, str]) -> str:
    con = frame.con
    lateness = frame.lateness
    left_columns = _columns(frame, left)
    right_columns = _columns(frame, right)
    for pair in spec.keys:
        for key, columns, source in zip(pair, (left_columns, right_columns), sources, strict=True):
            if key not in columns:
                raise ConfigError(
                    f"table {frame.table}: interval join key {key!r} is not in the events of {source}"
                )
    frame.record_late(left, f"_ts < _wm - {lateness}", "join horizon", sources[0])
    frame.record_late(right, f"_ts < _wm - {lateness}", "join horizon", sources[1])
    new_left = frame.materialise("left", f"SELECT * FROM {q(left)} WHERE _ts >= _wm - {lateness}")
    new_right = frame.materialise(
        "right", f"SELECT * FROM {q(right)} WHERE _ts >= _wm - {lateness}"
    )
    for operator, new in ((LEFT, new_left), (RIGHT, new_right)):
        if not frame.store.has(operator):
            con.execute(
                f"CREATE TABLE {q(PREFIX + operator)} AS SELECT _seq::VARCHAR AS _key, "
                f"{frame.batch}::BIGINT AS _born, * EXCLUDE (_wm) FROM {q(new)} WHERE FALSE"
            )
    held_left, held_right = q(PREFIX + LEFT), q(PREFIX + RIGHT)
    low, high = micros(spec.lower), micros(spec.upper)
    other_keys = {right for _, right in spec.keys}
    renamed = ", ".join(
        f"r.{q(c)} AS {q(spec.prefix + c)}"
        for c in right_columns
        if c not in other_keys and c not in INTERNAL
    )
    keys = " AND ".join(f"l.{q(a)} = r.{q(b)}" for a, b in spec.keys)
    within = f"r._ts BETWEEN l._ts + {low} AND l._ts + {high}"
    if spec.same_window is not None:
        within += f" AND {_window_start('l._ts', spec)} = {_window_start('r._ts', spec)}"
    left_out = ", ".join(f"l.{q(c)}" for c in left_columns if c not in INTERNAL)
    select = f"SELECT {left_out}{', ' + renamed if renamed else ''}, l._ts"
    pairs = frame.materialise(
        "pairs",
        # New left rows with held and new right rows, then held left rows with new right rows.
        f"{select}, greatest(l._seq, r._seq) AS _seq, "
        "CASE WHEN l._seq > r._seq THEN l._wm ELSE r._wm END AS _wm "
        f"FROM {q(new_left)} l JOIN (SELECT * EXCLUDE (_key, _born), NULL::BIGINT AS _wm "
        f"FROM {held_right} UNION ALL BY NAME SELECT * FROM {q(new_right)}) r "
        f"ON {keys} AND {within} "
        f"UNION ALL BY NAME {select}, r._seq AS _seq, r._wm AS _wm "
        f"FROM {held_left} l JOIN {q(new_right)} r ON {keys} AND {within}",
    )
    for operator, new in ((LEFT, new_left), (RIGHT, new_right)):
        table = q(PREFIX + operator)
        con.execute(
            f"INSERT INTO {table} BY NAME SELECT _seq::VARCHAR AS _key, {frame.batch}::BIGINT "
            f"AS _born, * EXCLUDE (_wm) FROM {q(new)}"
        )
        frame.store.changed(operator, f"SELECT _seq::VARCHAR AS _key FROM {q(new)}")
    frame.metrics["joined"] += _count(frame, pairs)
    return pairs


def expire(frame: Frame, spec: IntervalJoin) -> None:
    horizon = frame.watermark - frame.lateness
    for operator, condition in (
        (LEFT, f"_ts + {micros(spec.upper)} < {horizon}"),
        (RIGHT, f"_ts - {micros(spec.lower)} < {horizon}"),
    ):
        if spec.same_window is not None:
            # No on-time event of the other side can fall in a window that has closed.
            size = micros(spec.same_window)
            condition += f" OR {_window_start('_ts', spec)} + {size} <= {horizon}"
        if frame.store.has(operator):
            frame.metrics["state_expired"] += frame.store.delete_where(operator, condition)


def _window_start(ts: str, spec: IntervalJoin) -> str:
    assert spec.same_window is not None
    return floor_to(ts, micros(spec.same_window))


def _columns(frame: Frame, relation: str) -> list[str]:
    return [str(r[0]) for r in frame.con.execute(f"DESCRIBE {q(relation)}").fetchall()]


def _count(frame: Frame, relation: str) -> int:
    return int(scalar(frame.con, f"SELECT count(*) FROM {q(relation)}") or 0)
