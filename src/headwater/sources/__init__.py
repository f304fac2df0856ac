"""Connectors, one module per source. Each yields Arrow data plus a position."""

from .base import Increment, Position, ReadContext, Source
from .delta import DeltaSource, delta
from .files import FilesSource, files
from .memory import MemorySource, memory
from .sqlite import SqliteSource, sqlite
from .upstream import Upstream

__all__ = [
    "DeltaSource",
    "FilesSource",
    "Increment",
    "MemorySource",
    "Position",
    "ReadContext",
    "Source",
    "SqliteSource",
    "Upstream",
    "delta",
    "files",
    "memory",
    "sqlite",
]
