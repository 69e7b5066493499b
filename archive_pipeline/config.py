"""The tables to archive, declared in one YAML file and validated before anything runs.

Connection settings never live here (they come from the environment through Dagster's
``EnvVar``), so the file can be reviewed and committed like code.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from archive_pipeline.keys import key_collisions

CONFIG_ENV_VAR = "ARCHIVE_PIPELINE_CONFIG"
DEFAULT_CONFIG_PATH = "archive_tables.yaml"

Format = Literal["jsonl", "csv", "parquet"]
Compression = Literal["zstd", "gzip", "lz4", "snappy", "none"]

KEY_FIELDS = frozenset({"prefix", "schema", "table", "year", "month", "day", "date", "ext", "format"})
DEFAULT_KEY_TEMPLATE = "{prefix}/{schema}.{table}/{year}/{month}/{date}.{ext}"
MAX_IDENTIFIER_BYTES = 63


def dagster_name(text: str) -> str:
    """A PostgreSQL identifier as a Dagster name: lower-case letters, digits and underscores."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "_"


class ConfigError(ValueError):
    """The archive configuration is wrong; the message names the table and the setting."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Partitioning(_Strict):
    """How the days of a table exist in PostgreSQL (see the README, "Three ways a day exists").

    - ``column``: a plain table; a day is the rows with ``day_column`` in that UTC day.
    - ``declarative``: a declaratively partitioned parent; days are read from its children's bounds
      in the catalog (a child covering a week or month archives as its days).
    - ``naming``: one table per day named by ``pattern`` (strftime, e.g. ``events_%Y%m%d``) in the
      same schema, legacy inheritance style; the whole child table is the day.
    """

    mode: Literal["column", "declarative", "naming"] = "column"
    pattern: str | None = Field(default=None, description="naming mode: child table name, strftime style")

    @model_validator(mode="after")
    def _pattern(self) -> Partitioning:
        if self.mode == "naming":
            if not self.pattern:
                raise ValueError("mode 'naming' needs a pattern such as 'events_%Y%m%d'")
            if not all(code in self.pattern for code in ("%Y", "%m", "%d")):
                raise ValueError(f"pattern {self.pattern!r} must contain %Y, %m and %d")
            if len(dt.date(2024, 12, 31).strftime(self.pattern).encode()) > MAX_IDENTIFIER_BYTES:
                raise ValueError(f"pattern {self.pattern!r} makes names longer than PostgreSQL's 63 bytes")
        elif self.pattern:
            raise ValueError("pattern is only for mode 'naming'")
        return self


class Retention(_Strict):
    """Opt-in removal of old days from the source, only after their archive is proven (see lifecycle.py).

    ``detach``/``drop``: the day's own partition (declarative mode: a child covering exactly that
    day) or day table (naming mode); ``delete``: the day's rows, in batches (any mode).
    """

    keep_days: int = Field(ge=1, description="days (before today) kept in the source; older ones may be removed")
    action: Literal["detach", "drop", "delete"]
    batch_rows: int = Field(default=50_000, ge=100, le=10_000_000, description="delete: rows per DELETE statement")


class TableSpec(_Strict):
    """One table to archive, one daily partition per UTC day."""

    name: str = Field(description="schema-qualified table name, e.g. public.events")
    day_column: str | None = Field(default=None, description="date/timestamp/timestamptz column that defines "
                                   "the day (required unless partitioning.mode is naming)")
    start_date: dt.date = Field(description="first day to archive")
    partitioning: Partitioning = Partitioning()
    overwrite: bool = Field(default=False, description="archive again even when a matching archive exists")
    pool: str = Field(default="archive_source", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Dagster concurrency pool bounding extractions from this table's database")
    format: Format = "jsonl"
    compression: Compression = "zstd"
    compression_level: int | None = Field(default=None, ge=-7, le=22)
    chunk_size: int = Field(default=10_000, ge=100, le=1_000_000)
    key_template: str = DEFAULT_KEY_TEMPLATE
    retention: Retention | None = Field(default=None, description="remove proven days from the source (opt-in)")
    strict: bool = Field(default=False, description="refuse any column whose encoding in the chosen format is "
                         "lossy or ambiguous (see the manifest's per-column 'exact'), instead of recording it")

    @field_validator("name")
    @classmethod
    def _qualified(cls, value: str) -> str:
        schema, _, table = value.partition(".")
        if not schema or not table:
            raise ValueError("must be schema-qualified as 'schema.table' (e.g. public.events)")
        for part in (schema, table):
            if len(part.encode()) > MAX_IDENTIFIER_BYTES:
                raise ValueError(f"identifier {part!r} is longer than PostgreSQL's 63 bytes")
        return value

    @field_validator("key_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"is not a valid template: {exc}") from None
        unknown = fields - KEY_FIELDS
        if unknown:
            raise ValueError(f"uses unknown field(s) {sorted(unknown)}; allowed: {sorted(KEY_FIELDS)}")
        if not {"date"} <= fields and not {"year", "month", "day"} <= fields:
            raise ValueError("must contain {date} (or {year}, {month} and {day}) so days do not overwrite each other")
        return value

    @model_validator(mode="after")
    def _day_column_needed(self) -> TableSpec:
        if self.day_column is None and self.partitioning.mode != "naming":
            raise ValueError(f"day_column is required for partitioning mode {self.partitioning.mode!r}")
        if self.retention and self.retention.action in ("detach", "drop") and self.partitioning.mode == "column":
            raise ValueError(f"retention action {self.retention.action!r} removes a day's own partition; a table in "
                             "partitioning mode 'column' has none: use action 'delete'")
        return self

    def child_table(self, day: dt.date) -> str | None:
        """Naming mode: the table that holds ``day``."""
        return day.strftime(self.partitioning.pattern) if self.partitioning.mode == "naming" else None

    @field_validator("compression")
    @classmethod
    def _codec_fits_format(cls, value: str, info: ValidationInfo) -> str:
        if value == "snappy" and info.data.get("format", "jsonl") != "parquet":
            raise ValueError("'snappy' is only for parquet; use zstd, gzip, lz4 or none")
        return value

    @property
    def schema_name(self) -> str:
        return self.name.partition(".")[0]

    @property
    def table_name(self) -> str:
        return self.name.partition(".")[2]

    @property
    def asset_path(self) -> tuple[str, str]:
        """(schema, table) as Dagster names, for the asset key and the job name."""
        return dagster_name(self.schema_name), dagster_name(self.table_name)


class RetrySettings(_Strict):
    max_retries: int = Field(default=3, ge=0, le=20)
    delay_seconds: float = Field(default=30, ge=0)
    backoff: Literal["exponential", "linear"] = "exponential"


class ScheduleSettings(_Strict):
    hour: int = Field(default=1, ge=0, le=23, description="UTC hour at which the day that just ended is archived")
    minute: int = Field(default=0, ge=0, le=59)
    running: bool = Field(default=False, description="start the schedule as soon as the daemon loads it")


class SensorSettings(_Strict):
    interval_seconds: int = Field(default=300, ge=30)
    lookback_days: int = Field(default=7, ge=1, le=366, description="how many recent days each tick inspects")
    max_runs_per_tick: int = Field(default=50, ge=1)
    running: bool = Field(default=False, description="start the sensor as soon as the daemon loads it")


class SourceSettings(_Strict):
    """Limits set on every extraction session, so an archive never holds locks or the server too long."""

    statement_timeout_ms: int = Field(default=0, ge=0, description="per statement (one COPY is one); 0 = none")
    lock_timeout_ms: int = Field(default=30_000, ge=0, description="waiting for a lock; 0 = forever")
    idle_in_transaction_timeout_ms: int = Field(default=600_000, ge=0)


class ArchiveConfig(_Strict):
    source: SourceSettings = SourceSettings()
    retry: RetrySettings = RetrySettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sensor: SensorSettings = SensorSettings()
    tables: list[TableSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ArchiveConfig:
        seen: dict[tuple[str, str], str] = {}
        for spec in self.tables:
            if spec.asset_path in seen:
                raise ValueError(f"tables {seen[spec.asset_path]!r} and {spec.name!r} map to the same asset name "
                                 f"{'/'.join(spec.asset_path)!r}")
            seen[spec.asset_path] = spec.name
        collisions = key_collisions([(s.name, s.key_template, s.schema_name, s.table_name, s.format, s.compression)
                                     for s in self.tables])
        if collisions:
            raise ValueError("; ".join(collisions))
        return self


def _describe(error: ValidationError, raw: dict) -> str:
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "tables" and isinstance(loc[1], int):
            tables = raw.get("tables") or []
            entry = tables[loc[1]] if loc[1] < len(tables) and isinstance(tables[loc[1]], dict) else {}
            setting = ".".join(str(p) for p in loc[2:])
            where = f"table {entry.get('name', f'#{loc[1] + 1}')!r}" + (f", setting {setting!r}" if setting else "")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_config(raw: object, source: str = "<config>") -> ArchiveConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'tables' list")
    try:
        return ArchiveConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid archive configuration in {source}:\n{_describe(exc, raw)}") from None


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike | None = None) -> ArchiveConfig:
    """Read and validate the YAML file (``$ARCHIVE_PIPELINE_CONFIG``, default ./archive_tables.yaml)."""
    file = Path(path) if path else config_path()
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"archive configuration {file} not found (set ${CONFIG_ENV_VAR})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    return parse_config(raw, str(file))
