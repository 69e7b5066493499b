"""archive_pipeline as a Dagster Component, for projects laid out the `dg` way (a ``defs/`` folder).

A ``defs.yaml`` in any folder of the project's defs module adds the archive assets, their checks,
jobs, schedules and the new-days sensor, exactly as :func:`archive_pipeline.definitions.build_definitions`
builds them. Either point at a table list file (relative to the ``defs.yaml``)::

    type: archive_pipeline.defs.component.ArchiveTablesComponent
    attributes:
      config_path: archive_tables.yaml

or write the same settings inline (``tables`` plus the optional ``source``, ``retry``, ``schedule``,
``sensor``, ``backfill`` and ``asset_key_prefix`` sections of the file)::

    type: archive_pipeline.defs.component.ArchiveTablesComponent
    attributes:
      tables:
        - {name: public.events, day_column: created_at, start_date: 2024-01-01}
      schedule: {hour: 2}

Both forms are validated by the same code and fail the load with the same messages as the file.
Connection settings still come only from the environment (``ARCHIVE_PG_DSN``, ``ARCHIVE_S3_*``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import yaml
from dagster import Definitions
from dagster.components import (
    Component,
    ComponentLoadContext,
    Model,
    Resolvable,
    ResolutionContext,
    Resolver,
    Scaffolder,
    ScaffoldRequest,
    scaffold_component,
    scaffold_with,
)
from dagster.components.component.component import ComponentTypeSpec
from pydantic import BaseModel, Field, model_validator

from archive_pipeline.core.config import (ArchiveConfig, ConfigError, compose_yaml, load_config, parse_config,
                                          refuse_repeated_settings)
from archive_pipeline.definitions import build_definitions


def _relative_to_defs_yaml(context: ResolutionContext, value: str | None) -> str | None:
    if value is None:
        return None
    return str(context.resolve_source_relative_path(context.resolve_value(value, as_type=str)))


STARTER_TABLES = """\
# Tables to archive, one daily-partitioned asset each (the format of archive_pipeline's
# archive_tables.yaml; see its README, "Configuration"). Connection settings come from the environment:
# ARCHIVE_PG_DSN, ARCHIVE_S3_BUCKET and the optional ARCHIVE_S3_* variables.
tables:
  - name: public.events
    day_column: created_at
    start_date: 2024-01-01
