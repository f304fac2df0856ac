"""One Headwater writer per table at a time on this machine: runs and maintenance.

Delta's optimistic concurrency resolves most races between writers, but
delta-rs does not treat a compaction (a commit whose removes have
dataChange=false) as conflicting with a write that removes the same file, so a
compaction landing between a merge's staging and its commit would leave the
merge's old rows alive in the compacted file. Headwater therefore serialises its
own writers of a table with an advisory file lock, and checks before each
commit that no commit since its snapshot removed a file it removes (see
commit.py). Across machines, the orchestrator's lease does the same job.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import HeadwaterError
from ..tables.delta import DeltaTarget, is_local, local_path


@contextlib.contextmanager
def table_lock(
    target: DeltaTarget, purpose: str, timeout: float = 3600.0, on_wait: object = None
) -> Iterator[None]:
    """Hold the writer lock of `target` (local tables; object stores rely on leases)."""
    if not is_local(target.uri):
        yield
        return
    # Beside the table, not inside it: vacuum may delete old unreferenced files
    # anywhere under the table, and a lock file deleted while held stops locking.
    table_dir = Path(local_path(target.uri))
    table_dir.parent.mkdir(parents=True, exist_ok=True)
    with (table_dir.parent / f".{table_dir.name}.writer.lock").open("a+") as handle:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise HeadwaterError(
                        f"table {target.name} is being written by {holder} for over {timeout:.0f} s",
                        "wait for it to finish, or stop that process",
                    ) from None
                if not waited and callable(on_wait):
                    on_wait()
                    waited = True
                time.sleep(0.05)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} ({purpose})")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
