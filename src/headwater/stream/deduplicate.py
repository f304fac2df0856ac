"""Dedup by event id, within a horizon bounded by the watermark.

Events are taken in arrival order. An event is a duplicate when an earlier
accepted event with the same id is still remembered: its time + `within` is
after the watermark at this event's arrival. Otherwise an event that is itself
`within` or more behind the watermark cannot be checked (its twin may be
forgotten) and is late; the rest are accepted and remembered. Ids are
forgotten once the watermark passes their time + `within`. A NULL id is never
a duplicate.

Ids that occur once in the micro-batch are decided in one SQL pass; only ids
with several events in the micro-batch are walked in arrival order.
"""

from __future__ import annotations

from .._sql import q
from ..errors import ConfigError
from .frame import Frame, micros
from .state import PREFIX, scalar

OPERATOR = "dedup"


def deduplicate(frame: Frame, events: str, source: str) -> str:
    """Events without duplicates and late events (a new temp table of `events`' shape)."""
    spec = frame.stream.dedup
    assert spec is not None
    con = frame.con
    columns = {str(r[0]) for r in con.execute(f"DESCRIBE {q(events)}").fetchall()}
    if spec.column not in columns:
        raise ConfigError(
            f"table {frame.table}: dedup column {spec.column!r} is not in the events of {source}",
            "name the event id column in dedup(...)",
        )
    within = micros(spec.within)
    table = q(PREFIX + OPERATOR)
    if not frame.store.has(OPERATOR):
        con.execute(f"CREATE TABLE {table} (_key VARCHAR, _ts BIGINT, _born BIGINT)")
    keyed = frame.materialise(
        "dedup_keys",
        f"SELECT e._seq, e._ts, e._wm, CAST(e.{q(spec.column)} AS VARCHAR) AS _id, "
        f"s._ts AS _seen, count(*) OVER (PARTITION BY CAST(e.{q(spec.column)} AS VARCHAR)) AS _n "
        f"FROM {q(events)} e LEFT JOIN {table} s ON s._key = CAST(e.{q(spec.column)} AS VARCHAR)",
    )
    # Ids seen once in this micro-batch: one vectorised decision.
    decided = frame.materialise(
        "dedup_decided",
        "SELECT _seq, _id, _ts, CASE "
        f"WHEN _id IS NULL THEN 'accept' "
        f"WHEN _seen IS NOT NULL AND _seen + {within} > _wm THEN 'duplicate' "
        f"WHEN _ts + {within} <= _wm THEN 'late' ELSE 'accept' END AS _verdict "
        f"FROM {q(keyed)} WHERE _id IS NULL OR _n = 1",
    )
    repeated = con.execute(
        f"SELECT _seq, _id, _ts, _wm, _seen FROM {q(keyed)} WHERE _id IS NOT NULL AND _n > 1 "
        "ORDER BY _id, _seq"
    ).fetchall()
    verdicts: list[tuple[int, str, int, str]] = []
    remembered: dict[str, int | None] = {}
    for seq, key, ts, wm, seen in repeated:
        last = remembered.get(key, seen)
        if last is not None and last + within > wm:
            verdict = "duplicate"
        elif ts + within <= wm:
            verdict = "late"
        else:
            verdict = "accept"
            remembered[key] = ts
        verdicts.append((int(seq), str(key), int(ts), verdict))
    if verdicts:
        con.executemany(f"INSERT INTO {q(decided)} VALUES (?, ?, ?, ?)", verdicts)
    frame.record_late(
        events,
        f"_seq IN (SELECT _seq FROM {q(decided)} WHERE _verdict = 'late')",
        "dedup horizon",
        source,
    )
    duplicates = scalar(con, f"SELECT count(*) FROM {q(decided)} WHERE _verdict = 'duplicate'")
    frame.metrics["dropped_duplicates"] += int(duplicates or 0)
    # Remember each accepted id at its last accepted event.
    remember = (
        f"SELECT _id AS _key, arg_max(_ts, _seq) AS _ts FROM {q(decided)} "
        "WHERE _verdict = 'accept' AND _id IS NOT NULL GROUP BY _id"
    )
    kept = frame.materialise(
        "dedup_remembered",
        f"SELECT r._key, r._ts, coalesce(s._born, {frame.batch})::BIGINT AS _born "
        f"FROM ({remember}) r LEFT JOIN {table} s ON s._key = r._key",
    )
    con.execute(f"DELETE FROM {table} WHERE _key IN (SELECT _key FROM {q(kept)})")
    con.execute(f"INSERT INTO {table} SELECT _key, _ts, _born FROM {q(kept)}")
    frame.store.changed(OPERATOR, f"SELECT _key FROM {q(kept)}")
    return frame.materialise(
        "deduplicated",
        f"SELECT e.* FROM {q(events)} e SEMI JOIN (SELECT _seq FROM {q(decided)} "
        "WHERE _verdict = 'accept') d ON e._seq = d._seq",
    )


def expire(frame: Frame) -> None:
    spec = frame.stream.dedup
    if spec is None or not frame.store.has(OPERATOR):
        return
    within = micros(spec.within)
    frame.metrics["state_expired"] += frame.store.delete_where(
        OPERATOR, f"_ts + {within} <= {frame.watermark}"
    )
