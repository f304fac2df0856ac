"""Connectors, one module per source. Each yields Arrow data plus a position."""

from .base import Increment, Position, ReadContext, Source
from .cdc_mysql import MysqlCdcSource, cdc_mysql
from .cdc_postgres import PostgresCdcSource, cdc_postgres
from .debezium import DebeziumFilesSource, EnvelopeDecoder, debezium
from .delta import DeltaSource, delta
from .files import FilesSource, files
from .generator import GeneratorSource, generator
from .kafka import KafkaSource, kafka
from .memory import MemorySource, memory
from .mysql import MySqlSource, mysql
from .postgres import PostgresSource, postgres
from .sqlite import SqliteSource, sqlite
from .upstream import Upstream

__all__ = [
    "DebeziumFilesSource",
    "DeltaSource",
    "EnvelopeDecoder",
    "FilesSource",
    "GeneratorSource",
    "Increment",
    "KafkaSource",
    "MemorySource",
    "MySqlSource",
    "MysqlCdcSource",
    "Position",
    "PostgresCdcSource",
    "PostgresSource",
    "ReadContext",
    "Source",
    "SqliteSource",
    "Upstream",
    "cdc_mysql",
    "cdc_postgres",
    "debezium",
    "delta",
    "files",
    "generator",
    "kafka",
    "memory",
    "mysql",
    "postgres",
    "sqlite",
]
