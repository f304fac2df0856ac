"""Connectors, one module per source. Each yields Arrow data plus a position."""

from .base import Increment, Position, ReadContext, Source
from .files import FilesSource, files
from .memory import MemorySource, memory
from .sqlite import SqliteSource, sqlite
from .upstream import Upstream

__all__ = [
    "FilesSource",
    "Increment",
    "MemorySource",
    "Position",
    "ReadContext",
    "Source",
    "SqliteSource",
    "Upstream",
    "files",
    "memory",
    "sqlite",
]
