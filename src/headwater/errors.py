"""Errors a user can act on: one line that says what is wrong, plus a hint."""

from __future__ import annotations


class HeadwaterError(Exception):
    """A failure with a one-line message and an optional hint on what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(HeadwaterError):
    """The project, a table declaration or an option is invalid."""


class SchemaError(HeadwaterError):
    """Incoming data does not fit the table's schema under its schema policy."""


class DataError(HeadwaterError):
    """Incoming data breaks a rule of the write strategy (null keys, duplicate keys...)."""


class CommitConflict(HeadwaterError):
    """A concurrent writer committed first and the retry budget ran out."""


class PositionLost(HeadwaterError):
    """The committed position cannot be read back from the table's log."""
