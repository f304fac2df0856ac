"""The columns every change data source adds to a row, so tables fed by PostgreSQL,
MySQL/MariaDB or Debezium events are declared alike:

    strategy="cdc-apply", keys=[...], sequence_by="_seq"   (op_column defaults to "_op")

    _op          r (snapshot read), c (insert), u (update), d (delete), as Debezium
    _seq         the change's place in the source's log as decimal(38,0): compare
                 and sort it; cdc-apply keeps it as the guard against older changes
    _commit_ts   when the source committed the change (the snapshot's time for r)
    _change_type insert / update_postimage / delete, how merge, scd1 and scd2 see
                 the change (a control column, never stored)
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

OP: Final = "_op"
SEQUENCE: Final = "_seq"
COMMIT_TS: Final = "_commit_ts"
CHANGE_TYPE: Final = "_change_type"
SEQUENCE_TYPE: Final = pa.decimal128(38, 0)
CHANGE_TYPES: Final = {"r": "insert", "c": "insert", "u": "update_postimage", "d": "delete"}
