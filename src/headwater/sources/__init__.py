"""Connectors, one module per source. Each yields Arrow data plus a position."""

from .base import Increment, Position, ReadContext, Source
from .delta import DeltaSource, delta
from .files import FilesSource, files
from .memory import MemorySource, memory
from .mysql import MySqlSource, mysql
from .postgres import PostgresSource, postgres
from .sqlite import SqliteSource, sqlite
from .upstream import Upstream

__all__ = [
    "DeltaSource",
    "FilesSource",
    "Increment",
    "MemorySource",
    "MySqlSource",
    "Position",
    "PostgresSource",
    "ReadContext",
    "Source",
    "SqliteSource",
    "Upstream",
    "delta",
    "files",
    "memory",
    "mysql",
    "postgres",
    "sqlite",
]
