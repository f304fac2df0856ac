"""The stream checkpoint: what a streaming table commits with each micro-batch.

It goes into the table's commit metadata (`commitInfo.headwater.stream`), in
the same Delta commit as the output and the positions:

    {"watermark": {"partitions": {p: [newest, seen]}, "stream_max": µs, "watermark": µs},
     "seq": events so far,  "dims": {dimension table: version read},
     "state": {"exported": batch, "schemas": {operator: [[column, type]]}, "log_rows": n},
     "lateness": {bucket: events},  "metrics": {...this micro-batch...},
     "restart": {"positions": {...}, "checkpoint": {...}}   (at-least-once only)}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .watermark import WatermarkState


@dataclass
class Checkpoint:
    watermark: WatermarkState = field(default_factory=WatermarkState)
    seq: int = 0  # events that have arrived so far (the next event's arrival number)
    dims: dict[str, int] = field(default_factory=dict)
    exported: int = 0  # the batch whose state the durable `__state` holds
    schemas: dict[str, list[list[str]]] = field(default_factory=dict)
    log_rows: int = 0  # rows in the `__state` changelog since its last compaction
    lateness: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    restart: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "watermark": self.watermark.to_json(),
            "seq": self.seq,
            "dims": dict(sorted(self.dims.items())),
            "state": {
                "exported": self.exported,
                "schemas": self.schemas,
                "log_rows": self.log_rows,
            },
            "lateness": dict(sorted(self.lateness.items(), key=lambda kv: int(kv[0]))),
            "metrics": self.metrics,
        }
        if self.restart is not None:
            out["restart"] = self.restart
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Checkpoint:
        if not value:
            return cls()
        state = value.get("state") or {}
        return cls(
            WatermarkState.from_json(value.get("watermark")),
            int(value.get("seq") or 0),
            {str(k): int(v) for k, v in (value.get("dims") or {}).items()},
            int(state.get("exported") or 0),
            {str(k): [list(c) for c in v] for k, v in (state.get("schemas") or {}).items()},
            int(state.get("log_rows") or 0),
            {str(k): int(v) for k, v in (value.get("lateness") or {}).items()},
            dict(value.get("metrics") or {}),
            value.get("restart"),
        )

    def copy(self) -> Checkpoint:
        return copy.deepcopy(self)
