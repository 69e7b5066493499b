"""Object keys: where one period (hour, day, month) of one table lives in the bucket.

Kept apart from the formats and the archiver so configuration can check, before anything runs,
that no two table-days can ever render the same key (one would be taken for the other's archive).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import json
import re
import string
from collections.abc import Iterable, Iterator, Sequence

from archive_pipeline.core.periods import Period, as_period, has_dst, parse_period, periods_overlapping

MANIFEST_SUFFIX = ".manifest.json"
UPLOAD_MARKER_SUFFIX = ".uploading"

FORMAT_EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
CODEC_EXTENSIONS = {"zstd": "zst", "gzip": "gz", "lz4": "lz4", "snappy": "", "none": ""}
INTERNALLY_COMPRESSED = {"parquet"}  # the codec lives inside the file, not in its name


def extension(fmt: str, compression: str) -> str:
    """``jsonl.zst``, ``csv``, ``parquet``: the format's extension plus the codec's, if any."""
    base = FORMAT_EXTENSIONS[fmt]
    codec = "" if fmt in INTERNALLY_COMPRESSED else CODEC_EXTENSIONS[compression]
    return f"{base}.{codec}" if codec else base


def period_fields(day: Period | dt.date) -> dict[str, str]:
    """The period's key-template fields; a plain date is a UTC day, as it always was."""
    if isinstance(day, Period):
        return day.fields()
    return {"year": f"{day:%Y}", "month": f"{day:%m}", "day": f"{day:%d}", "date": day.isoformat(), "hour": "00",
            "period": day.isoformat()}


def render(template: str, *, prefix: str, schema: str, table: str, day: Period | dt.date, fmt: str,
           compression: str) -> str:
    """The key of ``day`` (a period, or a date meaning a day) from a key template
    (``{prefix}/{schema}.{table}/{year}/{month}/{date}.{ext}``; see the README for the fields)."""
    return _render(template, prefix, schema, table, period_fields(day), fmt, compression)


def _render(template: str, prefix: str, schema: str, table: str, fields: dict[str, str], fmt: str,
            compression: str) -> str:
    key = template.format(prefix=prefix.strip("/"), schema=schema, table=table, ext=extension(fmt, compression),
                          format=fmt, **fields)
    return re.sub(r"/{2,}", "/", key).strip("/")


def table_day_key(spec, day: Period | dt.date | str, prefix: str = "") -> str:
    """The rendered key of one period of a configured table (a ``config.TableSpec``; duck-typed, since
    configuration imports this module to check its templates). A date or partition key is read in the
    table's granularity and zone."""
    period = as_period(spec.granularity, spec.timezone, day)
    return render(spec.key_template, prefix=prefix, schema=spec.schema_name, table=spec.table_name, day=period,
                  fmt=spec.format, compression=spec.compression)


S3_KEY_LIMIT = 1024  # bytes of UTF-8: AWS refuses a longer key (KeyTooLongError); not every store checks
# What the longest object of a day adds to its key: a later generation's ".g<n>" (up to five digits) and the
# manifest's or the upload marker's suffix.
_SUFFIX_ROOM = len(".g99999") + max(len(MANIFEST_SUFFIX), len(UPLOAD_MARKER_SUFFIX))


def key_length_problem(spec, prefix: str) -> str | None:
    """Why the table's keys under ``prefix`` would be refused by S3 for their length, or None: a day's data
    object written and its manifest (14 bytes longer) refused would leave the day half written."""
    key = table_day_key(spec, spec.first_period, prefix)
    longest = len(key.encode()) + _SUFFIX_ROOM + _repeated_hour_room(spec)
    if longest <= S3_KEY_LIMIT:
        return None
    return (f"{spec.name}: key_template renders keys of {len(key.encode()):,} bytes (e.g. {key[:60]!r}…), "
            f"{longest:,} with a later generation's and the manifest's suffixes, and S3 refuses keys over "
            f"{S3_KEY_LIMIT:,} bytes: shorten key_template (or ARCHIVE_S3_PREFIX, {prefix!r})")


