"""The log sink: every alert goes to the `headwater.alerts` logger."""

from __future__ import annotations

import logging

from .base import Alert

log = logging.getLogger("headwater.alerts")


class LogSink:
    name = "log"

    def send(self, alert: Alert) -> None:
        level = logging.INFO if alert.state == "resolved" else logging.WARNING
        log.log(level, "%s", alert.headline())
