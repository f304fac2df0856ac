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


class DataQualityError(HeadwaterError):
    """A check of the table's contract failed at error level; nothing was published."""


class TransientError(HeadwaterError):
    """A failure worth retrying: a source or service unreachable, a timeout, a 5xx."""


class UpstreamNotReady(HeadwaterError):
    """An input is not there yet (a file, a marker, an upstream table): wait, do not fail."""


def failure_kind(exc: BaseException) -> str:
    """How a scheduler should treat a failure: transient (retry with backoff),
    upstream-not-ready (wait), data-quality (no retry; alert) or fatal (fail fast)."""
    if isinstance(exc, TransientError | CommitConflict):
        return "transient"
    if isinstance(exc, UpstreamNotReady):
        return "upstream-not-ready"
    if isinstance(exc, DataQualityError):
        return "data-quality"
    if isinstance(exc, HeadwaterError):
        return "fatal"
    # Outside Headwater's own errors: a lost connection or a timeout is worth a retry.
    if isinstance(exc, ConnectionError | TimeoutError):
        return "transient"
    name = type(exc).__name__
    if name in {
        "OperationalError",
        "InterfaceError",
        "ConnectError",
        "ReadTimeout",
        "ConnectTimeout",
        "RemoteProtocolError",
    }:
        return "transient"
    return "fatal"
