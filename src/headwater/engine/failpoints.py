"""Named points where a test can make the process die (SIGKILL), to prove recovery.

Set HEADWATER_FAILPOINTS="after_stage" (die at the first pass) or
"after_commit@3" (die at the third pass). Unset, a failpoint costs one dict
lookup. This is how crash tests kill a real run at a chosen step.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "HEADWATER_FAILPOINTS"
_hits: Counter[str] = Counter()


def _armed() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition("@")
        armed[name] = int(nth or 1)
    return armed


def failpoint(name: str) -> None:
    armed = _armed()
    if name not in armed:
        return
    _hits[name] += 1
    if _hits[name] == armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
