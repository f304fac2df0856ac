"""`headwater.toml`: where the warehouse lives, the metadata database and defaults."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._units import parse_duration, parse_size
from .errors import ConfigError

CONFIG_FILE = "headwater.toml"
SECRETS_FILE = ".headwater/secrets.toml"
SchemaPolicy = Literal["evolve", "freeze", "discard-columns"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSection(_Section):
    name: str = "headwater"


class WarehouseSection(_Section):
    # A local directory (relative to the project) or an object-store URI (s3://...).
    path: str = "warehouse"
    # Names of environment variables holding storage options (keys, tokens); the
    # values themselves never live in the file.
    storage_options_env: dict[str, str] = Field(default_factory=dict)


class MetadataSection(_Section):
    url: str = "sqlite:///.headwater/metadata.db"


class DefaultsSection(_Section):
    schema_policy: SchemaPolicy = "evolve"
    target_file_size: int = parse_size("128MB")
    # snappy, as Spark and delta-rs: merges re-encode whole files and snappy encodes
    # fastest; zstd makes files about a third smaller for ~30% more write time.
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "snappy"
    commit_retries: int = Field(default=5, ge=0, le=100)
    chunk_rows: int = Field(default=500_000, ge=1)
    # Tables of independent branches run side by side, this many at a time.
    parallel_tables: int = Field(default=2, ge=1, le=64)
    # Memory DuckDB may use while writing a table; beyond it, it spills to disk.
    memory_limit: str = "1GB"
    # How long a run waits for another Headwater writer of the same table.
    lock_timeout_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("target_file_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_size(value if isinstance(value, int | str) else str(value), "target_file_size")


class MaintenanceSection(_Section):
    vacuum_retention_hours: float = 7 * 24
    compact_target_size: int = parse_size("128MB")
    checkpoint_interval: int = Field(default=100, ge=1)

    @field_validator("vacuum_retention_hours", mode="before")
    @classmethod
    def _hours(cls, value: object) -> float:
        if isinstance(value, str):
            return parse_duration(value, "vacuum_retention_hours").total_seconds() / 3600
        return float(value)  # type: ignore[arg-type]

    @field_validator("compact_target_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        return parse_size(
            value if isinstance(value, int | str) else str(value), "compact_target_size"
        )


class WebhookAlertSection(_Section):
    # The URL itself is a secret (Slack webhook URLs are): name an environment
    # variable (`url_env`), or write `url = "${VAR}"`. It is never printed or logged.
    url: str | None = None
    url_env: str | None = None
    # "json": Headwater's alert object; "slack": a Slack-compatible {"text": ...} payload.
    format: Literal["json", "slack"] = "json"
    # Extra headers whose values come from environment variables (tokens).
    headers_env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0)


class CommandAlertSection(_Section):
    # Run with the alert as JSON on standard input (and HEADWATER_ALERT_* variables).
    argv: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(default=30.0, gt=0)


class AlertsSection(_Section):
    # Alerts always go to the log ("headwater.alerts"); these add sinks.
    webhooks: list[WebhookAlertSection] = Field(default_factory=list)
    commands: list[CommandAlertSection] = Field(default_factory=list)


class SchedulerSection(_Section):
    # A scheduler renews its leases every third of this; a dead one's tables are free after it.
    lease_seconds: float = Field(default=60.0, ge=1)
    # How often the loop looks at triggers when nothing wakes it earlier.
    poll_seconds: float = Field(default=1.0, gt=0)
    # Runs at a time (default: [defaults] parallel_tables).
    workers: int | None = Field(default=None, ge=1, le=64)
    # How often commits made outside the scheduler are looked for (on_upstream triggers).
    upstream_poll_seconds: float = Field(default=30.0, gt=0)
    sla_check_seconds: float = Field(default=30.0, gt=0)
    # Intervals missed while no scheduler ran that are caught up on start; older: backfill.
    max_catchup: int = Field(default=31, ge=0)


class ProjectConfig(_Section):
    project: ProjectSection = ProjectSection()
    warehouse: WarehouseSection = WarehouseSection()
    metadata: MetadataSection = MetadataSection()
    defaults: DefaultsSection = DefaultsSection()
    maintenance: MaintenanceSection = MaintenanceSection()
    alerts: AlertsSection = AlertsSection()
    scheduler: SchedulerSection = SchedulerSection()
    # Named connection settings for sources: [connections.shop] host = ..., password_env = ...
    connections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Secrets read from SECRETS_FILE (never from headwater.toml); merged into connections.
    secrets: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)

    def connection(self, name: str) -> dict[str, Any]:
        """Settings of connection `name`, with secrets resolved.

        A key ending in `_env` names an environment variable holding the value of
        the key without the suffix (`password_env = "SHOP_PASSWORD"`); `${VAR}` in a
        value is replaced by that variable; values in the secrets file fill in the rest.
        """
        if name not in self.connections and name not in self.secrets:
            known = ", ".join(sorted(self.connections)) or "none"
            raise ConfigError(
                f"no connection named {name!r} in {CONFIG_FILE}",
                f"add a [connections.{name}] section (connections: {known})",
            )
        settings: dict[str, Any] = {}
        for key, value in {**self.connections.get(name, {}), **self.secrets.get(name, {})}.items():
            if key.endswith("_env"):
                variable = str(value)
                if variable not in os.environ:
                    raise ConfigError(
                        f"connection {name!r}: {key[:-4]} comes from environment variable {variable}, which is not set",
                        f"export {variable}=... before running",
                    )
                settings[key[:-4]] = os.environ[variable]
            elif isinstance(value, str) and "${" in value:
                settings[key] = _interpolate(value, f"connection {name!r}: {key}")
            else:
                settings[key] = value
        return settings

    def warehouse_uri(self, root: Path) -> str:
        path = self.warehouse.path
        if "://" in path:
            return path.rstrip("/")
        return str((root / path).resolve())

    def storage_options(self) -> dict[str, str]:
        options: dict[str, str] = {}
        for key, env_name in self.warehouse.storage_options_env.items():
            value = os.environ.get(env_name)
            if value is None:
                raise ConfigError(
                    f"warehouse storage option {key!r} needs environment variable {env_name}",
                    f"export {env_name}=... before running",
                )
            options[key] = value
        return options


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _interpolate(value: str, what: str) -> str:
    def replace(match: re.Match[str]) -> str:
        variable = match.group(1)
        if variable not in os.environ:
            raise ConfigError(
                f"{what} uses environment variable {variable}, which is not set",
                f"export {variable}=...",
            )
        return os.environ[variable]

    return _VARIABLE.sub(replace, value)


def load_secrets(root: Path) -> dict[str, dict[str, Any]]:
    """`.headwater/secrets.toml` (or $HEADWATER_SECRETS_FILE): [connections.NAME] secrets."""
    path = Path(os.environ.get("HEADWATER_SECRETS_FILE", root / SECRETS_FILE))
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None  # no secret in the message
    connections = raw.get("connections", {})
    if not isinstance(connections, dict):
        raise ConfigError(f"{path}: [connections.NAME] sections expected")
    return {str(k): dict(v) for k, v in connections.items() if isinstance(v, dict)}


def load_config(root: Path) -> ProjectConfig:
    """Read `headwater.toml` in `root`; a missing file means all defaults."""
    path = root / CONFIG_FILE
    if not path.exists():
        return ProjectConfig(secrets=load_secrets(root))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML: {exc}", "fix the syntax at the position shown"
        ) from exc
    try:
        return ProjectConfig.model_validate({**raw, "secrets": load_secrets(root)})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: [{where}] {first['msg']}", "see docs/configuration.md") from exc
