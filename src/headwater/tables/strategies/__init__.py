"""Write strategies, one per module; this registry composes them.

Every strategy is idempotent: applying the same increment twice leaves the
table as it was after the first time.
"""

from __future__ import annotations

from ...errors import ConfigError
from .accumulate import Accumulate
from .append import Append
from .base import CHANGE_COLUMNS, StagedWrite, WriteContext, WriteOptions, WriteStrategy
from .cdc_apply import CdcApply
from .delete_insert import DeleteInsert
from .dimension import Dimension
from .insert_if_absent import InsertIfAbsent
from .merge import Merge
from .overwrite import Overwrite
from .replace_partition import ReplacePartition
from .scd1 import Scd1
from .scd2 import Scd2

STRATEGIES: dict[str, WriteStrategy] = {
    s.name: s
    for s in (
        Append(),
        InsertIfAbsent(),
        Overwrite(),
        ReplacePartition(),
        Merge(),
        DeleteInsert(),
        Scd1(),
        Scd2(),
        CdcApply(),
        Dimension(),
        Accumulate(),
    )
}


def get_strategy(name: str) -> WriteStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown write strategy {name!r}", f"choose one of: {', '.join(STRATEGIES)}"
        ) from None


__all__ = [
    "CHANGE_COLUMNS",
    "STRATEGIES",
    "StagedWrite",
    "WriteContext",
    "WriteOptions",
    "WriteStrategy",
    "get_strategy",
]