def _repeated_hour_room(spec) -> int:
    """How much longer than the first hour's a key of an hourly table gets in the repeated hour of a fall-back
    night: ``{hour}`` and ``{period}`` carry its UTC offset there (``02+0100``, Dagster's partition key rule),
    once per such placeholder in the template; 0 for other tables and zones without such a night."""
    if spec.granularity != "hourly":
        return 0
    first = spec.first_period.start
    if not has_dst(spec.timezone, first.year, max(first.year, dt.date.today().year) + 1):
        return 0
    return len(f"{first:%z}") * sum(spec.key_template.count(field) for field in ("{hour}", "{period}"))


def check_key_lengths(tables: Iterable, prefix: str) -> None:
    """A :class:`ValueError` naming each table whose keys under ``prefix`` S3 would refuse."""
    problems = [p for p in (key_length_problem(spec, prefix) for spec in tables) if p]
    if problems:
        raise ValueError("\n".join(problems))


def generation_pattern(key: str) -> re.Pattern[str]:
    """Matches every generation's key of ``key`` (see :func:`generation_key`); group 1 is the
    generation number, None for the first."""
    head, slash, name = key.rpartition("/")
    stem, dot, ext = name.partition(".")
    return re.compile(re.escape(f"{head}{slash}{stem}") + r"(?:\.g(\d+))?" + re.escape(f"{dot}{ext}"))


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


def upload_marker_key(key: str) -> str:
    """Where a multipart upload of ``key`` announces itself while it runs (see ``S3Upload``): a LIST of
    the day, which every run does anyway, then shows whether a killed run may have left an upload, so
    only such a day pays for listing the store's multipart uploads."""
    return key + UPLOAD_MARKER_SUFFIX


def upload_marker_naming(table: str | None, day: str | None, source: tuple[str, str | None] | None = None) -> bytes:
    """The lines of an upload marker that name the table-day whose run wrote it (none without both), and the
    database it read (``source``: its name and system identifier, as manifests record them). A run that finds a
    marker beside its day's own keys (at its key under another format, which another table's day may render)
    aborts that upload only where the marker names its own table-day (see ``leftovers.owned_by``); one that finds
    a marker of another database's run, which its table-day lock does not exclude, leaves that live upload alone
    (see ``leftovers.tidy_day``)."""
    lines = {"table": table, "day": day} if table and day else {}
    if source is not None:
        lines.update(database=source[0], system=source[1])
    return "".join(f"{field}: {json.dumps(value)}\n" for field, value in lines.items()).encode()  # (JSON: one line)


def _marker_fields(body: bytes) -> dict[str, object] | None:
    """The named lines of an upload marker's ``body`` (see :func:`upload_marker_naming`); None where one cannot be
    read (damaged)."""
    named: dict[str, object] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        field, sep, value = line.partition(": ")
        if sep and field in ("table", "day", "database", "system"):
            try:
                named[field] = json.loads(value)
            except ValueError:
                return None
    return named


def upload_marker_owner(body: bytes) -> tuple[str, str] | None:
    """The (table, day) an upload marker's ``body`` names (see :func:`upload_marker_naming`); None where it names
    none: written before markers named their table-day, or damaged."""
    named = _marker_fields(body) or {}
    table, day = named.get("table"), named.get("day")
    return (table, day) if isinstance(table, str) and isinstance(day, str) else None


def upload_marker_source(body: bytes) -> dict[str, str | None] | None:
    """The database an upload marker's ``body`` says its run read, as a manifest's ``source`` records it (database,
    system_identifier); None where it names none: written before markers named their source, or damaged."""
    named = _marker_fields(body) or {}
    database, system = named.get("database"), named.get("system")
    if not isinstance(database, str):
        return None
    return {"database": database, "system_identifier": system if isinstance(system, str) else None}


def upload_markers(key: str, listed: Iterable[str]) -> list[str]:
    """The upload markers among ``listed`` keys of any generation of the day's ``key``."""
    pattern = generation_pattern(key)
    return [k for k in listed if k.endswith(UPLOAD_MARKER_SUFFIX)
            and pattern.fullmatch(k[:-len(UPLOAD_MARKER_SUFFIX)])]


_GENERATION_LIKE = re.compile(r"^[^.]*\.g\d+(?:\.|$)")  # <name>.g<N>.<ext>, or <name>.g<N> without one

_SAMPLE_FROM = dt.datetime(2023, 12, 31, tzinfo=dt.UTC)
_SAMPLE_TO = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)


