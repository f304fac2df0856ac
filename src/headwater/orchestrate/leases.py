"""Leases: one writer per table across scheduler processes and machines.

A lease is a row in the metadata database naming its owner and an expiry; the
owner renews it while it works (a heartbeat every third of the lease time). A
scheduler that dies stops renewing, so its leases expire and another
scheduler takes the tables over. On the same machine a dead owner is noticed
at once (its process id is gone) instead of after the expiry. The engine's
local writer lock still serialises writers on one machine; the lease adds the
guarantee across machines and keeps two schedulers from even starting the same
table. Lease times come from each scheduler's clock: keep the clocks of the
machines in sync (NTP) and the lease time well above any expected pause.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

from .clock import Clock, epoch
from .metadata import Metadata

log = logging.getLogger("headwater.orchestrate")
HOST = socket.gethostname()


def new_owner(role: str = "scheduler") -> str:
    """A unique owner id: host, process id, role and a random part."""
    return f"{HOST}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_process_gone(owner: str) -> bool:
    """Whether `owner` ran on this machine and its process no longer exists."""
    parts = owner.split(":")
    if len(parts) < 2 or parts[0] != HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid != os.getpid() and not _pid_alive(pid)


class Leases:
    """The leases one owner (a scheduler process) holds; reentrant within the process."""

    def __init__(self, meta: Metadata, owner: str, clock: Clock, ttl: timedelta) -> None:
        self.meta = meta
        self.owner = owner
        self.clock = clock
        self.ttl = ttl
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.lost: set[str] = set()

    def _expiry(self) -> float:
        return epoch(self.clock.now() + self.ttl)

    def try_acquire(self, name: str) -> bool:
        """Take lease `name` unless another live owner holds it. Reentrant."""
        with self._lock:
            if self._held[name] > 0:
                self._held[name] += 1
                return True
            if self._claim(name):
                self._held[name] = 1
                self.lost.discard(name)
                return True
            return False

    def _claim(self, name: str) -> bool:
        now = epoch(self.clock.now())
        rows = self.meta.execute(
            "INSERT INTO hw_leases (name, owner, expires_at, acquired_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at, acquired_at = excluded.acquired_at "
            "WHERE hw_leases.owner = excluded.owner OR hw_leases.expires_at < ? "
            "RETURNING owner",
            (name, self.owner, self._expiry(), now, now),
        )
        if rows:
            return True
        holder = self.holder(name)
        if holder is not None and owner_process_gone(holder):
            # Its process is gone from this machine: no need to wait for the expiry.
            taken = self.meta.execute(
                "UPDATE hw_leases SET owner = ?, expires_at = ?, acquired_at = ? "
                "WHERE name = ? AND owner = ? RETURNING owner",
                (self.owner, self._expiry(), now, name, holder),
            )
            if taken:
                log.info("took over lease %s from %s (process gone)", name, holder)
            return bool(taken)
        return False

    def holder(self, name: str) -> str | None:
        row = self.meta.one("SELECT owner FROM hw_leases WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def release(self, name: str) -> None:
        with self._lock:
            if self._held[name] <= 0:
                return
            self._held[name] -= 1
            if self._held[name] > 0:
                return
            del self._held[name]
        self.meta.execute("DELETE FROM hw_leases WHERE name = ? AND owner = ?", (name, self.owner))

    def holds(self, name: str) -> bool:
        with self._lock:
            return self._held[name] > 0

    def renew(self) -> set[str]:
        """Extend every lease held; returns the names lost meanwhile (taken by another owner)."""
        with self._lock:
            names = list(self._held)
        lost: set[str] = set()
        expiry = self._expiry()
        for name in names:
            rows = self.meta.execute(
                "UPDATE hw_leases SET expires_at = ? WHERE name = ? AND owner = ? RETURNING name",
                (expiry, name, self.owner),
            )
            if not rows and not self._claim(name):
                lost.add(name)
        if lost:
            log.warning("lost lease(s) %s to another scheduler", ", ".join(sorted(lost)))
            self.lost |= lost
        return lost

    def release_all(self) -> None:
        with self._lock:
            names = list(self._held)
            self._held.clear()
        for name in names:
            self.meta.execute(
                "DELETE FROM hw_leases WHERE name = ? AND owner = ?", (name, self.owner)
            )

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[bool]:
        """`with leases.held(name) as ok:` — ok is False when another owner has it."""
        ok = self.try_acquire(name)
        try:
            yield ok
        finally:
            if ok:
                self.release(name)


def owner_alive(meta: Metadata, owner: str, clock: Clock) -> bool:
    """Whether the scheduler `owner` still runs: its process (same machine) and its
    heartbeat lease `owner:<id>` (any machine)."""
    if owner_process_gone(owner):
        return False
    row = meta.one("SELECT expires_at FROM hw_leases WHERE name = ?", (f"owner:{owner}",))
    return row is not None and float(row[0]) >= epoch(clock.now())


def table_lease(table: str) -> str:
    return f"table:{table}"


class Heartbeat:
    """Renews an owner's leases (and its own liveness lease) in a background thread."""

    def __init__(self, leases: Leases, every: float | None = None) -> None:
        self.leases = leases
        self.every = every if every is not None else max(0.2, leases.ttl.total_seconds() / 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.leases.try_acquire(f"owner:{self.leases.owner}")
        self._thread = threading.Thread(target=self._loop, name="headwater-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.leases.renew()
            except Exception as exc:  # a metadata hiccup must not kill the heartbeat
                log.warning("lease renewal failed: %s", exc)

    def beat(self) -> None:
        self.leases.renew()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
