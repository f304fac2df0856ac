"""Alerts: de-duplicated in the metadata database, delivered to sinks.

An alert has a key (e.g. "silver.orders:failure"). Firing a key that is
already firing only counts the occurrence; the sinks hear of it once per
episode, whichever scheduler fired it. Resolving sends a "resolved" message
once. Sinks (one module each): the log (always), JSON webhooks (optionally
Slack-shaped) and commands, configured under [alerts] in headwater.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..clock import Clock, epoch
from ..metadata import Metadata
from .base import Alert, Sink
from .command import CommandSink
from .log import LogSink
from .webhook import WebhookSink

if TYPE_CHECKING:
    from ...config import ProjectConfig

log = logging.getLogger("headwater.alerts")

__all__ = ["Alert", "AlertManager", "CommandSink", "LogSink", "Sink", "WebhookSink"]


def sinks_from_config(config: ProjectConfig) -> list[Sink]:
    sinks: list[Sink] = [LogSink()]
    sinks += [WebhookSink.from_config(w, i) for i, w in enumerate(config.alerts.webhooks)]
    sinks += [CommandSink.from_config(c, i) for i, c in enumerate(config.alerts.commands)]
    return sinks


class AlertManager:
    def __init__(
        self, meta: Metadata, sinks: Sequence[Sink], clock: Clock, project: str = ""
    ) -> None:
        self.meta = meta
        self.sinks = list(sinks)
        self.clock = clock
        self.project = project
        self.delivery_failures = 0

    def fire(self, key: str, table: str, kind: str, message: str) -> bool:
        """Raise alert `key`; True when this started a new episode (and sinks were told)."""
        now = epoch(self.clock.now())
        started = self.meta.execute(
            "INSERT INTO hw_alerts (alert_key, table_name, kind, state, message, first_at, last_at, occurrences) "
            "VALUES (?, ?, ?, 'firing', ?, ?, ?, 1) "
            "ON CONFLICT (alert_key) DO UPDATE SET state = 'firing', message = excluded.message, "
            "first_at = excluded.first_at, last_at = excluded.last_at, resolved_at = NULL, occurrences = 1 "
            "WHERE hw_alerts.state = 'resolved' RETURNING alert_key",
            (key, table, kind, message, now, now),
        )
        if not started:
            self.meta.execute(
                "UPDATE hw_alerts SET occurrences = occurrences + 1, last_at = ?, message = ? "
                "WHERE alert_key = ?",
                (now, message, key),
            )
            return False
        self._deliver(Alert(key, table, kind, "firing", message, self.clock.now(), self.project))
        return True

    def resolve(
        self, table: str, kinds: Sequence[str], message: str, keep: str | None = None
    ) -> list[str]:
        """Resolve the firing alerts of `table` of these kinds (except key `keep`)."""
        if not kinds:
            return []
        marks = ", ".join("?" for _ in kinds)
        resolved = self.meta.execute(
            f"UPDATE hw_alerts SET state = 'resolved', resolved_at = ? "
            f"WHERE table_name = ? AND state = 'firing' AND kind IN ({marks}) AND alert_key <> ? "
            "RETURNING alert_key, kind",
            (epoch(self.clock.now()), table, *kinds, keep or ""),
        )
        for key, kind in resolved:
            self._deliver(
                Alert(
                    str(key), table, str(kind), "resolved", message, self.clock.now(), self.project
                )
            )
        return [str(r[0]) for r in resolved]

    def firing(self, table: str | None = None) -> list[tuple[str, str, str, int]]:
        """(key, kind, message, occurrences) of the alerts firing now."""
        sql = "SELECT alert_key, kind, message, occurrences FROM hw_alerts WHERE state = 'firing'"
        params: tuple[str, ...] = ()
        if table is not None:
            sql += " AND table_name = ?"
            params = (table,)
        return [(str(a), str(b), str(c), int(d)) for a, b, c, d in self.meta.execute(sql, params)]

    def _deliver(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception as exc:  # one broken sink must not silence the others
                self.delivery_failures += 1
                log.warning("alert sink %s failed: %s", sink.name, exc)
