"""The command sink: run a program with the alert as JSON on standard input.

Its environment also holds HEADWATER_ALERT_KEY, _TABLE, _KIND, _STATE and
_MESSAGE, so a one-line shell command can use them.
"""

from __future__ import annotations

import json
import os
import subprocess

from ...config import CommandAlertSection
from ...errors import TransientError
from .base import Alert


class CommandSink:
    def __init__(self, argv: list[str], timeout: float = 30.0, name: str = "command") -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.name = name

    @classmethod
    def from_config(cls, section: CommandAlertSection, index: int) -> CommandSink:
        return cls(section.argv, section.timeout_seconds, f"alerts.commands[{index}]")

    def send(self, alert: Alert) -> None:
        env = {
            **os.environ,
            "HEADWATER_ALERT_KEY": alert.key,
            "HEADWATER_ALERT_TABLE": alert.table,
            "HEADWATER_ALERT_KIND": alert.kind,
            "HEADWATER_ALERT_STATE": alert.state,
            "HEADWATER_ALERT_MESSAGE": alert.message,
        }
        try:
            done = subprocess.run(
                self.argv,
                input=json.dumps(alert.as_json()),
                text=True,
                env=env,
                capture_output=True,
                timeout=self.timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientError(f"{self.name}: {self.argv[0]}: {type(exc).__name__}") from None
        if done.returncode != 0:
            raise TransientError(f"{self.name}: {self.argv[0]} exited with {done.returncode}")
