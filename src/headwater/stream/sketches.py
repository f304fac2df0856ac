"""Mergeable sketches for approximate aggregates (Apache DataSketches).

HLL for distinct counts, KLL for quantiles. A sketch is kept in the state as
its serialised bytes, so a window's sketch survives restarts and merges across
micro-batches. Sketches are built per window key from Arrow list arrays (one
list of values per key); KLL takes each key's values as one numpy array.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasketches as ds  # type: ignore[import-untyped]
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def build(kind: str, values: pa.ListArray | pa.ChunkedArray, accuracy: int) -> pa.Array:
    """One serialised sketch per list of `values` (NULL for an empty list)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    out: list[bytes | None] = []
    if kind == "quantile":
        flat = np.asarray(
            pc.cast(values.flatten(), pa.float64()).to_numpy(zero_copy_only=False), np.float64
        )
        offsets = np.asarray(values.offsets.to_numpy(zero_copy_only=False), np.int64)
        offsets = offsets - offsets[0]  # flatten() starts at the first list's values
        for i in range(len(values)):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if hi == lo:
                out.append(None)
                continue
            kll = ds.kll_doubles_sketch(accuracy)
            kll.update(np.array(flat[lo:hi], dtype=np.float64))
            out.append(kll.serialize())
        return pa.array(out, pa.binary())
    for items in values.to_pylist():
        if not items:
            out.append(None)
            continue
        hll = ds.hll_sketch(accuracy, ds.tgt_hll_type.HLL_8)
        for item in items:
            hll.update(_hll_item(item))
        out.append(hll.serialize_compact())
    return pa.array(out, pa.binary())


def merge(kind: str, sketches: pa.ListArray | pa.ChunkedArray, accuracy: int) -> pa.Array:
    """Each list of serialised sketches merged into one."""
    if isinstance(sketches, pa.ChunkedArray):
        sketches = sketches.combine_chunks()
    out: list[bytes | None] = []
    for items in sketches.to_pylist():
        present = [b for b in (items or []) if b is not None]
        if not present:
            out.append(None)
        elif len(present) == 1:
            out.append(present[0])
        else:
            out.append(_merge(kind, present, accuracy))
    return pa.array(out, pa.binary())


def _merge(kind: str, items: Sequence[bytes], accuracy: int) -> bytes:
    if kind == "quantile":
        kll = ds.kll_doubles_sketch.deserialize(items[0])
        for item in items[1:]:
            kll.merge(ds.kll_doubles_sketch.deserialize(item))
        return bytes(kll.serialize())
    union = ds.hll_union(accuracy)
    for item in items:
        union.update(ds.hll_sketch.deserialize(item))
    return bytes(union.get_result(ds.tgt_hll_type.HLL_8).serialize_compact())


def estimate(kind: str, sketches: pa.Array | pa.ChunkedArray, fraction: float | None) -> pa.Array:
    """The distinct-count estimate (int64) or the quantile (float64) of each sketch."""
    values: list[float | int | None] = []
    for item in sketches.to_pylist():
        if item is None:
            values.append(0 if kind == "approx_distinct" else None)
        elif kind == "quantile":
            values.append(ds.kll_doubles_sketch.deserialize(item).get_quantile(fraction or 0.5))
        else:
            values.append(round(ds.hll_sketch.deserialize(item).get_estimate()))
    return pa.array(values, pa.int64() if kind == "approx_distinct" else pa.float64())


def _hll_item(item: object) -> int | float | str:
    """HLL hashes ints, floats and text; other values by their text."""
    if isinstance(item, bool):
        return int(item)
    if isinstance(item, int | float | str):
        return item
    if isinstance(item, bytes):
        return item.hex()
    return str(item)