@functools.lru_cache(maxsize=64)
def sample_periods(granularity: str, timezone: str) -> tuple[tuple[Period, dict[str, str]], ...]:
    """Periods whose keys show any overlap a template's arrangement of its fields could produce: every
    day of a leap year and the days around it; for months every month of it; for hours the first hour
    of each of those days plus every hour of March and of the fall-back days of Europe and North
    America (all day-of-month and hour values side by side, both DST changes, the repeated hour).
    Cached per granularity and zone, so checking 100 tables renders keys and builds no periods."""
    if granularity != "hourly":
        return tuple((p, p.fields()) for p in periods_overlapping(granularity, timezone, _SAMPLE_FROM, _SAMPLE_TO))
    days = periods_overlapping("daily", timezone, _SAMPLE_FROM, _SAMPLE_TO)
    hours = {parse_period("hourly", timezone, f"{d.start:%Y-%m-%d}-{d.start:%H}:00") for d in days}
    for first, last in (("2024-03-01", "2024-04-01"), ("2024-10-27", "2024-10-28"), ("2024-11-03", "2024-11-04")):
        lo, hi = parse_period("daily", timezone, first).utc_start, parse_period("daily", timezone, last).utc_start
        hours.update(periods_overlapping("hourly", timezone, lo, hi))
    return tuple((p, p.fields()) for p in sorted(hours))


_ANY_PREFIX = "\x00"  # stands for any ARCHIVE_S3_PREFIX; no rendered key holds it


def key_collisions(tables: list[tuple[str, str, str, str, str, str, str, str]]) -> list[str]:
    """Pairs of table-periods that would share an object key under some ARCHIVE_S3_PREFIX, as messages
    naming both tables.

    ``tables`` holds (name, template, schema, table, format, compression, granularity, timezone) per
    configured table. The prefix is only known where the code runs, so keys are rendered with a
    placeholder for it: equal keys collide under every prefix, and a key without ``{prefix}``
    (``public.b/...``, ``archive/public.b/...``) that ends in what follows another's leading
    ``{prefix}/`` collides with it under one prefix (none, ``archive``). Where a template puts
    ``{prefix}`` elsewhere, a second pass with no prefix (the default) compares the keys as rendered.
    """
    problems = _collisions(tables, _ANY_PREFIX, mixed=any("{prefix}" not in t for _, t, *_ in tables))
    if not problems and any("{prefix}" in t and not t.lstrip("/").startswith("{prefix}/") for _, t, *_ in tables):
        problems = _collisions(tables, "")
    return problems


_CONTROL = re.compile(r"[\x01-\x1f\x7f-\x9f]")  # (NUL is the placeholder of any prefix; no name holds one)