"""


class ArchiveTablesScaffolder(Scaffolder):
    """`dg scaffold defs archive_pipeline.defs.component.ArchiveTablesComponent <path>`: a defs.yaml that points
    at a starter archive_tables.yaml beside it (as dagster-sling's scaffolder writes a replication file)."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        scaffold_component(request, {"config_path": "archive_tables.yaml"})
        tables = request.target_path / "archive_tables.yaml"
        if request.scaffold_format == "yaml" and not tables.exists():
            tables.write_text(STARTER_TABLES)


# a template's env.X or env('X'), and the fallbacks that render something for an unset one (`or`, default(..., true))
_ENV_REFERENCE = re.compile(r"\benv(?:\.(\w+)|\(\s*['\"]([^'\"]+)['\"]\s*\))")
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_FALLBACK = re.compile(r"\bor\b|default\([^)]*,\s*(?:true|True)\s*\)")
_TEMPLATE_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")


def _refuse_unset_variables(attribute: str, value: Any) -> None:
    """Refuse an attribute whose template names an environment variable that is not set: Dagster's ``env`` gives
    None, rendered as the text "None" (a config_path "None", an asset_key_prefix "None_archive") or as nothing
    (no prefix: two regional locations sharing every asset key), silently."""
    if isinstance(value, dict):
        for item in value.values():
            _refuse_unset_variables(attribute, item)
    elif isinstance(value, list):
        for item in value:
            _refuse_unset_variables(attribute, item)
    elif isinstance(value, str):
        for template in _TEMPLATE.findall(value):
            if _FALLBACK.search(template):
                continue  # ({{ env.X or 'eu' }}: renders the fallback)
            for found in _ENV_REFERENCE.finditer(template):
                if (found[1] or found[2]) in os.environ:
                    continue
                raise ValueError(f"{attribute}: {value!r} names the environment variable {found[1] or found[2]}, which "
                                 "is not set here (it would render as the text 'None', or as nothing): set it in the "
                                 "code location's environment")


def _resolved_tables(context, tables: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The inline tables with Dagster's templates rendered, after refusing one whose name Dagster's scope lacks
    (Jinja would render it as nothing, silently): a key_template's fields are single braces, ``{prefix}``."""
    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    known = set(getattr(context, "scope", {}) or {})
    for text in strings(tables):
        for name in _TEMPLATE_NAME.findall(text):
            if name not in known:
                raise ValueError(f"tables: {text!r} holds the template {{{{ {name} }}}}, a name Dagster's templates "
                                 f"do not know ({', '.join(sorted(known))}), which would render as nothing; a "
                                 "key_template's own fields take single braces: {prefix}, {schema}, {table}, {date}")
    return _rendered(context, tables)


def _rendered(context, value: Any, *, text: bool = False) -> Any:
    """``value`` with Dagster's templates rendered in the strings that hold one (``{{ ... }}``, ``{% ... %}``), and
    every other string as written: rendered, a name of braces and a hash (``events{#eu#}``) lost its Jinja
    "comment" and named another table, and a quoted ``"2024.10"`` became the number 2024.1 (the native template
    reads its result as a Python literal), where the table file takes both as written."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        if "{#" in value:  # a Jinja comment, rendered as nothing: another name, silently
            raise ValueError(f"{value!r} holds a Dagster template and '{{#', which its templates read as the "
                             "start of a comment and drop (another value, silently); write it in the table file "
                             "(config_path), where values are taken as written")
        rendered = context.resolve_value(value)  # (its errors: a name the scope lacks, a template that raises)
        if text and not isinstance(rendered, str):
            # a setting of names (asset_key_prefix): the native template reads its text as a Python literal
            # ("{{ env.A }}_{{ env.B }}" rendering 1_2 becomes the number 12); the text as rendered instead
            from jinja2 import Template

            return Template(value).render(**context.scope)
        return rendered
    if isinstance(value, dict):
        return {key: _rendered(context, item, text=text) for key, item in value.items()}
    if isinstance(value, list):
        return [_rendered(context, item, text=text) for item in value]
    return value


_PREFIX = str | bool | int | float | list[str | bool | int | float]


def _as_written(model_field_type: Any, *, text: bool = False) -> Resolver:
    """A Resolver that renders only the strings holding a template (see :func:`_rendered`); ``text``: each as text."""
    return Resolver(lambda context, value: _rendered(context, value, text=text), model_field_type=model_field_type,
                    inject_before_resolve=False)


@scaffold_with(ArchiveTablesScaffolder)
class ArchiveTablesComponent(Component, Resolvable, Model):
    """Archive date-partitioned PostgreSQL tables to S3-compatible storage, one daily partition per UTC day."""

    config_path: Annotated[
        str | None,
        Resolver(_relative_to_defs_yaml, model_field_type=str),
        Field(description="YAML table list (the format of archive_tables.yaml), relative to this defs.yaml"),
    ] = None
    tables: Annotated[
        list[dict[str, Any]] | None,
        # Dagster's templates render ("{{ env.SCHEMA }}.events"), but one of a name its templates do not know is
        # refused: a key_template's "{{ prefix }}" became "", and the archives went outside ARCHIVE_S3_PREFIX
        Resolver(_resolved_tables, model_field_type=list[dict[str, Any]] | None, inject_before_resolve=False,
                 description="inline table list, each entry as in archive_tables.yaml's tables"),
        Field(description="inline table list, each entry as in archive_tables.yaml's tables"),
    ] = None
    # (every other inline setting is rendered as the tables are: only its strings that hold a template)
    source: Annotated[dict[str, Any] | None, _as_written(dict[str, Any] | None)] = Field(
        default=None, description="inline: session timeouts (source:)")
    retry: Annotated[dict[str, Any] | None, _as_written(dict[str, Any] | None)] = Field(
        default=None, description="inline: retry policy (retry:)")
    schedule: Annotated[dict[str, Any] | None, _as_written(dict[str, Any] | None)] = Field(
        default=None, description="inline: daily schedule (schedule:)")
    sensor: Annotated[dict[str, Any] | None, _as_written(dict[str, Any] | None)] = Field(
        default=None, description="inline: new-days sensor (sensor:)")
    backfill: Annotated[dict[str, Any] | None, _as_written(dict[str, Any] | None)] = Field(
        default=None, description="inline: days per backfill run (backfill:)")
    # (items YAML reads as booleans or numbers, `[eu, no]`, pass here to be named as written, with the fix, by
    # refuse_repeated_inline_settings: pydantic's own error showed `input_value=False`)
    asset_key_prefix: Annotated[_PREFIX | None, _as_written(_PREFIX | None, text=True)] = Field(
        default=None, description="inline: put before every asset key (asset_key_prefix:)")
    check_source: bool = Field(default=True, description="check at load that the tables exist "
                               "(only when ARCHIVE_PG_DSN is set and the database answers)")

    @classmethod
    def model(cls) -> type[BaseModel]:
        """Dagster's model of the attributes, whose unknown keys are named with the nearest known one ("tabels: did
        you mean 'tables'?"), as the file's are: pydantic alone says only "Extra inputs are not permitted"."""
        derived = super().model()
        known = sorted(derived.model_fields)

        class Attributes(derived):  # type: ignore[misc,valid-type]
            @model_validator(mode="before")
            @classmethod
            def _known_keys(cls, data: Any) -> Any:
                for key in data if isinstance(data, dict) else ():
                    if key not in known:
                        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                        raise ValueError(f"unknown attribute {key!r} of ArchiveTablesComponent; {hint}")
                    _refuse_unset_variables(key, data[key])
                return data

        Attributes.__name__ = Attributes.__qualname__ = derived.__name__
        return Attributes

    @model_validator(mode="after")
    def _one_source_of_tables(self) -> ArchiveTablesComponent:
        inline = {k: v for k, v in self._inline().items() if v is not None}
        if self.config_path and inline:
            raise ValueError(f"give either config_path or inline settings ({', '.join(inline)}), not both")
        if not self.config_path and self.tables is None:  # (an empty list is told as the file's is, at the load)
            raise ValueError("give config_path (a YAML table list) or an inline tables list")
        return self

    def _inline(self) -> dict[str, Any]:
        """The inline sections, one per section of the file (a test checks none is missing)."""
        return {"source": self.source, "retry": self.retry, "schedule": self.schedule, "sensor": self.sensor,
                "backfill": self.backfill, "asset_key_prefix": self.asset_key_prefix, "tables": self.tables}

    @classmethod
    def get_spec(cls) -> ComponentTypeSpec:
        return ComponentTypeSpec(
            description="Archive date-partitioned PostgreSQL tables to S3-compatible storage",
            tags=["postgres", "s3", "archive"],
            produces=["asset", "asset_check", "job", "schedule", "sensor", "resource"],
        )

    def archive_config(self, where: str = "component attributes") -> ArchiveConfig:
        if self.config_path:
            return load_config(self.config_path)
        return parse_config({k: v for k, v in self._inline().items() if v is not None}, where)

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        defs_yaml = Path(context.path) / "defs.yaml"
        where = f"attributes of {defs_yaml}"
        if not self.config_path:
            refuse_repeated_inline_settings(defs_yaml, where)
        # No project-wide executor: a component must not change how the rest of the project's jobs run.
        # The archive jobs (schedules, sensor, verify_archives) are in-process by themselves.
        return build_definitions(self.archive_config(where), check_source=self.check_source, executor=None)


def refuse_repeated_inline_settings(defs_yaml: Path, where: str) -> None:
    """A setting given twice in the inline attributes fails the load, as it does in a table list file:
    Dagster's YAML loader keeps the last value silently, so a table would archive from a start_date
    nobody reviewed. (A component built in Python has no defs.yaml: nothing to check.)"""
    try:
        documents = compose_yaml(defs_yaml.read_bytes())
    except (OSError, yaml.YAMLError, RecursionError):
        return  # Dagster has read (or reported) the file itself
    for document in documents:
        fields = {k.value: v for k, v in getattr(document, "value", []) if isinstance(k, yaml.ScalarNode)
                  } if isinstance(document, yaml.MappingNode) else {}
        kind = fields.get("type")
        if isinstance(kind, yaml.ScalarNode) and kind.value.endswith(ArchiveTablesComponent.__name__):
            # the document's own keys: a second `attributes:` replaced the first table list silently
            lines: dict[str, int] = {}
            for key, _ in document.value:
                if isinstance(key, yaml.ScalarNode) and key.value in lines:
                    raise ConfigError(f"invalid archive configuration in {defs_yaml}:\n  {key.value!r} is given "
                                      f"twice (lines {lines[key.value]} and {key.start_mark.line + 1}); Dagster would "
                                      "keep the last one silently: merge them into one")
                if isinstance(key, yaml.ScalarNode):
                    lines[key.value] = key.start_mark.line + 1
            refuse_repeated_settings(fields.get("attributes"), where)
