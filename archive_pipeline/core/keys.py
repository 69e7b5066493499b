"""Object keys: where one day of one table lives in the bucket.

Kept apart from the formats and the archiver so configuration can check, before anything runs,
that no two table-days can ever render the same key (one would be taken for the other's archive).
"""

from __future__ import annotations

import datetime as dt
import re

MANIFEST_SUFFIX = ".manifest.json"

FORMAT_EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
CODEC_EXTENSIONS = {"zstd": "zst", "gzip": "gz", "lz4": "lz4", "snappy": "", "none": ""}
INTERNALLY_COMPRESSED = {"parquet"}  # the codec lives inside the file, not in its name


def extension(fmt: str, compression: str) -> str:
    """``jsonl.zst``, ``csv``, ``parquet``: the format's extension plus the codec's, if any."""
    base = FORMAT_EXTENSIONS[fmt]
    codec = "" if fmt in INTERNALLY_COMPRESSED else CODEC_EXTENSIONS[compression]
    return f"{base}.{codec}" if codec else base


def render(template: str, *, prefix: str, schema: str, table: str, day: dt.date, fmt: str,
           compression: str) -> str:
    """The key of ``day`` from a key template (``{prefix}/{schema}.{table}/{year}/{month}/{date}.{ext}``)."""
    key = template.format(prefix=prefix.strip("/"), schema=schema, table=table, year=f"{day:%Y}",
                          month=f"{day:%m}", day=f"{day:%d}", date=day.isoformat(), ext=extension(fmt, compression),
                          format=fmt)
    return re.sub(r"/{2,}", "/", key).strip("/")


def table_day_key(spec, day: dt.date, prefix: str = "") -> str:
    """The rendered key of one day of a configured table (a ``config.TableSpec``; duck-typed, since
    configuration imports this module to check its templates)."""
    return render(spec.key_template, prefix=prefix, schema=spec.schema_name, table=spec.table_name, day=day,
                  fmt=spec.format, compression=spec.compression)


def generation_key(key: str, generation: int) -> str:
    """Where generation ``generation`` of an archive's data lives: the key itself for the first, then
    ``<stem>.g<N>.<ext>`` beside it. A re-archive writes a new generation and commits it by writing
    the manifest, so the previous pair stays whole until the new one is."""
    if generation <= 1:
        return key
    head, slash, name = key.rpartition("/")
    stem, dot, ext = name.partition(".")
    return f"{head}{slash}{stem}.g{generation}{dot}{ext}"


def manifest_key(key: str) -> str:
    return key + MANIFEST_SUFFIX


_GENERATION_LIKE = re.compile(r"^[^.]*\.g\d+\.")

# Every day of a leap year and of the years around it: enough to see any overlap that a template's
# arrangement of {year}, {month} and {day} could produce.
_SAMPLE_DAYS = [dt.date(2023, 12, 31) + dt.timedelta(days=i) for i in range(368)]


def key_collisions(tables: list[tuple[str, str, str, str, str, str]]) -> list[str]:
    """Pairs of table-days that would share an object key, as messages naming both tables.

    ``tables`` holds (name, template, schema, table, format, compression) per configured table.
    """
    seen: dict[str, tuple[str, dt.date]] = {}
    problems: list[str] = []
    for name, template, schema, table, fmt, compression in tables:
        for day in _SAMPLE_DAYS:
            key = render(template, prefix="p", schema=schema, table=table, day=day, fmt=fmt,
                         compression=compression)
            if key.endswith(MANIFEST_SUFFIX):
                problems.append(f"table {name!r}: key_template renders {key!r}, which ends like a manifest")
                break
            if _GENERATION_LIKE.match(key.rpartition("/")[2]):
                problems.append(f"table {name!r}: key_template renders {key!r}, which looks like a later generation "
                                "of another key (<name>.g<N>.<ext>); put the table or date elsewhere in the template")
                break
            other = seen.get(key)
            if other is not None:
                what = (f"tables {other[0]!r} ({other[1]}) and {name!r} ({day})" if other[0] != name
                        else f"table {name!r}: days {other[1]} and {day}")
                problems.append(f"{what} render the same object key {key!r}; put {{schema}} and {{table}} "
                                "(and the whole date) in key_template")
                break
            seen[key] = (name, day)
    return problems
