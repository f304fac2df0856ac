"""What pgoutput changes become: operations, sequence numbers and pending TOAST values.

Each change becomes one row: the table's columns, an operation and a sequence
(`(<commit LSN> << 32) | <ordinal>`, so transactions sort by commit position
and changes within a transaction by their order in it). The decoder
(`_pgoutput_columns`) settles what the messages leave open:

- An UPDATE that changes the key is a delete of the old key followed by an
  insert of the new row (the old key comes with the message when the replica
  identity changed).
- An UPDATE leaves out TOASTed values it did not change. They are taken from
  the old row (REPLICA IDENTITY FULL sends it) or from the key's previous image
  in the same batch; otherwise they are marked `Pending` for the caller to fill
  from the table already written (or, failing that, from the source).
- A TRUNCATE becomes a `TRUNCATE` row carrying the keys seen before it; the
  caller turns it into deletes of every key the target holds.
- Transactions that commit before `start` (already in the table) are skipped,
  so a replay from an older slot position applies nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Operations as Debezium (and Headwater's other CDC connectors) spell them.
INSERT: Final = "c"
UPDATE: Final = "u"
DELETE: Final = "d"
SNAPSHOT: Final = "r"
TRUNCATE: Final = "t"  # expanded into deletes before rows leave the source

Key = tuple[str | None, ...]


def sequence(lsn: int, ordinal: int) -> int:
    """A change's place in the log, (LSN, ordinal in its transaction) as one number
    (stored as decimal(38,0), like the sequence of the other change data sources)."""
    return (lsn << 32) | ordinal


@dataclass(frozen=True)
class Pending:
    """An unchanged TOASTed value: the value `column` had in the row with key `key`.

    `moved_to` is the row's key after the change that left the value out (the
    same unless that change moved the row): where the source now has it.
    """

    key: Key
    column: str
    moved_to: Key


Cell = str | None | Pending
