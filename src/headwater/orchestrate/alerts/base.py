"""An alert and what a sink must do with it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

State = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Alert:
    key: str  # one alert per key and episode: "silver.orders:failure", "gold.kpi:freshness"
    table: str
    kind: str  # failure | data-quality | sensor-timeout | freshness | ready-by | slo
    state: State
    message: str
    at: datetime
    project: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "table": self.table,
            "kind": self.kind,
            "state": self.state,
            "message": self.message,
            "at": self.at.isoformat(),
            "project": self.project,
        }

    def headline(self) -> str:
        mark = "RESOLVED" if self.state == "resolved" else "ALERT"
        return f"[{mark}] {self.table} {self.kind}: {self.message}"


class Sink(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver `alert`; raise on failure (the manager logs it and goes on)."""
