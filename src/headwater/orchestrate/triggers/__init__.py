"""Triggers: when a table runs. One module per trigger."""

from .base import Sensor, Trigger
from .continuous import Continuous, continuous
from .cron import Cron, cron
from .file_sensor import FileSensor, file_sensor
from .sql_sensor import SqlSensor, sql_sensor
from .upstream import OnUpstream, on_upstream

__all__ = [
    "Continuous",
    "Cron",
    "FileSensor",
    "OnUpstream",
    "Sensor",
    "SqlSensor",
    "Trigger",
    "continuous",
    "cron",
    "file_sensor",
    "on_upstream",
    "sql_sensor",
]