def _unsafe(key: str, *, remedy: bool = True) -> str | None:
    """Why ``key`` would not be read back as written by every store and tool (with the remedy for a table's
    key, unless ``remedy`` is False); None if it would. A table named ``x/../y`` puts ``..`` between slashes;
    one named with a line feed, a control character."""
    dots = next((part for part in key.split("/") if part in (".", "..")), None)
    if dots:
        return (f"{dots!r} as a whole part between slashes: tools that read keys as paths (aws s3 sync to a "
                "directory, s3fs) resolve it, so the day lands outside its table's folder or on another table's file, "
                "and MinIO refuses such a key" + ("; rename the table in the database, or change key_template so no "
                                                  "part between slashes is '.' or '..'" if remedy else ""))
    control = _CONTROL.search(key)
    if control:
        return (f"the control character {control[0]!r}: S3 lists keys in XML, which cannot carry most of them, "
                "and stores refuse some (moto answers a key with a line feed with 404)"
                + ("; rename the table (or schema) in the database" if remedy else ""))
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why ARCHIVE_S3_PREFIX (surrounding white space already stripped) cannot begin every key, or None."""
    if "\x00" in prefix:
        return "a NUL character: S3 lists keys in XML, which cannot carry it"
    if not prefix.strip("/"):  # ("/": the keys of no prefix, as render and the store strip its slashes)
        return None
    if "" in prefix.strip("/").split("/"):
        return "an empty part between two slashes ('//'), which MinIO refuses and tools that read keys as paths collapse"
    return _unsafe(prefix, remedy=False)


def _split_prefixes(key: str) -> Iterator[tuple[str, str]]:
    """(prefix, rest) for every way ``key`` reads as ``<prefix>/<rest>``, the empty prefix first."""
    yield "", key
    for cut, char in enumerate(key):
        if char == "/":
            yield key[:cut], key[cut + 1:]


def _show(key: str) -> str:
    return key.replace(_ANY_PREFIX, "<ARCHIVE_S3_PREFIX>")


def _with_prefix(prefix: str) -> str:
    return f"with ARCHIVE_S3_PREFIX={prefix!r}" if prefix else "with no ARCHIVE_S3_PREFIX (the default)"


def _collisions(tables: list[tuple[str, str, str, str, str, str, str, str]], prefix: str,
                mixed: bool = False) -> list[str]:
    """``mixed``: some templates have no ``{prefix}`` (only then are keys compared under another's prefix)."""
    seen: dict[str, tuple[str, Period]] = {}
    # Under the placeholder: what follows a leading "<prefix>/" in a key, and every way a key without
    # the placeholder reads as "<some prefix>/<rest>"; a rest in both is one key under that prefix.
    after_prefix: dict[str, tuple[str, Period]] = {}
    rests: dict[str, tuple[str, Period, str, str]] = {}
    problems: list[str] = []
    lead = _ANY_PREFIX + "/"
    for name, template, schema, table, fmt, compression, granularity, timezone in tables:
        for day, fields in sample_periods(granularity, timezone):
            key = _render(template, prefix, schema, table, fields, fmt, compression)
            shown = key
            if key.endswith(MANIFEST_SUFFIX):
                problems.append(f"table {name!r}: key_template renders {_show(shown)!r}, which ends like a manifest")
                break
            if key.endswith(UPLOAD_MARKER_SUFFIX):
                problems.append(f"table {name!r}: key_template renders {_show(shown)!r}, which ends like an upload "
                                f"marker ({UPLOAD_MARKER_SUFFIX}: another table's archive run would delete it)")
                break
            unsafe = _unsafe(key)
            if unsafe:
                problems.append(f"table {name!r}: key_template renders {_show(shown)!r}, with {unsafe}")
                break
            if _GENERATION_LIKE.match(key.rpartition("/")[2]):
                problems.append(f"table {name!r}: key_template renders {_show(shown)!r}, which looks like a later "
                                "generation of another key (<name>.g<N>[.<ext>]); put the table or date elsewhere in the template")
                break
            other, when = seen.get(key), "" if prefix else _with_prefix("")
            placeholder = mixed and _ANY_PREFIX in key
            if other is None and placeholder and key.startswith(lead) and key[len(lead):] in rests:
                other_name, other_day, shown, used = rests[key[len(lead):]]
                other, when = (other_name, other_day), _with_prefix(used)  # shown: the key without {prefix}
            elif other is None and mixed and not placeholder:
                for used, rest in _split_prefixes(key):
                    if rest in after_prefix:
                        other, when = after_prefix[rest], _with_prefix(used)
                        break
            if other is not None:
                what = (f"tables {other[0]!r} ({other[1]}) and {name!r} ({day})" if other[0] != name
                        else f"table {name!r}: partitions {other[1]} and {day}")
                problems.append(f"{what} render the same object key {_show(shown)!r}{' ' + when if when else ''}; put "
                                "{prefix}, {schema} and {table} (and the whole date, or {period}) in key_template")
                break
            seen[key] = (name, day)
            if placeholder and key.startswith(lead):
                after_prefix[key[len(lead):]] = (name, day)
            elif mixed and not placeholder:
                for used, rest in _split_prefixes(key):
                    rests.setdefault(rest, (name, day, key, used))
    return problems


# The format and codec every table's keys are rendered in to compare them without their extension.
_ONE_EXTENSION = ("jsonl", "none")


def extension_twins(tables: list[tuple[str, str, str, str, str, str, str, str]]) -> list[str]:
    """Pairs of tables whose period keys differ only by their format's or codec's extension (``{ext}``,
    ``{format}``), as messages naming both: a change of format or codec of one lands on the other's key, and each
    one's runs take the other's key for their own day's under a former format (:func:`other_extension_keys`),
    where they would skip onto, tidy or abort what the other table writes. ``tables`` as for
    :func:`key_collisions`, whose check comes first (equal keys); rendered again only where the tables' extensions
    differ, with all of them in one format and codec and under one prefix (an extension written literally in a
    template, or a template without ``{prefix}`` under another's prefix, is not compared)."""
    if len({(extension(fmt, codec), fmt) for _, _, _, _, fmt, codec, _, _ in tables}) < 2:
        return []  # one extension for all: keys equal without it are equal with it (key_collisions saw them)
    seen: dict[str, tuple[int, Period, dict[str, str]]] = {}
    problems = []
    for at, (name, template, schema, table, _, _, granularity, timezone) in enumerate(tables):
        for day, fields in sample_periods(granularity, timezone):
            neutral = _render(template, _ANY_PREFIX, schema, table, fields, *_ONE_EXTENSION)
            other, then, then_fields = seen.setdefault(neutral, (at, day, fields))
            if other != at:
                problems.append(
                    f"tables {tables[other][0]!r} ({then}: {_actual_key(tables[other], then_fields)!r}) and {name!r} "
                    f"({day}: {_actual_key(tables[at], fields)!r}) render keys that differ only by their format's or "
                    "codec's extension: a change of format or compression of one would land on the other's key, and "
                    "each one's runs would take the other's archive and uploads for their own day's under a former "
                    "format; put {table} or {schema}.{table} in key_template")
                break
    return problems


def _actual_key(row: tuple[str, str, str, str, str, str, str, str], fields: dict[str, str]) -> str:
    """A table's key (a row as :func:`key_collisions` takes them) for a period's fields, to show."""
    _, template, schema, table, fmt, compression, _, _ = row
    return _show(_render(template, _ANY_PREFIX, schema, table, fields, fmt, compression))


def other_extension_keys(spec, day: Period | dt.date | str, prefix: str = "") -> list[str]:
    """The period's key as every other format and codec would render it (none where the template has no
    ``{ext}`` or ``{format}``: the same key): where its archive was before the table's format or codec changed."""
    period = as_period(spec.granularity, spec.timezone, day)
    rendered = {render(spec.key_template, prefix=prefix, schema=spec.schema_name, table=spec.table_name, day=period,
                       fmt=fmt, compression=codec) for fmt in FORMAT_EXTENSIONS for codec in CODEC_EXTENSIONS}
    return sorted(rendered - {table_day_key(spec, period, prefix)})


def template_fields(template: str) -> set[str]:
    """The fields a key template names (``{date}``, ``{period}``...)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


# how far apart in time two zones' periods of one label (key) can be: UTC-12 to UTC+14, and an hour of DST
ZONE_REACH = dt.timedelta(hours=27)


def overlapping_period_keys(spec, day: Period, prefix: str, templates: dict[str, Sequence[str]]
                            ) -> list[list[tuple[str, Period]]]:
    """(key, period) for every period of the table's other granularities that overlaps ``day``, in the table's zone,
    as each of that granularity's ``templates`` renders it in every format and codec: where the period's rows were
    archived, and perhaps removed from the source, before the table's granularity changed (the day of an hour, the
    month of a day, the days or hours of a month). ``templates``: per granularity, its default template
    (config.DEFAULT_KEY_TEMPLATES, which this module cannot import) and the table's own where it fits that
    granularity too (a template kept across the change). One group per granularity and template: the keys of a group
    share what one listing of their common prefix shows (those of two templates may share little but the table's
    folder). Deterministic, so they are found by listing, not guessed.

    The table's own granularity, where ``templates`` names it: the keys, other than ``day``'s, that a period of
    another zone overlapping ``day`` has (its rows archived before the table's time zone changed): a key is its
    period's local labels, the same in every zone, so those of the periods within :data:`ZONE_REACH` of ``day``;
    the period paired with each is this zone's of that key (the manifest there says which instants it held)."""
    groups = []
    for granularity, of_granularity in templates.items():
        if granularity == spec.granularity:
            periods = [p for p in periods_overlapping(granularity, spec.timezone, day.utc_start - ZONE_REACH,
                                                      day.utc_end + ZONE_REACH) if p.key != day.key]
        else:
            periods = periods_overlapping(granularity, spec.timezone, day.utc_start, day.utc_end)
        for template in dict.fromkeys(of_granularity):
            group = []
            for period in periods:
                fields = period.fields()  # once per period, not per format and codec: a day's hours are 400 keys
                group.extend((key, period) for key in sorted({
                    _render(template, prefix, spec.schema_name, spec.table_name, fields, fmt, codec)
                    for fmt in FORMAT_EXTENSIONS for codec in CODEC_EXTENSIONS}))
            groups.append(group)
    return groups


def listed_under(day_keys: list[str], listed) -> list[str]:
    """Of ``day_keys`` (a day's keys under other formats), those a listing shows anything of: the manifest, the
    data object or one of its generations. Any of them, not the manifest alone: a listing is an answer that may
    arrive damaged (one byte of a key flipped), and the manifest it hides must still be read, not taken for none."""
    names = listed if isinstance(listed, list) else sorted(listed)  # (a list is taken as sorted: a range's, once)
    found = []
    for key in day_keys:
        at = bisect.bisect_left(names, key)  # the first name not before the key: it starts with it, if any does
        while at < len(names) and names[at].startswith(key):
            if not _another_codecs(names[at], key):
                found.append(key)
                break
            at += 1
        else:
            if any(_of_key(name, key) for name in _names_from(names, day_prefix(key) + ".g")):
                found.append(key)
    return found


# what follows a key in the names of the same key with a codec's extension added (``x.jsonl`` → ``x.jsonl.zst``)
_CODEC_NAME_TAIL = re.compile(r"\.(?:" + "|".join(sorted({e for e in CODEC_EXTENSIONS.values() if e})) +
                              r")(?:" + re.escape(MANIFEST_SUFFIX) + "|" + re.escape(UPLOAD_MARKER_SUFFIX) + r")?")


def _another_codecs(name: str, key: str) -> bool:
    """Whether ``name``, which starts with ``key``, is exactly a name of another codec's key of the same format
    (``x.jsonl.zst`` or its manifest, for uncompressed JSONL's ``x.jsonl``): not ``key``'s. Any other name starting
    with it counts as ``key``'s, a damaged one too (``x.jsonl.lanifest.json``): its manifest is then read."""
    return _CODEC_NAME_TAIL.fullmatch(name[len(key):]) is not None


def _of_key(name: str, key: str) -> bool:
    """Whether ``name`` is one of ``key``'s generations (``<stem>.g<N>.<ext>``), or the key, its manifest or marker."""
    if name in (key, key + MANIFEST_SUFFIX, key + UPLOAD_MARKER_SUFFIX):
        return True
    head, slash, base = key.rpartition("/")
    stem, dot, ext = base.partition(".")
    return re.fullmatch(re.escape(f"{head}{slash}{stem}.g") + r"\d+" + re.escape(f"{dot}{ext}"), name) is not None


def _names_from(names: list[str], prefix: str) -> Iterator[str]:
    """The sorted ``names`` that start with ``prefix``."""
    at = bisect.bisect_left(names, prefix)
    while at < len(names) and names[at].startswith(prefix):
        yield names[at]
        at += 1


def day_listing_prefixes(key: str) -> list[str]:
    """The prefixes one listing each of which shows every generation of the day's data ``key``, its manifest,
    its upload marker and its keys under other formats: :func:`day_prefix` alone for the usual layout (the name
    is the day's, then its extension). A flat layout (``{schema}.{table}.{date}.{ext}``) has the whole schema
    under its first dot: there, the key up to its extension (the day's own keys) and its generations' prefix
    (``<schema>.g``), not every day of every table of the schema for each day archived."""
    head, slash, name = key.rpartition("/")
    stem, dot, rest = name.partition(".")
    extensions = sorted({f"{f}.{c}" if c else f for f in FORMAT_EXTENSIONS.values() for c in CODEC_EXTENSIONS.values()},
                        key=len, reverse=True)
    ext = next((e for e in extensions if rest.endswith("." + e)), None)
    if not dot or ext is None:  # the usual layout (rest is the extension), or no extension to tell the day by
        return [day_prefix(key)]
    return [key[:len(key) - len(ext)], f"{head}{slash}{stem}.g"]


def day_prefix(key: str) -> str:
    """What every generation of the day's data ``key`` and its manifest start with:
    ``<dir>/<name up to its first dot>`` (one LIST finds them all)."""
    head, slash, name = key.rpartition("/")
    return f"{head}{slash}{name.partition('.')[0]}"
