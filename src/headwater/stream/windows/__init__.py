"""Windows, one type per module; this registry maps a declared window to its aggregation.

| window   | module        | an event's windows                        | aggregated by |
|----------|---------------|-------------------------------------------|---------------|
| none     |               | one running aggregate per key             | `fixed`       |
| tumbling | `tumbling.py` | the one holding its time (`assign`)       | `fixed`       |
| sliding  | `sliding.py`  | size/every of them (`assign`)             | `fixed`       |
| session  | `session.py`  | depends on its key's other events: merges | `session`     |

A new window type adds a module and a line here.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from ..frame import Frame
from ..spec import Session, Sliding, Tumbling, Window
from . import fixed, session

Aggregation = Callable[[Frame, str, str], pa.Table | None]
AGGREGATE: dict[type, Aggregation] = {
    type(None): fixed.aggregate,
    Tumbling: fixed.aggregate,
    Sliding: fixed.aggregate,
    Session: session.aggregate,
}


def aggregate(window: Window | None, frame: Frame, events: str, source: str) -> pa.Table | None:
    """The rows a micro-batch's events (relation `events`) emit through `window`."""
    return AGGREGATE[type(window)](frame, events, source)


__all__ = ["AGGREGATE", "aggregate"]
