"""Named points where a test can make the process die (SIGKILL) or pause, to prove recovery.

HEADWATER_FAILPOINTS is a comma-separated list of `name[@n][=action]`:
  after_stage            die (SIGKILL) at the first pass through after_stage
  after_commit@3         die at the third pass
  after_stage=sleep:1.5  pause 1.5 s at every pass (widens a race window)
Unset, a failpoint costs one environment lookup. This is how crash tests kill a
real run at a chosen step.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

ENV = "HEADWATER_FAILPOINTS"
_hits: Counter[str] = Counter()


def _armed() -> dict[str, tuple[int | None, str]]:
    armed: dict[str, tuple[int | None, str]] = {}
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        point, _, action = item.partition("=")
        name, _, nth = point.partition("@")
        armed[name] = (int(nth) if nth else None, action or "kill")
    return armed


def failpoint(name: str) -> None:
    if ENV not in os.environ:
        return
    armed = _armed()
    if name not in armed:
        return
    _hits[name] += 1
    nth, action = armed[name]
    if nth is not None and _hits[name] != nth:
        return
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif _hits[name] == (nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
