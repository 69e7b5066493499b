"""``archive-pipeline``: the work people do outside Dagster, over the same core and configuration.

Same YAML file (``--config`` or ``$ARCHIVE_PIPELINE_CONFIG``) and environment variables as the code
location (``ARCHIVE_PG_DSN``, ``ARCHIVE_S3_*``). No Dagster import.

Exit codes: 0 ok; 1 a check or comparison found differences, or a day failed; 2 usage or
configuration error; 3 the source database or the object store cannot be reached; 130 (Ctrl-C),
143 (SIGTERM) and 129 (SIGHUP, the terminal closed): cancelled.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import io
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
from psycopg.pq import TransactionStatus
from botocore.exceptions import BotoCoreError
from rich.console import Console
from rich.cells import cell_len
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from archive_pipeline.core import plan
from archive_pipeline.core.config import ArchiveConfig, ConfigError, TableSpec, load_config
from archive_pipeline.core.environment import (
    DSN_VAR,
    PRIMARY_DSN_VAR,
    UnreachableError,
    check_keys_fit,
    connect_primary,
    connect_source,
    dsn_password,
    session_settings,
    store_from_env,
)
from archive_pipeline.core.errors import (CANCELLED_LEAVES, CONFIGURATION_CAUSES, ArchiveError, classify,
                                         note_cancelled, redact, wrap)
from archive_pipeline.core.manifest import ForeignManifestError, NewerManifestError, SourceIdentity, Whose, object_key, \
    source_identity
from archive_pipeline.core.periods import Period, PeriodError, parse_period, zone
from archive_pipeline.core.session_settings import session_pinned, set_session, watch_client
from archive_pipeline.core.source import lookalike_hint
from archive_pipeline.core.store import S3Store
from archive_pipeline.core.verify import (DAMAGE, FOREIGN, INEXACT, NEWER, NOT_CHECKED, OLDER, OTHER_PERIOD,
                                          UNREADABLE, Problem, archive_damage, deep_verify, deep_verify_of,
                                          problem_kind, read_only, rows_unproven, source_side_only,
                                          verify_archive)

EXIT_OK, EXIT_DIFFERENCES, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Failed(Exception):
    """A command finished but found differences or failed days (exit code 1; ``code``: another, such as 2 where
    a table's configuration stopped it after other tables' days were done and reported)."""

    def __init__(self, message: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a container or service manager stopping us) or SIGHUP (the terminal or SSH session the
    command runs in closed), raised like Ctrl-C: Python's default would end the process on the spot, leaving the
    day's multipart upload open in the store and no word of what was stopped. Raised, the same cleanup runs as for
    Ctrl-C; ``signum`` says which signal it was, for the exit code and the line (see :func:`_cancel_said`)."""

    def __init__(self, signum: int | str = signal.SIGTERM) -> None:  # (a name: as it is copied, from its args)
        self.signum = signal.Signals[signum] if isinstance(signum, str) else signal.Signals(signum)
        super().__init__(self.signum.name)


_CANCELS = [0]  # Ctrl-C, SIGTERM and SIGHUP received so far


def _cancel(signum: int, _frame: object) -> None:
    """The first Ctrl-C, SIGTERM or SIGHUP cancels the command. The second, which an impatient person sends while
    the first one's cleanup runs (the upload's abort, the day's lock), would cut that cleanup short and leave the
    day's multipart upload open: it only says so. A third stops at once."""
    _CANCELS[0] += 1
    if _CANCELS[0] == 2:
        print("still cleaning up after the cancel (aborting the day's upload, releasing its lock); cancel once more "
              "to stop at once and leave that to the next run of the day", file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name) if signum == signal.SIGINT else Terminated(signum)


@contextmanager
def _cancellable() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal: its processes' default end would leave the day's upload open)
    handled by :func:`_cancel` while a command runs; the handlers before it afterwards (a caller in the same
    process, a test, keeps its own). A signal the process was started with ignored stays ignored, as Python itself
    leaves it: a SIGHUP (``nohup``: the command is to outlive its terminal), a SIGINT (a shell script's background
    job, ``archive-pipeline archive ... &``, which the terminal's Ctrl-C must not stop; ``trap '' INT``)."""
    _CANCELS[0] = 0
    hangup = getattr(signal, "SIGHUP", None)  # (not on Windows)
    taken = [signum for signum in (signal.SIGINT, signal.SIGTERM, *((hangup,) if hangup is not None else ()))
             if signal.getsignal(signum) is not signal.SIG_IGN]
    try:
        previous = {signum: signal.signal(signum, _cancel) for signum in taken}
    except ValueError:  # not the main thread (called from a test's thread): signals are not ours to take
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _cancel_said(exc: KeyboardInterrupt) -> tuple[int, str]:
    """A cancelled command's exit code, 128 + the signal's number as a shell reports it (Ctrl-C 130, SIGHUP 129,
    SIGTERM 143), and the words its line names the cancel with."""
    if isinstance(exc, Terminated):
        return 128 + exc.signum, f"by {exc.signum.name}"
    return 128 + signal.SIGINT, "by Ctrl-C"


def _require_existing_day(spec: TableSpec, given: str) -> None:
    """A --day/--from/--to that names a date the table's zone skipped (Pacific/Apia's 2011-12-30) is refused: it
    would be read as the next day and the command would act on that one, exit 0."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", given.strip()):
        return
    try:  # (as a day of the zone, whatever the table's granularity: an hourly table's day is its 24 hours)
        period = parse_period("daily", spec.timezone, given.strip())
    except (OverflowError, ValueError):  # a date at the calendar's ends: the range's own checks say what is wrong
        return
    if period.key != given.strip():
        raise PeriodError(f"there is no day {given.strip()} in {spec.timezone} (its clocks skipped it; the next day is "
                          f"{period.key})")


@dataclass
class Run:
    """What every command shares: the configuration, the chosen tables and days, the output mode."""

    config: ArchiveConfig
    tables: list[TableSpec]
    first: str | None  # a day, hour or month (see PeriodArg), read in each table's zone
    last: str | None
    as_json: bool
    # no markup or emoji codes: names, keys and messages are printed as they are (a table may be called
    # "[/]x" or "a:ok:"); styled cells are Text objects (see _styled)
    out: Console = field(default_factory=lambda: _CliConsole(width=None if sys.stdout.isatty() else 200,
                                                             markup=False, emoji=False))
    err: Console = field(default_factory=lambda: _CliConsole(stderr=True, markup=False, emoji=False))
    _conn: psycopg.Connection | None = None
    _primary: psycopg.Connection | None = None
    _standby: bool | None = None  # whether the source is a hot standby, asked once
    _store: S3Store | None = None
    table: str | None = None  # the table being worked on
    config_path: str | None = None  # the --config given, repeated in the commands a message suggests
    stopped: str = ""  # a table a setting or grant keeps from being read, after the others were reported: exit 2
    _noted: set[str] = field(default_factory=set)  # tables whose selection held no period, said once (see days)

    def __post_init__(self) -> None:
        # the configured names a message may hold, kept as they are by the rewording (see _for_the_cli)
        _KEPT.set(_kept_names(self.config.tables))
        _QUOTED.set(())  # (the values quoted by an earlier command in this process: not this one's)

    def command(self, verb: str) -> list[str]:
        """The command ``verb`` as a user pastes it into a shell: the program's name, and the --config this run
        was given (else it would read another table list, or none)."""
        return ["archive-pipeline", verb, *(["--config", self.config_path] if self.config_path else [])]

    def suggest(self, verb: str, table: str, day: Period | str, *options: str) -> str:
        """The command that does ``verb`` for one table's day, as a user pastes it (see :meth:`command`)."""
        return _shell_join([*self.command(verb), "--table", table, "--day", str(day), *options])

    def again(self, verb: str, *options: str) -> str:
        """The command this run is, ``verb`` with ``options`` (a --dry-run that must stay one), as a user pastes it
        to run it again: its --table choice (where not every table was chosen) and its --day or --from/--to. A
        remedy's "run it again" in words alone was read as the bare verb: every table, every day, no --dry-run."""
        chosen = [spec.name for spec in self.tables]
        tables = [] if chosen == [spec.name for spec in self.config.tables] else \
            [arg for name in chosen for arg in ("--table", name)]
        span = ["--day", self.first] if self.first is not None and self.first == self.last else \
            [*(["--from", self.first] if self.first else []), *(["--to", self.last] if self.last else [])]
        return _shell_join([*self.command(verb), *tables, *span, *options])

    def days(self, spec: TableSpec) -> list[Period]:
        """The table's periods in the selection (its hours, days or months that overlap it). Every
        command asks for them before it works on the table: an error that escapes names it."""
        self.table = spec.name
        try:
            if self.first and self.last and plan.reversed_range(spec, self.first, self.last):
                raise click.UsageError(f"--from {self.first} is after --to {self.last} (in {spec.timezone}, the "
                                       f"zone of {spec.name})")
            for given in {self.first, self.last} - {None}:
                _require_existing_day(spec, given)
            days = plan.select_days(spec, self.first, self.last)
        except PeriodError as exc:
            raise click.UsageError(f"{spec.name} ({spec.granularity}, {spec.timezone}): {exc}") from None
        if not days and (self.first or self.last) and spec.name not in self._noted:
            self._noted.add(spec.name)  # (a command asking again, compare for its last line, says it once)
            if plan.not_ended(spec, self.first, self.last):
                here = dt.datetime.now(dt.UTC).astimezone(zone(spec.timezone)).date()
                unended = (f"the {spec.granularity} period selected has not ended yet (in {spec.timezone}, where "
                           f"today is {here})")
                if not any(plan.select_days(other, self.first, self.last) for other in self.tables):
                    raise click.UsageError(f"{spec.name}: {unended}: a period is archived once it has ended")
                self.err.print(f"{spec.name}: {unended}", markup=False, soft_wrap=True)
            else:
                self.err.print(f"{spec.name}: no {spec.granularity} period of the table in the selection (its first "
                               f"day, start_date, is {spec.start_date})", markup=False, soft_wrap=True)
        return days

    def chosen_days(self, doing: str) -> list[tuple[TableSpec, list[Period]]]:
        """Each chosen table with its periods in the selection, for a command that writes (``doing``:
        "archive", "restore"): a --day or range that holds none of them would do nothing and exit 0, as
        if what was asked for had been done, so it is a usage error (each table says why above)."""
        chosen = [(spec, self.days(spec)) for spec in self.tables]
        if (self.first or self.last) and not any(days for _, days in chosen):
            raise click.UsageError(f"nothing to {doing}: no period of {', '.join(s.name for s, _ in chosen)} lies in "
                                   "the selection (before start_date, or not over yet); choose days from start_date "
                                   "to the last complete one")
        return chosen

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self._configured(connect_source())
        return self._conn

    @property
    def identity(self) -> Callable[[], SourceIdentity]:
        """The source database's identity, looked up when first asked (where a day has an archive under another
        format's key: manifest.day_archive), so a command that never needs the database does not connect."""
        return lambda: source_identity(self.conn)

    @property
    def primary(self) -> psycopg.Connection:
        """Where writes go (prune's removals, restores): ``$ARCHIVE_PG_PRIMARY_DSN`` when set, as in the code
        location (``$ARCHIVE_PG_DSN`` may be a hot standby, which refuses them), else the source."""
        if self._primary is None:
            primary = connect_primary()
            if primary is None:
                return self.conn
            self._primary = self._configured(primary)
        return self._primary

    @property
    def scratch(self) -> psycopg.Connection | None:
        """Where deep verification loads the archive when the source is a hot standby (which allows no
        temporary tables): the primary, if one is configured; None: the source itself."""
        if not os.environ.get(PRIMARY_DSN_VAR, "").strip():
            return None
        if self._standby is None:
            self._standby = read_only(self.conn)
        return self.primary if self._standby else None

    def between_days(self) -> None:
        """Check with one round trip each session a day before used, and forget those the server ended while
        they sat idle (terminated, the server restarted): such a loss shows only at the next query, which was
        the next day's, so that day failed (and the range stopped) for its neighbour's idle session. Dagster's
        ranged runs do the same (defs/assets._Source.get)."""
        for name in ("_conn", "_primary"):
            conn = getattr(self, name)
            if conn is None or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                continue  # (none yet; lost by a day, which said so; inside a transaction, not ours to end)
            try:
                conn.execute("SELECT 1")
                continue
            except psycopg.OperationalError:
                pass  # gone: the next use opens a new one
            conn.close()
            setattr(self, name, None)
            if name == "_conn":
                self._standby = None

    def fresh_primary(self) -> psycopg.Connection:
        """:attr:`primary`, its idle sessions checked first (:meth:`between_days`): asked before each day."""
        self.between_days()
        return self.primary

    @property
    def lost(self) -> bool:
        """Whether a database connection of the command was lost (the next day would fail the same way)."""
        return any(c is not None and c.closed for c in (self._conn, self._primary))

    def _configured(self, conn: psycopg.Connection) -> psycopg.Connection:
        # timeouts for every statement (prune's LOCK gives up after lock_timeout_ms instead of queueing
        # every reader of the table behind it)
        set_session(conn, {**session_settings(self.config.source), **session_pinned(conn)})  # SET: no snapshot
        watch_client(conn)
        return conn

    @property
    def store(self) -> S3Store:
        if self._store is None:
            store = store_from_env()
            check_keys_fit(self.config, store.prefix)
            self._store = store
        return self._store

    def close(self) -> None:
        for conn in (self._conn, self._primary):
            if conn is not None:
                conn.close()

    def answer(self, payload: dict[str, Any], render: Callable[[], None], code: int = EXIT_OK,
               said: str = "") -> None:
        """The command's answer, and its end: the JSON object under --json (``ok`` from ``code``, see
        :func:`_outcome`), else ``render``; then, for a non-zero ``code``, exit with it, ``said`` on stderr. Every
        command ends here, so what its answer says and what its exit code says cannot part."""
        if self.as_json:
            click.echo(_json_text(_worded(_outcome(code, payload))))
        else:
            render()
        if code != EXIT_OK:
            raise Failed(said, code)


class PeriodArg(click.ParamType):
    """An hour, day or month as Dagster names partitions (``2024-03-10-14:00``, ``2024-03-10``,
    ``2024-03-01``), or a month as ``2024-03``; read in each table's zone when the days are selected."""

    name = "period"
    _SHAPE = re.compile(r"^\d{4}-\d{2}(-\d{2}(-\d{2}:00([+-]\d{4})?)?)?$")

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not self._SHAPE.match(text):
            self.fail(f"{text!r}: expected YYYY-MM-DD (a day), YYYY-MM-DD-HH:00 (an hour) or YYYY-MM (a month)",
                      param, ctx)
        try:  # a real calendar day; the hour is read in each table's zone (a skipped hour is refused there)
            dt.date.fromisoformat(text[:10] if len(text) >= 10 else f"{text}-01")
        except ValueError as exc:
            self.fail(f"{text!r}: {exc}", param, ctx)
        return text


def _not_over(text: str, now: dt.datetime) -> str | None:
    """Why ``text`` cannot have ended yet in any zone (a day after today, UTC; a month after this one). Today
    and this month are no refusal: an hourly table's ended hours of today, a daily table's ended days of this
    month, a day already over in a zone ahead of UTC are selected (a period not over is not, and the selection
    says so; see ``Run.days``)."""
    today = now.date()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}\D.*", text) and text[:10] > (today + dt.timedelta(days=1)).isoformat():
        # an hour (YYYY-MM-DD-HH:00) of a day after tomorrow (UTC): in a zone 14 hours ahead, tomorrow's may be over
        return (f"{text} is an hour of {text[:10]}, a day after today (UTC): a period is archived once it has ended; "
                f"the last complete day (UTC) is {today - dt.timedelta(days=1)}")
    if len(text) == 10 and text > today.isoformat():
        return (f"{text} is after today (UTC): a day is archived once it has ended; the last complete day "
                f"is {today - dt.timedelta(days=1)}")
    if len(text) == 7 and text > f"{today:%Y-%m}":
        return f"{text} is a month after this one (UTC): a period is archived once it has ended"
    return None


def _utf8(text: str) -> str:
    """A name from the command line as the table list spells it: the list is read as UTF-8 whatever the
    locale, and so are arguments here (in a C locale Python would give 'Ünï' as '\udcc3\udc9cn...')."""
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeError:
        return text


def _configured(name: str, configured: Iterable[str]) -> str:
    """``name`` as the configuration spells it where it was written with SQL's double quotes (``"s"."from"``,
    as ``restore --target`` takes a name), else as given."""
    from archive_pipeline.core.restore import parse_relation

    relation = None if name in configured else parse_relation(name)
    spelled = f"{relation.schema}.{relation.name}" if relation else name
    return spelled if spelled in configured else name


def _passwords() -> tuple[str | None, ...]:
    return tuple(dsn_password(os.environ.get(name, "")) for name in (DSN_VAR, PRIMARY_DSN_VAR))


_AGAIN = "run the command again (it tries once)"  # the core's "retried automatically", for one try of a command
_CLI_WORDING = [  # what the core says of a Dagster run, and what it means for one try of a command
    (re.compile(r"; (?:the run|the download|the day) will be retried"), "; retryable"),
    (re.compile(r"transient, retried"), "transient"),
    # at a remedy's start, or a clause of it after "; " (the recovery conflict's remedy ends with it)
    (re.compile(r"(; to fix: |^|; )retried automatically"), r"\1" + _AGAIN),
    (re.compile(r"retrying later"), "try again later"),
    # remedies through settings the command line does not have: Dagster's pools, the resource's max_concurrency
    (re.compile(r"lower the pool limit or the store's max_concurrency"),
     "run fewer commands and Dagster runs against the store at once"),
    (re.compile(r"lower the pool limit in dagster\.yaml"), "run fewer commands at once (and lower Dagster's pool limit in dagster.yaml)"),
    # options: the core names its calls' arguments as Python does (into='new'), and overwrite as the setting it
    # is in the YAML, the run config and the call alike; here they are the command's options
    (re.compile(r"\b(into|on_conflict|target)='([\w.]+)'"), lambda m: f"--{m[1].replace('_', '-')} {m[2]}"),
    (re.compile(r"\bset overwrite\b"), "add --overwrite"),
    (re.compile(r"\(overwrite\)"), "(--overwrite)"),
]


# The configured names (tables, schemas) that the rewording would alter (a table "imports (overwrite)") or that
# hold control characters (a schema "ops\nlegacy"): set by each command's Run, for the messages it prints.
_KEPT: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("archive_pipeline_cli_kept", default=())


# What a day's check quotes from the database, never the core's words (a row's text may read "set overwrite" or
# "retried automatically", as a job log line does): verify's first differing row ("first difference: the source
# has a row the archive lacks: (2,...)") and what PostgreSQL said where it could not be named. Kept exactly as it
# is by the rewording, which is for the core's own sentences (see _for_the_cli).
_QUOTING = re.compile(r"first difference(?: not named|: [^:]+): (?P<quoted>.+)\Z", re.DOTALL)
_QUOTED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("archive_pipeline_cli_quoted", default=())


def _quoting(problems: list[str]) -> list[str]:
    """``problems`` (a day's check, or those an error embeds: see ``ArchiveError.problems`` and :func:`_told`), the
    values they quote from the database noted to be printed as they are: a row's text reworded showed, in the one
    place that names the differing row, a value the database does not hold (and a script reading --json got
    altered data)."""
    quoted = [found["quoted"] for found in map(_QUOTING.match, problems) if found]
    if quoted:
        _QUOTED.set(tuple(sorted({*_QUOTED.get(), *quoted}, key=len, reverse=True)))
    return problems


def _kept_names(tables: Iterable[TableSpec]) -> tuple[str, ...]:
    names = {name for spec in tables for name in (spec.name, spec.schema_name, spec.table_name)}
    kept = [name for name in names if name and (_reworded(name) != name or _ANY_CONTROL.search(name))]
    return tuple(sorted(kept, key=len, reverse=True))  # the longest first: a table's name holds its schema's


def _keep_also(*names: str) -> None:
    """Keep as they are, in what this command prints, names it was given besides the configured ones (a --target
    "imports (overwrite)" is a table's name, not the core's wording to reword)."""
    more = [name for name in names if name and (_reworded(name) != name or _ANY_CONTROL.search(name))]
    _KEPT.set(tuple(sorted({*_KEPT.get(), *more}, key=len, reverse=True)))


def _reworded(text: str) -> str:
    for said, meant in _CLI_WORDING:
        text = said.sub(meant, text)
    return text


def _for_the_cli(text: str) -> str:
    """A core message as the command line means it: the CLI tries once, where a Dagster run is retried, and
    its options are spelled as options. Applied to everything a command prints (see :class:`_CliConsole`).
    The values quoted from the database (see :func:`_quoting`) are kept exactly as they are, and the configured
    names in it are kept as they are (never reworded) with their control characters escaped (a schema's line
    feed split a remedy's command over two lines). The quoted values first: a row's text may hold a name."""
    quoted = [value for value in _QUOTED.get() if value in text]
    kept = [*quoted, *(name for name in _KEPT.get() if name in text)]
    for i, name in enumerate(kept):
        text = text.replace(name, f"\ue000{i}\ue001")
    text = _reworded(text)
    for i, name in enumerate(kept):
        text = text.replace(f"\ue000{i}\ue001", name if i < len(quoted) else
                            _ANY_CONTROL.sub(lambda found: ascii(found[0])[1:-1], name))
    return text


def _shell_join(args: list[str]) -> str:
    """``args`` as a shell reads them back; an argument holding a control character (a schema's line feed) in
    bash's $'...' quoting, its characters escaped, so the command stays on one line."""
    return " ".join(_ansi_c_quoted(arg) if _ANY_CONTROL.search(arg) else shlex.quote(arg) for arg in args)


def _ansi_c_quoted(arg: str) -> str:
    """bash's $'...' of ``arg``: \\xNN for an ASCII control (one byte), \\uNNNN from U+0080 on (a character,
    in the locale's encoding: $'\\x85' is the lone byte 0x85, not U+0085)."""
    inner = arg.replace("\\", "\\\\").replace("'", "\\'")
    return "$'" + _ANY_CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}" if ord(found[0]) < 0x80 else
                                   f"\\u{ord(found[0]):04x}", inner) + "'"


# the Unicode bidi controls (embeddings, overrides, isolates, marks) change how a terminal lays the rest of a line
# out: a name holding U+202E showed its row's day, state and key reversed
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_BIDI}]")  # C0 but line feed and tab, DEL, C1, bidi
_ANY_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI}]")  # and line feed and tab: in a name, never ours
_C1 = re.compile(r"[\x7f-\x9f]")  # DEL and C1: what json.dumps leaves raw


_WORDED = frozenset({"message", "error", "note", "remedy", "problems", "check", "differences", "reason"})


def _worded(value: Any, worded: bool = False) -> Any:
    """``value`` (a JSON answer) with the core's messages in the command line's words (:func:`_for_the_cli`): the
    strings under the keys of messages, never names and keys (a table ``imports (overwrite)``)."""
    if isinstance(value, dict):
        return {k: _worded(v, worded or k in _WORDED) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_worded(v, worded) for v in value]
    return _for_the_cli(value) if worded and isinstance(value, str) else value


def _json_text(payload: dict[str, Any]) -> str:
    """``payload`` as JSON, non-ASCII letters as they are, and DEL and the C1 controls escaped as ``\\u009b``:
    ``json`` escapes only C0 controls, and a terminal takes U+009B for the start of an escape sequence."""
    text = json.dumps(payload, indent=2, default=str, ensure_ascii=False)
    return _C1.sub(lambda found: f"\\u{ord(found[0]):04x}", text)  # only inside strings: JSON's syntax is ASCII


def _printable(text: str) -> str:
    """``text`` for a terminal, its control characters shown escaped (``\\x1b``): names and values come from
    the database, and a table named ``ev\\x1b[2J`` cleared the screen of whoever listed it (rich drops a
    carriage return or a bell, not an escape)."""
    return _CONTROL.sub(lambda found: ascii(found[0])[1:-1], text)


def _verbatim(name: object) -> Text:
    """A name or key as it is (a table may be called ``imports (overwrite)``: never reworded by
    :func:`_for_the_cli`), every control character escaped, line feeds and tabs too: a name's line feed split
    its cell and the summary line, the second half naming a table that does not exist."""
    return Text(_ANY_CONTROL.sub(lambda found: ascii(found[0])[1:-1], str(name)))


def _said(*parts: Text | str) -> Text:
    """A line of names (:func:`_verbatim`) and the command's or the core's words (reworded, escaped)."""
    return Text.assemble(*(p if isinstance(p, Text) else _printable(_for_the_cli(p)) for p in parts))


def _names(names: Iterable[object]) -> Text:
    return Text(", ").join(_verbatim(n) for n in names)


class _CliConsole(Console):
    """A console that prints core messages in the command line's words (:func:`_for_the_cli`), control
    characters escaped (:func:`_printable`). Never 0 columns wide: rich takes ``COLUMNS=0`` as a width of 0, and
    prints every line as nothing (a listing, its notes, exit 0); a width that is no width is the terminal's own (80
    where there is none)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.width < 1:
            self.width = shutil.get_terminal_size((80, 24)).columns if self.is_terminal else 80

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(_printable(_for_the_cli(o)) if isinstance(o, str) else
                        _as_records(o) if isinstance(o, Table) and self._too_narrow(o) else o for o in objects),
                      **kwargs)

    def _too_narrow(self, table: Table) -> bool:
        """Whether the terminal is narrower than the table's columns need: rich would then shrink some
        columns to nothing (a 40-column terminal lost every table's name in ``list``)."""
        return sum(_least_width(column) for column in table.columns) + 2 * (len(table.columns) - 1) > self.width


def _least_width(column: Column) -> int:
    """The fewest cells a column shows its header and values in: whole for one that does not wrap, else
    its header's longest word or six characters a line, whichever is wider."""
    cells = [cell.cell_len if isinstance(cell, Text) else cell_len(str(cell)) for cell in column.cells]
    header = max(map(cell_len, str(column.header).split() or [""]))
    return max([header, *cells]) if column.no_wrap else max(header, min(6, max(cells, default=0)))


def _as_records(table: Table) -> Text:
    """The table as one block of ``header: value`` lines per row, for a terminal too narrow for columns."""
    lines: list[Text] = []
    for row in range(table.row_count):
        if row:
            lines.append(Text(""))
        for column in table.columns:
            cell = list(column.cells)[row]
            text = cell if isinstance(cell, Text) else Text(str(cell))
            if text.plain:
                lines.append(Text.assemble((f"{column.header}: ", "bold"), text))
    return Text("\n").join(lines)


_NAMED = frozenset({"table", "key", "target", "relation", "archive"})  # columns of names and keys: verbatim


class _CliTable(Table):
    """A table whose cells (a note, a reason) are core messages in the command line's words too, and whose
    names and keys are printed as they are (:func:`_verbatim`)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*((_verbatim(r) if self.columns[i].header in _NAMED else _printable(_for_the_cli(r)))
                          if isinstance(r, str) else r for i, r in enumerate(renderables)), **kwargs)


def _outcome(code: int, payload: dict[str, Any]) -> dict[str, Any]:
    """A JSON answer: ``payload`` led by ``ok``, which is whether the command exits 0, the one rule for every
    command and every way it ends (a prune that lost its database after removing days answered ``ok: true``
    beside exit 3: a script reading ``ok`` took a night's unfinished prune for a success)."""
    return {"ok": code == EXIT_OK, **payload}


def _fail(as_json: bool, code: int, message: str, retryable: bool | None = None) -> None:
    message = _for_the_cli(redact(message, *_passwords()))  # (every path: a configuration error quotes a path too)
    if as_json:
        click.echo(json.dumps(_outcome(code, {"exit_code": code, "error": message, "retryable": retryable}),
                              indent=2))
    click.echo(f"error: {_printable(message)}", err=True)
    sys.exit(code)


def _cancelled(as_json: bool, exc: KeyboardInterrupt) -> None:
    """One line for a command stopped by Ctrl-C, SIGTERM or SIGHUP (exit 130 / 143 / 129, as a shell reports them):
    what was interrupted, what that day is left as, and that running the command again finishes the work."""
    code, how = _cancel_said(exc)
    interrupted = getattr(exc, "interrupted", None)
    if interrupted:
        text = f"{interrupted} was cancelled {how}: {CANCELLED_LEAVES[interrupted.split(' ', 1)[0]]}"
    else:
        text = f"cancelled {how}"
    _fail(as_json, code, f"{text}; to fix: run the same command again to finish", True)


def command(fn: Callable[..., None]) -> Callable[..., None]:
    """The options every command takes, and one place that turns errors into exit codes."""
    day = PeriodArg()

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),  # (no envvar: load_config reads it)
                  help="table list (default $ARCHIVE_PIPELINE_CONFIG, else ./archive_tables.yaml)")
    @click.option("--table", "-t", "table_names", multiple=True, metavar="SCHEMA.TABLE",
                  help="a configured table (repeatable; default: all)")
    @click.option("--day", type=day, multiple=True, metavar="PERIOD", help="one day (2024-03-10), hour (2024-03-10-14:00) or month "
                  "(2024-03 or 2024-03-01) in each table's zone: the table's periods that overlap it")
    @click.option("--from", "first", type=day, multiple=True, metavar="PERIOD",
                  help="first day, hour or month of a range (default: the table's start_date)")
    @click.option("--to", "last", type=day, multiple=True, metavar="PERIOD",
                  help="last day, hour or month of a range (default: the last complete period)")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output on stdout")
    @functools.wraps(fn)
    def wrapper(config_path, table_names, day, first, last, as_json, **kwargs):
        for name, given in (("--day", day), ("--from", first), ("--to", last)):  # Click would keep the last one
            if len(given) > 1:
                raise click.UsageError(f"{name} is given {len(given)} times ({', '.join(given)}): give it once, or a "
                                       "range with --from and --to")
        day, first, last = (given[0] if given else None for given in (day, first, last))
        if day and (first or last):
            raise click.UsageError("give either --day or --from/--to, not both")
        first, last = (day, day) if day else (first, last)
        if first and last and first[:len(last)] > last:
            raise click.UsageError(f"--from {first} is after --to {last}")
        problem = _not_over(last or first, dt.datetime.now(dt.UTC)) if (last or first) else None
        if problem:
            raise click.UsageError(problem)
        if config_path is not None and not config_path.strip():  # `--config "$TABLES"` with $TABLES unset or empty
            raise click.UsageError("--config was given an empty path: name the YAML file of the tables (or leave "
                                   "--config out to read $ARCHIVE_PIPELINE_CONFIG, default ./archive_tables.yaml)")
        run = None
        try:
            config = load_config(config_path, given_by="--config" if config_path else None)
            by_name = {spec.name: spec for spec in config.tables}
            table_names = [_configured(_utf8(name), by_name) for name in table_names]
            unknown = [name for name in table_names if name not in by_name]
            if unknown:
                hints = "".join(lookalike_hint(n, sorted(by_name), "table", "the configuration") for n in unknown)
                raise click.UsageError(f"table(s) {unknown} are not in the configuration; configured: "
                                       f"{sorted(by_name)}{hints}")  # (a DSN pasted there: redacted by _refused)
            tables = [by_name[n] for n in dict.fromkeys(table_names)] or list(config.tables)
            run = Run(config, tables, first, last, as_json, config_path=config_path)
            fn(run, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt as exc:
            _cancelled(as_json, exc)
        except Failed as exc:
            if str(exc):
                click.echo(_printable(str(exc)), err=True)
            sys.exit(exc.code or EXIT_DIFFERENCES)
        except ConfigError as exc:
            _fail(as_json, EXIT_USAGE, str(exc), False)
        except UnreachableError as exc:  # refused for a reason a setting fixes (a wrong password): a usage error
            _fail(as_json, EXIT_UNREACHABLE if exc.retryable else EXIT_USAGE, str(exc), exc.retryable)
        except psycopg.Error as exc:  # outside one day's work (reading the catalog, say): the cause, not "lost"
            found = classify(exc)
            code = (EXIT_USAGE if found.cause in CONFIGURATION_CAUSES else
                    EXIT_UNREACHABLE if found.retryable or isinstance(exc, psycopg.OperationalError) else
                    EXIT_DIFFERENCES)
            where = f" ({run.table})" if run is not None and run.table else ""
            _fail(as_json, code, f"the source database failed{where}: {found.cause} ({type(exc).__name__}: "
                  f"{redact(str(exc).strip(), *_passwords())}); to fix: {found.remedy}", found.retryable)
        except BotoCoreError as exc:
            _fail(as_json, EXIT_UNREACHABLE, f"lost the object store ({type(exc).__name__}): check "
                  "$ARCHIVE_S3_ENDPOINT_URL and the network", True)
        except ArchiveError as exc:
            configuration = _configuration(exc)  # a missing table, a grant
            transient = getattr(exc, "retryable", False)  # the store or database failing the whole command
            code = EXIT_USAGE if configuration else EXIT_UNREACHABLE if transient else EXIT_DIFFERENCES
            _quoting(exc.problems)  # (a refusal quoting a differing row, as _told notes it for a day's error)
            text = str(exc)
            if run is not None and run.table and not getattr(exc, "table", None) and run.table not in text:
                text = f"table {run.table!r}: {text}"  # (an error that does not know which table it is about)
            _fail(as_json, code, redact(text, *_passwords()), getattr(exc, "retryable", None))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: still one paragraph, and no secret in it
            _fail(as_json, EXIT_DIFFERENCES, f"unexpected error{f' ({run.table})' if run and run.table else ''}: "
                  f"{type(exc).__name__}: {redact(str(exc), *_passwords())}; this is a bug in archive_pipeline: "
                  "report it with the command that was run and this message", None)
        finally:
            if run is not None:
                run.close()

    return wrapper


class _Command(click.Command):
    """Click's command, except that an option taking one value refuses to be given twice: Click keeps the
    last one, so ``restore --target s.a ... --target s.b`` (a pasted line, an edited history entry)
    silently wrote into ``s.b``. Flags and repeatable options are exempt."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = args[:args.index("--")] if "--" in args else args
        for param in self.params:
            if not isinstance(param, click.Option) or param.multiple or param.is_flag or param.count:
                continue
            names = [name for name in (*param.opts, *param.secondary_opts) if name.startswith("--")]
            uses = [arg for arg in given if arg in names or any(arg.startswith(f"{name}=") for name in names)]
            if len(uses) > 1:
                raise click.UsageError(f"{names[0]} is given {len(uses)} times: give it once", ctx)
        return super().parse_args(ctx, args)


class _ClosedPipeSafe:
    """stdout (or stderr) whose reader may go away (``verify | head -1``): the rest of the output goes to /dev/null and
    the command ends as it would have, its exit code its own. A closed pipe is no finding, and rich's and
    Click's own handling exited 1, which the exit codes read as "differences found or a day failed". Output
    that cannot be written for another reason (a full disk, an I/O error) goes the same way, and is kept in
    ``lost``: the command still does its work and keeps its exit code, and says what was lost at the end."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.lost: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._gone(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._gone(exc)

    def _gone(self, exc: OSError) -> None:
        if not isinstance(exc, BrokenPipeError) and self.lost is None:
            self.lost = exc
        self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _output_lost(safe: _ClosedPipeSafe | None, code: int | str | None) -> None:
    """Say so when the command's output could not be written (a full disk behind ``> report.json``), and
    exit 1 where the command itself would have exited 0: a script must not read a report never written
    as a success. A closed pipe (``| head``) is no loss (see :class:`_ClosedPipeSafe`)."""
    if safe is None or safe.lost is None:
        return
    with contextlib.suppress(OSError, ValueError):
        print(f"error: the command's output could not be written to stdout ({safe.lost.strerror or safe.lost}); "
              "to fix: write it where there is room (another file, or a pipe)", file=sys.__stderr__ or sys.stderr)
    if not code:
        sys.exit(1)


def _refused(exc: click.ClickException, as_json: bool) -> None:
    """A usage error, Click's or a command's (a malformed --day, an unknown --table, a bad --target), said as every
    error is, and the command ended with its exit code: under --json also the JSON error object on stdout, and
    Click's usage text on stderr, both without passwords (redact), since such a refusal quotes what was typed (a
    DSN pasted into --target or --table put the database's password into the job's log)."""
    if as_json:
        click.echo(json.dumps(_outcome(exc.exit_code, {"exit_code": exc.exit_code, "error": redact(
            exc.format_message(), *_passwords()), "retryable": False}), indent=2))
    shown = io.StringIO()
    exc.show(file=shown)
    click.echo(redact(shown.getvalue(), *_passwords()), err=True, nl=False)
    sys.exit(exc.exit_code)


class _Commands(click.Group):
    """Click's group, except that a usage error (a malformed --day, an unknown --table, a missing
    --target) under ``--json`` is also the JSON error object on stdout, as every other failure is: a
    script reads stdout, and Click alone prints its usage text on stderr only."""

    def main(self, args: Sequence[str] | None = None, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        # Names are UTF-8 whatever the locale, and so is JSON: in a C locale printing 'Ünï' failed the command.
        for stream in (sys.stdout, sys.stderr):
            if (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8":
                with contextlib.suppress(AttributeError, ValueError):  # not a reconfigurable text stream
                    stream.reconfigure(encoding="utf-8", errors="backslashreplace")
        # started with stdout or stderr closed (a cron line's `>&-`): Python has None there; the output goes nowhere
        sys.stdout = sys.stdout or open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - the process's own
        sys.stderr = sys.stderr or open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        stdout, stderr = sys.stdout, sys.stderr
        if hasattr(stdout, "fileno"):
            sys.stdout = _ClosedPipeSafe(stdout)
        if hasattr(stderr, "fileno"):  # (`archive ... 2>&1 | head`: a note on stderr ended the command)
            sys.stderr = _ClosedPipeSafe(stderr)
        safe = sys.stdout if isinstance(sys.stdout, _ClosedPipeSafe) else None
        try:
            with _cancellable(), contextlib.ExitStack() as restore:
                restore.callback(setattr, sys, "stdout", stdout)
                restore.callback(setattr, sys, "stderr", stderr)
                restore.callback(sys.stderr.flush)
                restore.callback(sys.stdout.flush)  # (runs first) while the safe stdout is there to take a closed pipe
                try:
                    returned = super().main(argv, standalone_mode=False, **kwargs)
                except click.ClickException as exc:
                    _refused(exc, "--json" in argv)
                except click.Abort:
                    click.echo("Aborted!", err=True)
                    sys.exit(1)
        except SystemExit as exc:
            _output_lost(safe, exc.code)
            raise
        _output_lost(safe, 0)
        return returned

    command_class = _Command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Archive date-partitioned PostgreSQL tables to S3: list, archive, verify, compare, restore, prune.

    Reads the same YAML table list and ARCHIVE_PG_DSN / ARCHIVE_S3_* variables as the Dagster code
    location. Exit codes: 0 ok, 1 differences found or a day failed, 2 usage or configuration error,
    3 source database or object store unreachable, 130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP) cancelled.
    """


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _num(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _styled(text: str, style: str | None) -> Text:
    """A cell in a colour (the consoles interpret no markup, so a name's brackets print as they are)."""
    return Text(text, style=style or "")


def _table(*columns: str) -> Table:
    table = _CliTable(box=None, header_style="bold", pad_edge=False)
    numbers = ("rows", "bytes", "est. rows", "est. bytes", "inserted", "source rows", "archive rows", "seconds")
    for name in columns:
        # short facts (a day, a state, a number) whole on one line; long ones (names, keys, notes) wrap
        # on a narrow terminal rather than cut every cell short
        short = name in numbers or name in ("day", "state", "result", "action", "status", "est.")
        table.add_column(name, justify="right" if name in numbers else "left", no_wrap=short,
                         overflow="ellipsis" if short else "fold", min_width=10 if name == "day" else None)
    return table


# ----------------------------------------------------------------------------------------------


@main.command("list")
@click.option("--check-source", is_flag=True, help="fingerprint each archived day in PostgreSQL to find days "
              "changed since they were archived (scans every archived day)")
@command
def list_days(run: Run, check_source: bool) -> None:
    """Per table and day: archived, missing, empty, changed, unreadable or not-checked; rows, bytes and when.

    Exits 1 when --check-source finds a changed day, a manifest is unreadable, or a day could not be checked."""
    failed_tables: dict[str, str] = {}
    statuses = [s for spec in run.tables for s in _listed(run, spec, check_source, failed_tables)]
    summary = {spec.name: {state: sum(1 for s in statuses if s.table == spec.name and s.state == state)
                           for state in plan.STATES} for spec in run.tables}

    def render() -> None:
        table = _table("table", "day", "state", "rows", "bytes", "archived at", "key", "note")
        for s in statuses:
            style = {"missing": "yellow", "changed": "red", "unreadable": "red", "not-checked": "yellow"}.get(s.state)
            table.add_row(s.table, s.day.isoformat(), _styled(s.state, style), _num(s.rows),
                          _size(s.bytes), (s.archived_at or "")[:19], s.key, s.note)
        run.out.print(table)
        for name, counts in summary.items():
            run.out.print(_said(_verbatim(name), ": " + (", ".join(f"{n} {state}" for state, n in counts.items() if n)
                                                         or "no days")))
        for name, why in failed_tables.items():
            run.out.print(_said(_verbatim(name), f": not listed: {why}"), soft_wrap=True)

    bad = any(s.state in ("changed", "unreadable", "not-checked") for s in statuses) or bool(failed_tables)
    run.answer({"days": [s.as_dict() for s in statuses], "summary": summary,
                **({"tables_failed": [{"table": name, "error": why} for name, why in failed_tables.items()]}
                   if failed_tables else {}), **_stopped_by(run.stopped)}, render,
               EXIT_USAGE if run.stopped else EXIT_DIFFERENCES if bad else EXIT_OK)


def _listed(run: Run, spec: TableSpec, check_source: bool, failed_tables: dict[str, str]) -> list[plan.DayStatus]:
    """One table's days listed, or its archived days ``unreadable`` where it cannot be read (see
    :func:`_unreadable_table`); the other tables are still listed."""
    days = run.days(spec)
    try:
        return plan.day_statuses(run.conn, spec, run.store, days, check_source=check_source)
    except ArchiveError as exc:
        unread = _unreadable_table(run, spec, days, exc, failed_tables)
    return [plan.DayStatus(spec.name, day, "unreadable", _archived_key(lookup), None,
                           *((lookup.archived.rows, lookup.archived.bytes, lookup.archived.archived_at)
                             if lookup.archived else (None, None, None)), None, why)
            for day, (lookup, why) in unread.items()]


def _archived_key(lookup: plan.ManifestLookup) -> str:
    """The key of a looked-up day's object (its manifest's where it could not be read)."""
    return (lookup.archived.object_key if lookup.archived else None) or lookup.key


# ----------------------------------------------------------------------------------------------


@contextmanager
def _progress(run: Run) -> Iterator[Progress | None]:
    if run.as_json or not run.err.is_terminal:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                  TextColumn("{task.completed:>12,.0f} rows"), TextColumn("{task.fields[size]:>10}"),
                  TextColumn("{task.fields[rate]:>14}"), TimeElapsedColumn(), console=run.err,
                  transient=True) as progress:
        yield progress


@main.command()
@click.option("--dry-run", is_flag=True, help="print the plan (days, keys, estimated rows and bytes, skips); "
              "write nothing")
@click.option("--overwrite", is_flag=True, help="archive again even where an identical archive exists")
@command
def archive(run: Run, dry_run: bool, overwrite: bool) -> None:
    """Archive one day (--day) or a range (--from/--to) of the chosen tables.

    Days without data in PostgreSQL are reported and left alone. Exits 1 when a day fails (the
    others still run) or, with --dry-run, when a table cannot be planned (the others still are); 2
    where a table's configuration or grants stop it."""
    if dry_run:
        _archive_plan(run, overwrite)
        return
    results: list[dict[str, Any]] = []
    stopped = ""  # why a table's configuration failed it after other days were done (exit 2, as alone)
    settings = session_settings(run.config.source)
    chosen = run.chosen_days("archive")
    lost = ""
    with _progress(run) as progress:
        try:
            _archive_tables(run, chosen, settings, overwrite, progress, results)
        except _DatabaseLost as exc:
            lost = str(exc)
    stopped = next((r["message"] for r in results if r.get("stopped")), "")
    failed = [r for r in results if r["status"] == "failed"]
    for r in results:
        r.pop("stopped", None)

    def render() -> None:
        table = _table("table", "day", "status", "rows", "bytes", "seconds", "key / message")
        for r in results:
            style = {"failed": "red", "no-data": "dim"}.get(r["status"])
            table.add_row(r["table"], r["day"], _styled(r["status"], style),
                          _num(r.get("rows")), _size(r.get("bytes")),
                          f"{r['seconds']:.2f}" if "seconds" in r else "",
                          _verbatim(r["key"]) if r.get("key") else
                          ("see below" if r["status"] == "failed" else r.get("message") or ""))
        run.out.print(table)
        for r in failed:
            run.out.print(_said(_verbatim(r["table"]), f" {r['day']} failed: {r['message']}"), soft_wrap=True)

    if lost:  # the days done before are still reported, with the command's error (exit 3, as before)
        ended = {"exit_code": EXIT_UNREACHABLE, "error": f"{lost}; the days after it were not tried: run the same "
                 "command again (archived days are skipped)", "retryable": True}
        run.answer({"days": results, **ended}, render, EXIT_UNREACHABLE, f"error: {ended['error']}")
    code = EXIT_USAGE if stopped else EXIT_DIFFERENCES if failed else EXIT_OK
    run.answer({"days": results, **_stopped_by(stopped)}, render, code,
               _archive_failed(run, failed, stopped, overwrite))


def _archive_failed(run: Run, failed: list[dict[str, Any]], stopped: str, overwrite: bool) -> str:
    """What archive says on stderr of its ``failed`` days: what to fix, and the command that archives them again."""
    if not failed:
        return ""
    if stopped:
        return (f"{len(failed)} day(s) failed; a table's configuration or privileges stopped it (see its days "
                "above): fix what they say and run the same command again")
    if overwrite:  # the same command would archive every day again, as new generations
        return (f"{len(failed)} day(s) failed; fix what the messages say and archive those days again: "
                f"{_archive_again(run, failed)}")
    changed = [r for r in failed if r.get("needs_overwrite")]
    again = _archive_again(run, changed)
    rest = len(failed) - len(changed)
    return (f"{len(failed)} day(s) failed; "
            + ("fix what the messages say and run the same command again (archived days are skipped)" if rest else "")
            + ("; " if rest and changed else "")
            + (f"the day(s) changed since they were archived are archived again only with overwrite: {again}"
               if changed else ""))


@contextlib.contextmanager
def _losing_the_database(run: Run, results: list[dict[str, Any]], doing: str) -> Iterator[None]:
    """A database lost between two tables (a session ended and not opened again: the server down, a failover), once
    days were done: :class:`_DatabaseLost`, so the answer still lists them (exit 3) rather than the error alone."""
    try:
        yield
    except (UnreachableError, psycopg.Error, ArchiveError) as exc:
        if not results or not (isinstance(exc, UnreachableError) or run.lost
                               or isinstance(exc, psycopg.OperationalError)):
            raise
        raise _DatabaseLost(f"lost the source database while {doing}: {_told(exc)}") from None


def _archive_tables(run: Run, chosen: list[tuple[TableSpec, list[Period]]], settings: dict[str, str],
                    overwrite: bool, progress: Progress | None, results: list[dict[str, Any]]) -> None:
    """archive's days, table by table, each day's outcome appended to ``results`` as it is known (a table whose
    configuration or grants stop it: its days failed, the first marked ``stopped``). Raises :class:`_DatabaseLost`
    when the database is lost: the days after it would fail the same way, and not for their own reasons."""
    for spec, days in chosen:
        with _losing_the_database(run, results, f"looking for the days of {spec.name}"):
            _archive_table(run, spec, days, settings, overwrite, progress, results)


def _archive_table(run: Run, spec: TableSpec, days: list[Period], settings: dict[str, str], overwrite: bool,
                   progress: Progress | None, results: list[dict[str, Any]]) -> None:
    """archive's days of one table (see :func:`_archive_tables`)."""
    run.between_days()  # (a session the server ended while the last table's days were archived: replaced)
    try:
        present, unknown = plan.present_days(run.conn, spec, days)
    except ArchiveError as exc:  # the table cannot be read at all (a grant, a missing table)
        if len(run.tables) == 1 or run.conn.closed or run.lost:
            raise  # the command's only table: its own error (exit 2 for configuration)
        results += _table_failed(spec, days, exc)  # what was archived before is still reported
        if _configuration(exc) and not any(r.get("stopped") for r in results):
            results[-1]["stopped"] = True
        return
    pending, gone, unread = _absent_days(run, spec, [d for d in days if d not in present and d not in unknown],
                                         _overwrites_dropped(days, overwrite))
    for day in days:
        if day in unknown:
            results.append(_unprobed(spec, day, unknown[day]))
            continue
        if day in unread:  # its manifest may hold a pending mark, or be the only record of the day: not "no data"
            results.append(_manifest_unread(spec, day, unread[day]))
            continue
        if day in pending:
            results.append(_settle_day(run, spec, day, pending[day]))
            continue
        if day not in present and not (day in gone and _overwrites_dropped(days, overwrite)):
            results.append({"table": spec.name, "day": day.isoformat(), "status": "no-data",
                            "message": _dropped_by_hand(spec, day, gone[day], run) if day in gone else
                            "no data for this day in PostgreSQL"})
            continue
        results.append(_archive_day(run, spec, day, settings, overwrite, progress))
        if run.lost:  # (its message says the database was lost)
            raise _DatabaseLost(results[-1]["message"])


def _archive_again(run: Run, days: list[dict[str, Any]], most: int = 3) -> str:
    """The commands that archive ``days`` (a command's failed days) again with --overwrite: one per day for a few
    of a table, else one for the range from its first to its last (every day of it archived again: said so)."""
    by_table: dict[str, list[str]] = {}
    for r in days:
        by_table.setdefault(r["table"], []).append(r["day"])
    commands = []
    for table, named in by_table.items():
        named = sorted(named)
        if len(named) <= most:
            commands += [run.suggest("archive", table, day, "--overwrite") for day in named]
        else:
            commands.append(_shell_join([*run.command("archive"), "--table", table, "--from", named[0], "--to",
                                         named[-1], "--overwrite"])
                            + f" ({len(named)} days; every day from {named[0]} to {named[-1]} is archived again)")
    return "; ".join(commands)


def _verify_remedy(run: Run, spec: TableSpec, day: Period, problems: list[str], how: tuple[str, ...] = ()) -> str:
    """What to do about a day whose archive failed verify (one whose manifest could not even be read: again),
    chosen by its problems' kinds (verify.problem_kind), never by words inside them: a late row whose text read "not
    checked" made a day that was checked "verify again", for ever. ``how``: the options it was verified with
    (--deep, --download), which verifying it again needs."""
    table = spec.name
    kinds = {problem_kind(problem) for problem in problems}
    if NEWER in kinds:  # not damaged: this version cannot read it
        return NewerManifestError.remedy
    if OLDER in kinds:  # an older version's fingerprint: not damaged
        return (f"archive the day again ({run.suggest('archive', table, day, '--overwrite')}) to record a fingerprint "
                "this version computes (the archive is not known to be damaged: its fingerprint is an older "
                "archive_pipeline's), or verify it with the older archive_pipeline")
    if FOREIGN in kinds:  # another table-day's, intact (its own remedy)
        return ForeignManifestError.remedy
    if OTHER_PERIOD in kinds and not kinds & {DAMAGE, UNREADABLE}:  # the zone or granularity changed: intact
        return ("archive the day again with overwrite as the table is now configured, or configure the table as it "
                "was when the day was archived (its archive is intact: it holds that other period's rows)")
    if NOT_CHECKED in kinds:  # nothing was checked: what kept it from being checked says what to do
        return _unchecked_remedy(run, spec, day, next(p for p in problems if problem_kind(p) == NOT_CHECKED), how)
    if INEXACT in kinds:  # a value its format's encoding changed: archived again, alike
        return ("archive the table in another format (see the problem), then this day again: "
                f"{run.suggest('archive', table, day, '--overwrite')}; archived again as it is, it fails alike")
    if source_side_only(problems) and (own := next((p.remedy for p in problems if getattr(p, "remedy", "")), "")):
        # the source's columns or a type in them changed since (their cause's own remedy): no rows were lost there
        return (f"the archive checks out (its rows are the ones recorded); the source's columns (or a type in them) "
                f"are what changed: {_for_the_cli(own)} ({run.suggest('archive', table, day, '--overwrite')})")
    if source_side_only(problems):  # the archive held exactly the rows recorded: the source is what differs
        return (f"the archive checks out (its rows are the ones recorded): the source differs. If the source's rows "
                f"are the right ones (late rows, edits), archive the day again: "
                f"{run.suggest('archive', table, day, '--overwrite')}; if rows were lost from the source, the archive "
                f"is their only copy: {_put_back(run, spec, day, problems)}")
    return (f"if the source still holds the day as it should be ({run.suggest('compare', table, day)}), archive "
            f"it again: {run.suggest('archive', table, day, '--overwrite')} (a new generation; the damaged one is kept "
            "where it may hold rows); if the source no longer holds it, restore the object or its manifest from a "
            "backup of the bucket (its versions, a replica) before anything else")


def _unchecked_remedy(run: Run, spec: TableSpec, day: Period, problem: str, how: tuple[str, ...]) -> str:
    """What to do about a day ``problem`` kept from being checked: its cause's own remedy where that is a person's
    to do (not retryable; or retryable, as a partition pending detach, whose FINALIZE is theirs: a retry alone never
    ends it), then verify again; else verify again once the database and store answer."""
    own = getattr(problem, "remedy", "") or (problem.split("to fix: ", 1)[1] if "to fix: " in problem else "")
    again = run.suggest('verify', spec.name, day, *how)
    if problem.startswith("not checked (not retryable)"):
        return f"{own or 'see the cause above'}; then verify the day again (it was not checked)"
    if own and not own.startswith("retried automatically"):
        return f"{own}; then verify the day again ({again}) (it was not checked)"
    return f"verify the day again ({again}) once the database and store answer: it was not checked"


def _put_back(run: Run, spec: TableSpec, day: Period, problems: list[str]) -> str:
    """How to put back the rows a source lost of an archived day: restore into the table where it holds none of
    the day (restore refuses a day whose table holds some of it: it could not tell them apart); else restore into
    a new table and insert the rows the table lacks (see lifecycle.put_back_statement; a row of another day never
    equals one of this day)."""
    table = spec.name
    counted = re.search(r"not the archive's: ([\d,]+) rows against", problems[0] if problems else "")
    if counted and counted.group(1).replace(",", "") == "0":
        return f"restore them into the table ({run.suggest('restore', table, day, '--into', 'original')})"
    from psycopg import sql

    from archive_pipeline.core.lifecycle import put_back_statement

    holder = spec.child_table(day) if spec.partitioning.mode == "naming" else spec.table_name
    suffix = "_restored_" + re.sub(r"\W", "", day.isoformat())  # (a repeated hour's two periods told apart)
    budget = 63 - len(suffix.encode())  # PostgreSQL keeps 63 bytes of a name, in the database's encoding
    encoding = run.conn.info.encoding or "utf-8"
    head = holder.encode(encoding, "replace")[:max(budget, 1)].decode(encoding, "ignore")
    target = sql.Identifier(spec.schema_name, head + suffix).as_string(run.conn)
    return (f"put back the rows the table lacks (it holds some of the day): restore the day into a new table "
            f"({run.suggest('restore', table, day, '--into', 'new', '--target', target)}), then run "
            f"{put_back_statement(run.conn, spec, day, target)}; "
            "(columns of a type without equality, json or xml, compare by their text)")


def _stopped_by(message: str) -> dict[str, Any]:
    """The answer's fields for a command a table's configuration stopped (as the command's own error has them)."""
    return {"exit_code": EXIT_USAGE, "error": message, "retryable": False} if message else {}


def _configuration(exc: ArchiveError) -> bool:
    """Whether ``exc`` is one a setting or a grant fixes (the command's exit 2)."""
    return getattr(exc, "cause", None) in CONFIGURATION_CAUSES


def _told(exc: BaseException) -> str:
    """A day's error as the command prints it: its message with the notes the core added on its way out (what
    a cleanup could not do: "could not take back the pending removal mark ..."), passwords redacted, in the
    command line's words, the values it quotes from the database (the differing row a refusal embeds with its
    proof's problems) noted to be printed exactly, by whichever path prints it (see :func:`_quoting`)."""
    _quoting(getattr(exc, "problems", None) or [])
    notes = [str(note) for note in getattr(exc, "__notes__", ()) or ()]
    return _for_the_cli(redact("; ".join([str(exc), *notes]), *_passwords()))


def _table_failed(spec: TableSpec, days: list[Period], exc: ArchiveError) -> list[dict[str, Any]]:
    """A table whose days could not be looked for at all, after other tables' days were done: each of its days
    failed with the table's error, so the answer still reports what was done before (exit 1)."""
    message = _told(exc)
    message = message if spec.name in message else f"{spec.name}: {message}"
    return [{"table": spec.name, "day": day.isoformat(), "status": "failed", "message": message,
             "retryable": exc.retryable} for day in days]


def _settle_day(run: Run, spec: TableSpec, day: Period, key: str) -> dict[str, Any]:
    """A day gone from the source whose manifest holds a pending removal mark (a prune killed after its COMMIT):
    the mark settled on the primary, where removals run (a standby cannot), and said; nothing to archive."""
    from archive_pipeline.core.lifecycle import settle_pending_removal

    run.between_days()
    try:
        settled = settle_pending_removal(run.primary, spec, day, run.store, key=key)  # (a former format's, too)
    except ArchiveError as exc:
        return {"table": spec.name, "day": day.isoformat(), "status": "failed",
                "message": _told(exc), "retryable": exc.retryable}
    return {"table": spec.name, "day": day.isoformat(), "status": "settled",
            "message": f"nothing to archive: a removal of the day (killed before it marked the day done) left its "
                       f"mark pending, which was {settled.outcome} ({settled.why})"}


def _unprobed(spec: TableSpec, day: dt.date, why: str) -> dict[str, Any]:
    """A day of a table whose days could not be looked for (see ``plan.present_days``): it failed, alone."""
    return {"table": spec.name, "day": day.isoformat(), "status": "failed", "message": _for_the_cli(why),
            "retryable": why.startswith("not checked (retryable)")}


def _archive_day(run: Run, spec: TableSpec, day: dt.date, settings: dict[str, str], overwrite: bool,
                 progress: Progress | None) -> dict[str, Any]:
    from archive_pipeline.core.archive import DayRemovedError, archive_partition

    task = None
    started = time.monotonic()

    def report(rows: int, size: int) -> None:
        if progress is not None and task is not None:
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=rows, size=_size(size), rate=f"{rows / elapsed:,.0f} rows/s")

    run.between_days()
    if progress is not None:  # a bar with an end where the catalog knows the day's size for free
        estimate = plan.catalog_estimate(run.conn, spec, day)
        task = progress.add_task(f"{spec.name} {day}", total=estimate.rows if estimate and estimate.rows else None,
                                 size="", rate="")
    try:
        result = archive_partition(run.conn, spec, day, run.store, progress=report, progress_every=0.5,
                                   session_settings=settings, overwrite=overwrite or None)
    except ArchiveError as exc:
        if run.conn.closed:  # the connection itself went: the next day would fail the same way (see _archive_tables)
            return {"table": spec.name, "day": day.isoformat(), "status": "failed", "retryable": True,
                    "message": f"lost the source database while archiving {spec.name} {day}: {_told(exc)}"}
        if isinstance(exc, DayRemovedError) and exc.nothing_to_do:  # removed (its day table detached by retention,
            # or emptied meanwhile): no data, as a removed day the source has no rows of is, its message saying why
            return {"table": spec.name, "day": day.isoformat(), "status": "no-data", "message": _told(exc)}
        # (a day changed since archived, a removed day whose rows are back, an archive of another format, codec or
        # database: what only --overwrite archives again, as the day's own message says)
        changed = not exc.retryable and exc.needs_overwrite
        return {"table": spec.name, "day": day.isoformat(), "status": "failed", "message": _told(exc),
                "retryable": exc.retryable, **({"needs_overwrite": True} if changed else {})}
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)
    return {"table": spec.name, "day": day.isoformat(), "status": "skipped" if result.skipped else "archived",
            "key": result.key or None, "uri": result.uri or None, "empty": result.empty,
            "message": "empty day: a manifest and no object" if result.empty else "",
            "rows": result.rows, "bytes": result.bytes,
            "md5": result.md5, "seconds": round(result.duration_seconds, 3)}


def _archive_plan(run: Run, overwrite: bool) -> None:
    planned = []
    failed_tables: dict[str, str] = {}
    for spec, days in run.chosen_days("archive"):
        pending: dict[Period, str] = {}

        gone: dict[Period, int] = {}
        unread: dict[Period, dict[str, Any]] = {}  # what the run says of them (see _manifest_unread)

        def archived_absent(absent: list[Period]) -> set[Period]:  # (the run's own look at them: see _absent_days)
            found_pending, found_gone, found_unread = _absent_days(run, spec, absent,
                                                                   _overwrites_dropped(days, overwrite))
            pending.update(found_pending)
            gone.update(found_gone)
            unread.update({day: _manifest_unread(spec, day, why) for day, why in found_unread.items()})
            return set(found_gone) if _overwrites_dropped(days, overwrite) else set()  # (the run's rule: its flag)

        try:
            found = plan.plan_archive(run.conn, spec, run.store, days, overwrite=overwrite or spec.overwrite,
                                      archived_absent=archived_absent)
        except ArchiveError as exc:  # one table that cannot be planned (missing, unreadable): the others still are,
            # as the real run still archives them
            if run.conn.closed or run.lost or len(run.tables) == 1:
                raise
            why = _told(exc)
            failed_tables[spec.name] = why
            if _configuration(exc) or getattr(exc.__cause__, "cause", None) in CONFIGURATION_CAUSES:
                run.stopped = run.stopped or (why if spec.name in why else f"{spec.name}: {why}")
            continue
        # a day without data whose removal left its mark pending: the run settles it (see archive); one whose
        # manifest could not be read: the run fails it, saying why
        planned += [dataclasses.replace(p, action="settle", reason="no data in PostgreSQL: a removal of the day left "
                                        "its mark pending, which the run settles") if p.day in pending else
                    dataclasses.replace(p, action=plan.unplanned_action(unread[p.day]["message"]),
                                        reason=unread[p.day]["message"]) if p.day in unread else
                    dataclasses.replace(p, reason=_dropped_by_hand(spec, p.day, gone[p.day], run))
                    if p.action == "no-data" and p.day in gone else p for p in found]
    totals = {action: sum(1 for p in planned if p.action == action)
              for action in ("archive", "overwrite", "skip", "refuse", "not-checked", "no-data", "settle")}
    work = [p for p in planned if p.action in ("archive", "overwrite") and p.estimate]
    est_rows, est_bytes = sum(p.estimate.rows for p in work), sum(p.estimate.bytes for p in work)

    def render() -> None:
        table = _table("table", "day", "action", "est. rows", "est. bytes", "estimate", "key", "reason")
        for p in planned:
            style = {"refuse": "red", "not-checked": "yellow", "skip": "dim", "no-data": "dim"}.get(p.action)
            est = p.estimate
            table.add_row(p.table, p.day.isoformat(), _styled(p.action, style),
                          _num(est and est.rows), _size(est and est.bytes), est.method if est else "", p.key,
                          "see below" if p.action == "refuse" else p.reason)
        run.out.print(table)
        for p in planned:
            if p.action == "refuse":
                run.out.print(_said(_verbatim(p.table), f" {p.day} would be refused: {p.reason}"), soft_wrap=True)
        run.out.print(f"dry run, nothing written: {totals['archive'] + totals['overwrite']} day(s) to archive "
                      f"(~{est_rows:,} rows, ~{_size(est_bytes)} in PostgreSQL), {totals['skip']} identical, "
                      f"{totals['refuse']} refused{' (why: see above)' if totals['refuse'] else ''}, "
                      f"{totals['no-data']} without data"
                      + (f", {totals['not-checked']} not checked (see their reason)" if totals["not-checked"] else ""))
        for name, why in failed_tables.items():
            run.out.print(_said(_verbatim(name), f": not planned: {why}"), soft_wrap=True)

    run.answer({"dry_run": True, "days": [p.as_dict() for p in planned], "totals": totals,
                "estimated_rows": est_rows, "estimated_bytes": est_bytes,
                **({"tables_failed": [{"table": name, "error": why} for name, why in failed_tables.items()]}
                   if failed_tables else {}), **_stopped_by(run.stopped)}, render,
               EXIT_USAGE if run.stopped else EXIT_DIFFERENCES if failed_tables else EXIT_OK)


# ----------------------------------------------------------------------------------------------


def _day_checked(run: Run, table: str, day: dt.date, check: Callable[[], list[str]]) -> list[str]:
    """The problems ``check`` finds with one day; a day it could not check (the store failing its
    download, say) is a problem of that day, and the other days are still checked. A lost database
    connection ends the command (exit 3): the next day would fail the same way."""
    try:
        if run is not None:
            run.between_days()
        return _quoting(check())
    except (ArchiveError, psycopg.Error) as exc:
        if run.lost:
            raise UnreachableError(f"lost the source database while checking {table} {day}: {_told(exc)}") from None
        if not isinstance(exc, ArchiveError):  # a lock_timeout behind a migration, a statement_timeout
            exc = wrap(exc, table, day.isoformat(), doing="proving")
        return [Problem(f"not checked ({'retryable' if exc.retryable else 'not retryable'}): {_told(exc)}",
                        NOT_CHECKED, _for_the_cli(redact(exc.remedy or "", *_passwords())))]
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: said as the day being checked (see _cancelled)
        note_cancelled(exc, table, day.isoformat(), "checking")
        raise


@main.command()
@click.option("--download", is_flag=True, help="also download each object and check its size, MD5 and SHA-256")
@click.option("--deep", is_flag=True, help="also load each archive back into a temporary table and prove it equals "
              "the manifest's and the source's rows (content fingerprint); names the first differing row")
@command
def verify(run: Run, download: bool, deep: bool) -> None:
    """Check each archived day: the stored object against its manifest (size, ETag; --download: MD5 and
    SHA-256 of its bytes), and with --deep its rows against the source. Exits 1 when any day has a problem,
    or when no day is archived while a --day or range names days, or days with rows in PostgreSQL are missing
    (nothing was verified): of the run, or of one table while others verified."""
    results = []
    how = (*(("--download",) if download else ()), *(("--deep",) if deep else ()))  # (what verifying again needs)
    chosen = [(spec, run.days(spec)) for spec in run.tables]
    for spec, days in chosen:
        for day, found in plan.lookup_manifests(run.store, spec, days, identity=run.identity).items():
            if found.problem:
                results.append({"table": spec.name, "day": day.isoformat(), "key": found.key, "ok": False,
                                "problems": [found.problem],
                                "remedy": _verify_remedy(run, spec, day, [found.problem], how)})
                continue
            archived = found.archived
            if archived is None:
                continue
            checked = [archived.object_key]  # the object the verdict is about (a new generation's, checked instead)
            noted: list[str | None] = [None]  # what a passed proof left unproven (a removed day checked by its object)

            def check(spec=spec, day=day, archived=archived, found=found, checked=checked, noted=noted) -> list[str]:
                def stored(archived) -> list[str]:
                    # (with --deep, another period's archive is the proof's to refuse: no verdict, as it says; a
                    # removed day's proof is by its archive alone, so its period is checked here)
                    return verify_archive(run.store, found.key, archived.expected, deep=download,
                                          owner=(spec.name, day.isoformat()),
                                          period=None if deep and not archived.removed else day,
                                          manifest=archived.manifest)  # (read once, by the range's lookup)

                problems = stored(archived)
                if problems:  # the day archived again meanwhile (a new generation)? then that one is checked
                    again = plan.lookup_manifests(run.store, spec, [day], identity=run.identity)[day]
                    if again.problem:
                        # a failed re-read tells not whether it was replaced: the day is not checked (retryable where
                        # reading again may help), never "missing" by the manifest an overwrite retired
                        return [again.problem]
                    now = again.archived
                    if now is not None and now.manifest.get("manifest_sha256") != \
                            archived.manifest.get("manifest_sha256"):
                        archived = now
                        checked[0] = archived.object_key
                        problems = stored(archived)
                if deep and not problems:
                    proven, proved = deep_verify_of(run.conn, run.store, spec, day, manifest=archived.manifest,
                                                    scratch_conn=run.scratch)
                    problems += proven
                    if proved is not None and proved is not archived.manifest:
                        checked[0] = object_key(proved) or checked[0]
                    noted[0] = None if problems else rows_unproven(proved)
                return problems

            problems = _day_checked(run, spec.name, day, check)
            results.append({"table": spec.name, "day": day.isoformat(), "key": checked[0] or found.key,
                            "ok": not problems, "problems": problems,
                            "checked": "deep" if deep else "download" if download else "light",
                            **({"remedy": _verify_remedy(run, spec, day, problems, how)}
                               if problems else {"note": noted[0]} if noted[0] else {})})
    bad = [r for r in results if not r["ok"]]
    unverified = _nothing_verified(run, chosen) if not results else None
    nothing = unverified is not None
    # (one table's archived days must not pass another's rows that no archive holds: the rule is per table)
    failed_tables = {} if not results else _tables_unverified(run, chosen, {r["table"] for r in results})

    def render() -> None:
        table = _table("table", "day", "result", "key")
        for r in results:
            table.add_row(r["table"], r["day"], _styled("ok", "green") if r["ok"] else _styled("FAILED", "red"), r["key"])
        run.out.print(table)
        for r in bad:
            for problem in r["problems"]:
                run.out.print(_said(_verbatim(r["table"]), f" {r['day']}: {problem}"), soft_wrap=True)
            run.out.print(_said(_verbatim(r["table"]), f" {r['day']}: to fix: {r['remedy']}"), soft_wrap=True)
        for r in results:
            if r.get("note"):  # passed, and what was not proven (a removed day's rows, by a fingerprint not computed)
                run.out.print(_said(_verbatim(r["table"]), f" {r['day']}: {r['note']}"), soft_wrap=True)
        what = " against the source" if deep else " (downloaded)" if download else ""
        run.out.print(f"{len(results)} archived day(s) checked{what}, {len(bad)} with problems"
                      + (f", {len(failed_tables)} table(s) not verified" if failed_tables else "")
                      + ("" if results or nothing else ": no day of the selection has rows in PostgreSQL or an "
                         "archive, nothing to verify"))
        for name, why in failed_tables.items():
            run.out.print(_said(_verbatim(name), f": not verified: {why}"), soft_wrap=True)

    # (a script reads why in the answer itself, as for any failed command)
    run.answer({"days": results,
                **({"tables_failed": [{"table": name, "error": why} for name, why in failed_tables.items()]}
                   if failed_tables else {}),
                **({"exit_code": EXIT_DIFFERENCES, "error": unverified, "retryable": False} if nothing else {})},
               render, EXIT_DIFFERENCES if nothing or bad or failed_tables else EXIT_OK, unverified or "")


def _nothing_verified(run: Run, chosen: list[tuple[TableSpec, list[Period]]]) -> str | None:
    """Why a verify that found no day archived is no pass, or None where nothing is due (a new deployment of
    tables without rows yet: no rows, no archive). A --day or range names days to verify: none archived is a
    refusal. Over the whole selection, days with rows in PostgreSQL (``list``'s ``missing``) mean the archive is
    not where it is looked for (a mistyped ARCHIVE_S3_PREFIX or bucket) or was never written (a new deployment
    before its first archive run): a monitoring job that runs verify must not read either as verified. Only then
    is the source asked (a light verify needs only the store); where it cannot be, that is no pass either."""
    counted = _rows_unarchived(run, chosen)
    missing = sum(len(present) for present, _ in counted.values())
    why = next((why for _, why in counted.values() if why), "")
    if not (missing or why or run.first or run.last):
        return None
    listed = _shell_join(run.command("list"))
    if not missing:
        return (f"nothing was verified: no day in the selection is archived (see `{listed}`)"
                + (f"; whether PostgreSQL holds rows of them is not known: {why}" if why else ""))
    holding = ", ".join(name for name, (present, _) in counted.items() if present)
    return (f"nothing was verified: no day in the selection is archived under {_archive_root(run)} ({missing} "
            f"day(s) with rows in PostgreSQL are missing, of {holding}; see `{listed}`); to fix: archive them "
            f"(`{_shell_join(run.command('archive'))}`) if none was archived yet, else point ARCHIVE_S3_BUCKET and "
            "ARCHIVE_S3_PREFIX at the archive")


def _tables_unverified(run: Run, chosen: list[tuple[TableSpec, list[Period]]], verified: set[str]
                       ) -> dict[str, str]:
    """Why each chosen table of which no day was checked is no pass, while other tables' days were: PostgreSQL
    holds rows of it that no archive holds where it is looked for (its first archive never ran, a mistyped
    key_template), or whether it does is not known. The run as a whole found the archive, so the table's own
    settings are what to check; a table without rows in the selection has nothing due (a --day it had no data)."""
    idle = [(spec, days) for spec, days in chosen if spec.name not in verified]
    failed = {}
    for name, (present, why) in _rows_unarchived(run, idle).items():
        listed = _shell_join([*run.command("list"), "--table", name])
        if present:
            shown = ", ".join(day.isoformat() for day in present[:5]) + \
                (f" and {len(present) - 5} more" if len(present) > 5 else "")
            archive = _shell_join([*run.command("archive"), "--table", name])
            failed[name] = (f"none of its days in the selection is archived under {_archive_root(run)}, while "
                            f"PostgreSQL has rows of {shown} (see `{listed}`); to fix: archive them (`{archive}`) if "
                            "none was archived yet, else check the table's key_template")
        elif why:
            failed[name] = (f"none of its days in the selection is archived (see `{listed}`), and whether "
                            f"PostgreSQL holds rows of them is not known: {why}")
    return failed


def _rows_unarchived(run: Run, chosen: list[tuple[TableSpec, list[Period]]]
                     ) -> dict[str, tuple[list[Period], str]]:
    """Per table of ``chosen`` (none of whose days is archived): its days with rows in PostgreSQL (``list``'s
    ``missing``), in order, and why that is not known where the source could not be asked ("" where it could).
    Without a connection at all, every table not yet asked is told the same refusal instead of waiting for it."""
    counted: dict[str, tuple[list[Period], str]] = {}
    for spec, days in chosen:
        try:
            present, unknown = plan.present_days(run.conn, spec, days)
        except (ArchiveError, ConfigError, UnreachableError, psycopg.Error) as exc:
            counted[spec.name] = ([], f"{spec.name}: {_told(exc)}")
            if run._conn is None:
                return counted | {other.name: counted[spec.name] for other, _ in chosen if other.name not in counted}
            continue
        why = next((f"{spec.name} {day}: {said}" for day, said in unknown.items()), "")
        counted[spec.name] = (sorted(present), why)
    return counted


def _archive_root(run: Run) -> str:
    """Where the archive is looked for (the bucket and ARCHIVE_S3_PREFIX), as a message names it."""
    return run.store.uri(f"{run.store.prefix}/" if run.store.prefix else "")


# ----------------------------------------------------------------------------------------------


@main.command()
@click.option("--rows", "show_rows", is_flag=True, help="for days that differ, name the rows that differ")
@command
def compare(run: Run, show_rows: bool) -> None:
    """Source against archive per day: row counts and content fingerprints.

    Exits 1 when a day differs, is not archived, or has an unreadable manifest."""
    failed_tables: dict[str, str] = {}  # a table that could not be read and has nothing archived: its error
    results = [c for spec in run.tables for c in _compared(run, spec, failed_tables)]
    details: dict[tuple[str, str], list[str]] = {}
    if show_rows:
        specs = {spec.name: spec for spec in run.tables}
        for c in results:
            if c.result == "differs":
                def prove(c=c) -> list[str]:  # (the manifest read again inside: a failed read is this day's alone)
                    found = plan.lookup_manifests(run.store, specs[c.table], [c.day], identity=run.identity)[c.day]
                    if found.problem:  # ("not checked (retryable): reading manifest ... failed", or damaged since)
                        return [found.problem]
                    if found.archived is None:
                        return [f"not checked: no archive of the day was found again at {run.store.uri(found.key)} "
                                "(removed or replaced meanwhile): compare again"]
                    return deep_verify(run.conn, run.store, specs[c.table], c.day, manifest=found.archived.manifest,
                                       scratch_conn=run.scratch)

                details[(c.table, c.day.isoformat())] = _day_checked(run, c.table, c.day, prove)
    differing = [c for c in results if c.differs]
    unchecked = [c for c in results if c.result == "not-checked"]  # nothing known to differ: never "ok" either

    def render() -> None:
        table = _table("table", "day", "result", "source rows", "archive rows", "source fingerprint",
                       "archive fingerprint", "note")
        for c in results:
            style = "green" if c.result == "equal" else "red" if c.differs else "dim"
            table.add_row(c.table, c.day.isoformat(), _styled(c.result, style), _num(c.source_rows),
                          _num(c.archive_rows), _short(c.source_fingerprint), _short(c.archive_fingerprint), c.note)
        run.out.print(table)
        for (name, day), lines in details.items():
            run.out.print(_said(_verbatim(name), f" {day}:"))
            for line in lines:
                run.out.print(f"  {line}", markup=False, soft_wrap=True)
        run.out.print(f"{len(results)} day(s) compared, {len(differing)} differ"
                      + (f", {len(unchecked)} not checked" if unchecked else ""))
        for name, why in failed_tables.items():
            run.out.print(_said(_verbatim(name), f": not compared: {why}"), soft_wrap=True)

    payload = [c.as_dict() | ({"differences": details[(c.table, c.day.isoformat())]}
                              if (c.table, c.day.isoformat()) in details else {}) for c in results]
    # a --day or range that holds no day of a table (before start_date): nothing compared, never "ok" (a script
    # guarding a DROP with compare read it as equal), as verify says nothing was verified
    nothing = not results and not failed_tables and bool(run.first or run.last)
    uncompared = "nothing was compared: no day of the selection is a day of the tables (before start_date?)"
    if nothing and (quiet := sorted({d.isoformat() for spec in run.tables for d in run.days(spec)})):
        # days of the tables, without rows in PostgreSQL and without an archive (as archive says: no-data)
        shown = ", ".join(quiet[:5]) + (f" and {len(quiet) - 5} more" if len(quiet) > 5 else "")
        uncompared = (f"nothing was compared: {shown} {'has' if len(quiet) == 1 else 'have'} no rows in PostgreSQL "
                      "and no archive (no data: nothing to compare)")
    code = (EXIT_DIFFERENCES if nothing else EXIT_USAGE if run.stopped else
            EXIT_DIFFERENCES if differing or unchecked or failed_tables else EXIT_OK)
    run.answer({"days": payload,
                **({"tables_failed": [{"table": name, "error": why} for name, why in failed_tables.items()]}
                   if failed_tables else {}), **_stopped_by(run.stopped),
                **({"exit_code": EXIT_DIFFERENCES, "error": uncompared, "retryable": False} if nothing else {})},
               render, code, uncompared if nothing else "")


def _unreadable_table(run: Run, spec: TableSpec, days: list[Period], exc: ArchiveError,
                      failed_tables: dict[str, str]) -> dict[Period, tuple[plan.ManifestLookup, str]]:
    """A table whose days cannot even be looked for in the source (a role without SELECT on a column-mode
    table): its archived days, each with why, to be listed ``unreadable``; one with none archived is named in
    ``failed_tables`` instead (never passed over as if it had nothing to say). The command's only table: its
    error is the command's (exit 2 where a setting or grant fixes it), as before any day is looked at."""
    if run.conn.closed or run.lost or len(run.tables) == 1:
        raise exc
    why = _told(exc)
    if _configuration(exc) or getattr(exc.__cause__, "cause", None) in CONFIGURATION_CAUSES:
        # the others are still reported; the command then exits 2, naming the table
        run.stopped = run.stopped or (why if spec.name in why else f"{spec.name}: {why}")
    found = {day: (lookup, why if lookup.problem is None else f"{lookup.problem}; and {why}")
             for day, lookup in plan.lookup_manifests(run.store, spec, days, identity=run.identity).items()
             if lookup.archived is not None or lookup.problem is not None}  # (a damaged manifest: listed too)
    if not found:
        failed_tables[spec.name] = why
    return found


def _compared(run: Run, spec: TableSpec, failed_tables: dict[str, str]) -> list[plan.Comparison]:
    """One table's days compared, or its archived days ``unreadable`` where it cannot be read (see
    :func:`_unreadable_table`); the other tables are still compared."""
    days = run.days(spec)
    try:
        return plan.compare_days(run.conn, spec, run.store, days)
    except ArchiveError as exc:
        unread = _unreadable_table(run, spec, days, exc, failed_tables)
    return [plan.Comparison(spec.name, day, "unreadable", None, lookup.archived.rows if lookup.archived else None,
                            None, lookup.archived.fingerprint if lookup.archived else None, _archived_key(lookup),
                            why)
            for day, (lookup, why) in unread.items()]


def _short(fp: str | None) -> str:
    """``row-hash-sum-v2:20000:-1234…`` shortened to its count and the hash sum's last digits."""
    if not fp:
        return ""
    parts = fp.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdecimal():  # another algorithm's (a newer version's, or tampered)
        return fp if len(fp) <= 20 else f"{fp[:19]}…"
    return f"{int(parts[1]):,}:…{parts[2][-8:]}"


# ----------------------------------------------------------------------------------------------


@main.command()
@click.option("--into", type=click.Choice(["new", "existing", "original"]), default="new", show_default=True,
              help="new: create --target from the manifest's table definition; existing: load into --target as it "
              "is; original: back into the archived table, re-creating a dropped partition")
@click.option("--target", metavar="SCHEMA.TABLE", help="the table to restore into (new and existing only)")
@click.option("--on-conflict", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="a restored row whose key already exists: abort the day, or leave the existing row")
@command
def restore(run: Run, into: str, target: str | None, on_conflict: str) -> None:
    """Load archived days back into PostgreSQL, each day in one transaction that is rolled back unless
    the restored rows have the manifest's content fingerprint (archive_pipeline.core.restore).

    Needs --day or --from/--to, and one --table when there is --target. Days without an archive are
    listed. Exits 1 when a day fails (the days before it stay restored) or has no archive."""
    from archive_pipeline.core.restore import CommitUnansweredError, RestoreResult, encoding_problem, \
        iter_restore_days, name_problem, parse_relation

    target = _utf8(target) if target else target

    if run.first is None and run.last is None:
        raise click.UsageError("restore needs --day or --from/--to (it never restores every day by default)")
    if into != "original" and not target:
        raise click.UsageError(f"--into {into} needs --target schema.table")
    if into == "original" and target:  # it created the --target as a new table, and the original stayed as it was
        raise click.UsageError("--into original restores into the archived table itself: leave out --target, or "
                               "restore into another table with --into new or existing")
    if target and name_problem(target):
        raise click.UsageError(f"--target: {name_problem(target)}; name the table as schema.table, as the catalog "
                               "spells it (e.g. public.events_restored), or a part in SQL's double quotes "
                               '("old.data".t)')
    if target and len(run.tables) > 1:
        raise click.UsageError("--target takes one table: pick it with --table")
    if target:
        _keep_also(target, parse_relation(target).schema or "", parse_relation(target).name)
    if target and encoding_problem(run.primary, parse_relation(target)):  # in the database's encoding
        raise click.UsageError(f"--target: {encoding_problem(run.primary, parse_relation(target))}")
    results, missing, failure = [], [], None
    chosen = run.chosen_days("restore")
    try:
        for spec, days in chosen:
            for done in iter_restore_days(run.fresh_primary, run.store, spec, days[0], days[-1], into=into,
                                          target=target, on_conflict=on_conflict) if days else ():
                if isinstance(done, RestoreResult):
                    results.append(done)
                else:
                    missing.append((spec.name, done))
    except (ArchiveError, psycopg.Error) as exc:  # the days before it stay restored: say which
        failure = exc
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the days before it stay restored too
        on = getattr(exc, "cancelled_at", None)
        if not results and not (on is not None and on[0] == "finishing"):
            raise
        _restore_cancelled(run, exc, results, missing, chosen, into, target, on_conflict)

    def render() -> None:
        table = _table("table", "day", "target", "rows", "inserted", "seconds", "check")
        for r in results:
            table.add_row(r.table, r.day, r.target, _num(r.rows), _num(r.inserted), f"{r.seconds:.2f}", r.check)
        if results:
            run.out.print(table)
        created = sorted({name for r in results for name in r.created})
        if created:
            run.out.print(_said("created: ", _names(created)))
        if missing:
            run.out.print(_said("no archive for: ", Text(", ").join(_said(_verbatim(name), f" {day}")
                                                                    for name, day in missing)))

    payload = {"days": [dataclasses.asdict(r) for r in results],
               "missing": [{"table": name, "day": day.isoformat()} for name, day in missing]}
    if failure is not None:
        lost = run.lost or isinstance(failure, psycopg.OperationalError)
        # a cause that refuses every day alike (a setting, a grant, the target): a usage or configuration error
        # (exit 2), and its day failed only for coming first, so no remedy leaves it out
        configuration = _refuses_every_day(failure)
        message = _told(failure)
        failed_table, failed_day = getattr(failure, "table", None), getattr(failure, "day", None)
        failure_retryable = getattr(failure, "retryable", None)
        for_good = failure_retryable is False
        # a day whose COMMIT got no answer may be committed, whatever day of the range it was: the same range
        # again could load it twice, and the lost connection was that day's (the command for the rest connects again)
        unsure = isinstance(failure, CommitUnansweredError)
        if failed_table and failed_day and (results or (for_good and not lost) or unsure):
            # after committed days, a day that may work on another try is tried again by the rest of the range,
            # never by the same command, which would load the committed days a second time (a table of the
            # user's without a day column cannot tell them apart)
            if not for_good:
                message = message.replace(_AGAIN, f"{_AGAIN} for the rest of the range only, as after 'then:' (over "
                                                  "the whole range it would load the days listed above a second "
                                                  "time into a target that cannot tell them apart: one of yours "
                                                  "without a day column)")
            message += _restore_then(run, chosen, results, failed_table, failed_day, into, target, on_conflict,
                                     alike=configuration, retry=not for_good)
        # (a day whose COMMIT got no answer, into a target that cannot tell it: not retryable, even if lost)
        payload.update(error=message, retryable=False if for_good else True if lost else failure_retryable,
                       exit_code=EXIT_UNREACHABLE if lost else EXIT_USAGE if configuration else EXIT_DIFFERENCES)
    if failure is not None:
        kept = "; the days listed above stay restored" if results else ""
        run.answer(payload, render, payload["exit_code"], f"error: {payload['error']}{kept}")
    run.answer(payload, render, EXIT_DIFFERENCES if missing else EXIT_OK,
               f"some requested days have no archive (see `{_shell_join(run.command('list'))}`)" if missing else "")


def _refuses_every_day(exc: BaseException) -> bool:
    """Whether ``exc`` refuses every day of a range alike, as the core told it where it raised it (``every_day``: a
    restore's target as the options named it, not there, already there for --into new, not a table, its row-level
    security, a statement trigger of it that raises; not a column only the day's archive has), else by its cause:
    a setting or a grant (:func:`_configuration`: a read-only role, no CREATE on the schema, a missing table). The command exits 2 for it, as for a bad setting, and the day it
    names failed only because it came first: what runs once it is fixed must restore that day too."""
    told = getattr(exc, "every_day", None)  # where it was raised, what refused was known (see ArchiveError)
    if told is not None:
        return told and getattr(exc, "retryable", None) is not True
    return _configuration(exc)


def _restore_then(run: Run, chosen: list, results: list, table: str, day: str, into: str, target: str | None,
                  on_conflict: str, alike: bool, retry: bool = False) -> str:
    """What follows a range restore's error for a day that failed for good, after committed days, or whose COMMIT
    got no answer (its own remedy says how to check it): the command that restores the rest (the same command
    again would load the committed days, or that day, a second time, or stop at the same day). A day of its own
    (damaged, its rows refused) is left out of it; a cause that refuses every day ``alike`` is fixed first, and the
    rest then starts at that day, or, nothing restored, the same command restores the whole range; a day that may
    work on another try (``retry``: the store throttling) starts the rest too."""
    if alike and not results:
        return (f"; then, once that is fixed, run the command again for the whole range (no day of it was restored; "
                f"{day} failed only for coming first)")
    created = next((r.target for r in results if r.table == table), None)
    again = alike or retry
    return "; then: " + _for_the_cli(_the_rest(run, chosen, table, day, into, target or created, on_conflict,
                                               skipped="" if again else day, created=created is not None,
                                               inclusive=again))


def _the_rest(run: Run, chosen: list, table: str, after: str, into: str, target: str | None, on_conflict: str,
              skipped: str = "", created: bool = True, inclusive: bool = False) -> str:
    """What restores the rest of a range stopped after ``after`` (a day of ``table``; ``skipped``: the day that failed,
    left out; ``inclusive``: ``after`` itself is restored with them): the command for the table's later days (into the target the run ``created`` or was given: existing,
    not new, which would refuse it), then the tables not reached. Running the same command again would load the
    committed days a second time, or stop at the same failed day."""
    names = [s.name for s, _ in chosen]
    days = _days_of(chosen, table)
    # in time, not by key text: a fall-back night's second 01:00 ("...-01:00+0000", Antarctica/Troll's two repeated
    # hours) sorts before the 02:00 that came first
    then = next((getattr(d, "utc_start", None) for d in days if d.isoformat() == after), None)
    rest = [d for d in days if (d.utc_start > then if then is not None and hasattr(d, "utc_start")
                                else d.isoformat() > after) or (inclusive and d.isoformat() == after)]
    again = [*run.command("restore"), "--table", table]
    if rest:
        again += ["--from", rest[0].isoformat(), "--to", rest[-1].isoformat()]
    again += ["--into", "existing" if into == "new" and created else into]  # (new: if nothing created it yet)
    if into != "original" and target:
        again += ["--target", target]
    if on_conflict != "fail":
        again += ["--on-conflict", on_conflict]
    later = {name: _days_of(chosen, name) for name in (names[names.index(table) + 1:] if table in names else [])}
    others = [name for name, listed in later.items() if listed]
    left = (f"run {_shell_join(again)} to restore the rest of {table} ({', '.join(d.isoformat() for d in rest[:5])}"
            f"{', ...' if len(rest) > 5 else ''}{', without ' + skipped if skipped else ''})" if rest
            else f"{table} is done" + (f" but for {skipped}" if skipped else ""))
    if not others:
        return left
    # the tables not reached, each its own command (``--table`` takes one table, and a range): nothing of them was
    # restored, so into the targets as the run was asked (``new`` creates them)
    commands = []
    for name in others:
        listed = later[name]
        command = [*run.command("restore"), "--table", name, "--from", listed[0].isoformat(), "--to",
                   listed[-1].isoformat(), "--into", into]
        if on_conflict != "fail":
            command += ["--on-conflict", on_conflict]
        commands.append(_shell_join(command))
    return left + f", then the other tables ({', '.join(others)}): run {'; '.join(commands)}"


def _days_of(chosen: list, table: str) -> list:
    """The periods of ``table`` a range command chose, in time (a fall-back night's repeated hours by their UTC
    start, not by their keys' text)."""
    days = [d for s, listed in chosen if s.name == table for d in listed]
    return sorted(days, key=lambda d: d.utc_start) if all(hasattr(d, "utc_start") for d in days) else days


def _restore_cancelled(run: Run, exc: KeyboardInterrupt, results: list, missing: list, chosen: list, into: str,
                       target: str | None, on_conflict: str) -> None:
    """A restore of several days stopped by Ctrl-C, SIGTERM or SIGHUP after some were committed: those are listed
    (they stay restored), and the remedy is the command that restores the rest, not the same one again, which
    would refuse the target it created (``--into new``) or load the committed days a second time."""
    code, how = _cancel_said(exc)
    on = getattr(exc, "cancelled_at", None)  # (doing, table, day) the core noted: the table it was on
    # "finishing": cancelled after that day's commit, before its result came back: it is restored, and the rest
    # starts after it (from it, a target without a day column would get its rows twice)
    finishing = on is not None and on[0] == "finishing"
    last = results[-1] if results else None  # (none: cancelled while finishing the range's first day)
    if on is not None and (last is None or on[1] != last.table):  # in a later table, before its first result
        table, left = on[1], _the_rest(run, chosen, on[1], on[2] if finishing else "", into, target, on_conflict,
                                       created=finishing)
    else:
        table, left = last.table, _the_rest(run, chosen, last.table, on[2] if finishing else last.day, into,
                                            target or last.target, on_conflict)
    being = CANCELLED_LEAVES["finishing"] if finishing else "the day being restored was rolled back"
    committed = len(results) + (1 if finishing else 0)
    message = (f"restoring {table} was cancelled {how} after {committed} day(s) were committed (listed, they "
               f"stay restored); {being}; to fix: {left}")
    if run.as_json:
        committed_days = [dataclasses.asdict(r) for r in results]
        if finishing:  # committed, its result never came back: listed all the same (a script resumes after it)
            committed_days.append({"table": on[1], "day": on[2], "target": getattr(exc, "restored_into", target),
                                   "check": "committed; cancelled before its check was reported"})
        payload = {"exit_code": code, "error": message, "retryable": True, "days": committed_days,
                   "missing": [{"table": name, "day": day.isoformat()} for name, day in missing]}
        click.echo(_json_text(_worded(_outcome(code, payload))))
    else:
        for r in results:
            run.out.print(_said(_verbatim(r.table), f" {r.day} -> ", _verbatim(r.target), f": {r.rows:,} rows, "
                                f"{r.check}"), soft_wrap=True)
        if finishing:
            run.out.print(_said(_verbatim(on[1]), f" {on[2]}: committed; cancelled before its check was reported"),
                          soft_wrap=True)
    click.echo(f"error: {_printable(message)}", err=True)
    sys.exit(code)


_RECENT_ABSENT = 62  # the days gone from the source whose manifests archive reads for a pending removal mark


def _overwrites_dropped(days: list[Period], overwrite: bool) -> bool:
    """Whether archive replaces the archive of a day whose rows were deleted or dropped by hand since (see
    :func:`_absent_days`) with an empty generation, as the archiver does with overwrite: only for a day named alone
    (``--day D --overwrite``, the remedy verify --deep gives for it). A range's --overwrite (a change of format
    re-archived) never makes an empty archive the current one of days a partition manager (pg_partman's retention)
    dropped, and archive without --overwrite leaves such days as they are, exit 0: dropping archived partitions by
    hand is how many users let the source go, and compare and verify --deep report such days. ``overwrite`` is the
    command's --overwrite alone, for the run and its dry run alike: a table's ``overwrite: true`` archives its changed
    days again, not its hand-dropped ones as empty (the dry run asked with it and planned what the run did not do)."""
    return overwrite and len(days) == 1


def _dropped_by_hand(spec: TableSpec, day: Period, rows: int, run: Run) -> str:
    """What archive says of a day with no rows whose archive holds ``rows`` and no removal mark. Its restore command
    names ``--into original``: the table holds none of the day, so the rows go back into it (restore's default,
    ``--into new``, needs a ``--target`` and was refused as printed)."""
    return (f"no data for this day in PostgreSQL, but its archive holds {rows:,} rows and no removal was recorded: "
            "its rows were deleted or its partition dropped outside archive_pipeline; the archive is kept as it is "
            f"(`{run.suggest('restore', spec.name, day, '--into', 'original')}` puts the rows back; "
            f"`{run.suggest('archive', spec.name, day, '--overwrite')}` "
            "archives the day as empty, the archive of its rows kept as an older generation)")


def _absent_days(run: Run, spec: TableSpec, absent: list[Period], emptied: bool = False
                 ) -> tuple[dict[Period, str], dict[Period, int], dict[Period, str]]:
    """Of the days the source has no rows of, the recent ones whose manifest holds a pending removal mark (a prune
    killed after its COMMIT: archive settles the mark), with the key it was found at; those whose archive holds
    rows and no removal mark, with its rows: their rows were deleted or dropped by hand since (see
    :func:`_dropped_by_hand`); and those whose manifest could not be read, with why (see :func:`_manifest_unread`).
    Only the recent ones: each archived day costs a GET, and a table's years of removed days were settled long ago.
    A day removed by prune (its mark done) stays "no data". A gone day's archive is checked as verify's light
    check does (a HEAD; where it differs, by the download: see :func:`_archive_lost`): one proven missing or damaged
    holds the rows nowhere, and is unread with why, never said to be kept; unless ``emptied``
    (:func:`_overwrites_dropped`): the day is then archived as empty, as asked, whatever its old archive holds."""
    gone: dict[Period, plan.Archived] = {}
    pending, unread = _pending_removals(run.store, run.identity, spec, absent[-_RECENT_ABSENT:], archived=gone)
    lost = {day: "" if emptied else _archive_lost(run, spec, day, archived) for day, archived in gone.items()}
    unread |= {day: why for day, why in lost.items() if why}
    return pending, {day: archived.rows for day, archived in gone.items() if not lost[day]}, unread


def _archive_lost(run: Run, spec: TableSpec, day: Period, archived: plan.Archived) -> str:
    """Why the archive of a day gone from the source whose manifest records rows does not hold them (its object
    missing, or damaged as its download proves where its HEAD differs: see verify.archive_damage), or "" where it
    does. The source no longer holds them either: the rows are in neither place, and only the object's backup (the
    bucket's versions, a replica) brings them back; called kept, the advised restore could not work. A check that
    could not be made is "not checked", as verify says it."""
    try:
        problems = archive_damage(run.store, archived.key, archived.manifest, expected=archived.expected,
                                  owner=(spec.name, day.isoformat()), period=day)
    except ArchiveError as exc:
        return f"not checked ({'retryable' if exc.retryable else 'not retryable'}): {_told(exc)}"
    unchecked = next((p for p in problems if p.startswith("not checked")), None)
    if unchecked or not problems:
        return unchecked or ""
    uri = run.store.uri(archived.object_key or archived.key)
    return (f"no data for this day in PostgreSQL, and its archive, whose manifest records {archived.rows:,} rows, "
            f"does not hold them: {'; '.join(problems)}; the rows are in neither place now (deleted or dropped from "
            f"the source since, outside archive_pipeline); to fix: restore {uri} from the bucket's versions or a "
            f"replica, then `{run.suggest('verify', spec.name, day)}`; or, to let the rows go, "
            f"`{run.suggest('archive', spec.name, day, '--overwrite')}` records the day as empty")


def _manifest_unread(spec: TableSpec, day: Period, why: str) -> dict[str, Any]:
    """A day gone from the source whose manifest could not be read (``why``: from :func:`_pending_removals`), as
    archive and prune say it: failed, never passed over as "no data" or nothing due, for the manifest may hold a
    pending removal mark and, the source holding nothing of the day, is the only record of its archive. The remedy
    follows the cause: a read that failed is retried; a newer version's manifest needs that version; a damaged one
    is put back from a backup of the bucket (archiving the day again has nothing to archive). A ``why`` with its own
    remedy (a lost object's, see :func:`_archive_lost`) is said as it is."""
    retryable = why.startswith("not checked (retryable)")
    newer = problem_kind(why) == NEWER  # not damaged: this version cannot read it
    damaged = problem_kind(why) == UNREADABLE  # (of its kind, never words of its key: see verify.problem_kind)
    remedy = f"; to fix: {NewerManifestError.remedy}" if newer else "" if retryable or not damaged else (
        f"; the source no longer holds {day}: if it was removed, its archive is the day's only copy, and its "
        "manifest must be put back from a backup of the bucket (its versions, a replica); archiving the day "
        "again has nothing to archive")
    return {"table": spec.name, "day": day.isoformat(), "status": "failed",
            "message": _for_the_cli(redact(why, *_passwords())) + remedy, "retryable": retryable}


def _pending_removals(store: S3Store, identity: Whose, spec: TableSpec, days: list[Period],
                      done: dict[Period, dict] | None = None,
                      archived: dict[Period, plan.Archived] | None = None
                      ) -> tuple[dict[Period, str], dict[Period, str]]:
    """Which of ``days`` have a manifest whose removal mark is still pending, with the key it was found at (under a
    former format's key too; one listing, then a GET per archived day), and the days whose manifest could not be
    read, with why: each may hold such a mark. ``done`` (given): filled with what prune says of the days whose
    removal is done (:func:`_removal_said`), for a prune that names them; ``archived`` (given): filled with the days
    whose archive holds rows and no removal mark, with what its manifest says (see :func:`_absent_days`)."""
    from archive_pipeline.core.manifest import removal_state

    pending: dict[Period, str] = {}
    unread: dict[Period, str] = {}
    for start in range(0, len(days), 31):  # a month at a time: a table's years of removed days' manifests are
        chunk = days[start:start + 31]     # not all held at once, only which marks are pending
        try:
            found = plan.lookup_manifests(store, spec, chunk, identity=identity)
        except ArchiveError as exc:  # the listing failed: each of those days unread, the days in the source still run
            why = f"not checked ({'retryable' if exc.retryable else 'not retryable'}): {_told(exc)}"
            # and the months after it too, unlisted: a store that throttled or refused one listing after its retries
            # would be asked again for every month of years of removed days (a minute of backoff, for nothing)
            unread.update({day: why for day in days[start:]})
            break
        pending |= {day: lookup.archived.key for day, lookup in found.items()
                    if lookup.archived is not None and removal_state(lookup.archived.manifest) == "pending"}
        if done is not None:  # (what prune lists of each, not the manifests: years of removed days are many)
            done |= {day: _removal_said(lookup.archived.manifest) for day, lookup in found.items()
                     if lookup.archived is not None and removal_state(lookup.archived.manifest) == "done"}
        if archived is not None:
            archived |= {day: lookup.archived for day, lookup in found.items() if lookup.archived is not None
                         and lookup.archived.rows and removal_state(lookup.archived.manifest) is None}
        unread.update({day: lookup.problem for day, lookup in found.items() if lookup.problem})
    return pending, unread


def _not_due(run: Run, spec: TableSpec, days: list[Period], dry_run: bool) -> list[dict[str, Any]]:
    """Days asked for by name within the retention window: not due, or removed already (before keep_days was
    raised: their removal is not one to come), a removal whose mark was left pending settled as a due day's is."""
    from archive_pipeline.core.lifecycle import pending_removal_committed
    from archive_pipeline.core.manifest import removal_state

    try:
        found = plan.lookup_manifests(run.store, spec, days, identity=run.identity) if days else {}
    except ArchiveError:  # (not known: said as not due, as before it was asked)
        found = {}
    results = []
    for day in days:
        lookup = found.get(day)
        manifest = lookup.archived.manifest if lookup is not None and lookup.archived is not None else {}
        if removal_state(manifest) == "pending" and pending_removal_committed(run.primary, spec, day, manifest):
            results.append(_settle_day(run, spec, day, lookup.archived.key) if not dry_run else {
                "table": spec.name, "day": day.isoformat(), "status": "already removed",
                "message": "removed from the source before; its mark was left pending, which prune settles"})
            continue
        if removal_state(manifest) == "done":
            mark = manifest["removed"]
            results.append({"table": spec.name, "day": day.isoformat(), "status": "already removed",
                            "message": f"removed from the source before ({mark.get('action')} of "
                                       f"{mark.get('relation') or '?'} at {mark.get('at') or '?'}); within the "
                                       f"retention window now (keep_days {spec.retention.keep_days})"})
            continue
        results.append({"table": spec.name, "day": day.isoformat(), "status": "not due",
                        "message": f"within the retention window (keep_days {spec.retention.keep_days}): nothing "
                                   "removed; due once that many days have passed after it"})
    return results


REMOVED = ("removed", "removal completed")  # prune's statuses of a day taken out of the source by this run


def _prune_table(run: Run, spec: TableSpec, due: list[Period], dry_run: bool, results: list[dict[str, Any]]) -> None:
    """prune of one table's ``due`` days, each day's outcome appended to ``results`` as it is known."""
    from archive_pipeline.core.lifecycle import RemovalRefused, remove_day

    run.between_days()  # (a session the server ended while the last table's days were pruned: replaced)
    present, unknown = plan.present_days(run.conn, spec, due, catalog=True)
    # A day no longer in the source whose manifest is still "pending" (a prune killed between the removing
    # COMMIT and its "done" mark) is settled too: nothing else would ever complete its mark.
    done: dict[Period, dict] = {}  # (asked for only where the run names its days: a whole history is not listed)
    pending, unread = _pending_removals(run.store, run.identity, spec, [d for d in due if d not in present and d not in unknown],
                                        done=done if run.first or run.last else None)
    for day in due:
        if day in unknown:
            results.append(_unprobed(spec, day, unknown[day]))
            continue
        if day in unread:  # its manifest may hold a pending mark: said, not passed over
            results.append(_manifest_unread(spec, day, unread[day]))
            continue
        if day not in present and day not in pending:
            if day in done:  # named (a retry, a second look): said, not passed over
                results.append({"table": spec.name, "day": day.isoformat(), "status": "already removed", **done[day]})
            continue
        run.between_days()
        try:
            # (reads: ARCHIVE_PG_DSN's cluster, which a primary of another one, a staging copy, is refused for)
            removal = remove_day(run.primary, spec, day, run.store, dry_run=dry_run, removed_by="archive-pipeline",
                                 reads=run.conn)
        except RemovalRefused as exc:
            results.append({"table": spec.name, "day": day.isoformat(), "status": "refused", "message": _told(exc)})
            continue
        except ArchiveError as exc:  # e.g. removed but the "done" mark not written: the next days still run
            results.append({"table": spec.name, "day": day.isoformat(), "status": "failed",
                            "message": _told(exc), "retryable": exc.retryable})
            if run.lost:  # the next days would fail the same way, and not for their own reasons
                doing = "checking" if dry_run else "removing"  # (a dry run removes nothing)
                raise _DatabaseLost(f"lost the database while {doing} {spec.name} {day}: {_told(exc)}") from None
            continue
        status = ("no data" if removal.nothing else "removal completed" if removal.completed
                  else "already removed" if removal.already_removed else "would remove" if dry_run else "removed")
        results.append({"table": spec.name, "day": day.isoformat(), "status": status,
                        "action": removal.action, "relation": removal.relation, "rows": removal.rows,
                        "archive": removal.archive})


def _removal_said(manifest: dict) -> dict[str, Any]:
    """What prune lists of a day removed before, from its manifest's mark, as it listed the day then."""
    mark = manifest["removed"]
    return {"action": mark.get("action"), "relation": mark.get("relation") or "",
            "rows": mark.get("rows", manifest.get("rows")), "archive": (manifest.get("object") or {}).get("uri", ""),
            "message": f"removed from the source before ({mark.get('action')} at {mark.get('at') or '?'})"}


class _DatabaseLost(Exception):
    """prune's database connection was lost: the days after the one it was on are not tried (exit 3)."""


def _prune_again(run: Run, dry_run: bool) -> str:
    """prune's remedy for a run that stopped (its database lost, cancelled): the command that was run, again, with
    its tables and range, and --dry-run where it was one (the bare "prune" would remove every due day, a preview's
    too). Days removed already are not removed twice: the run finds them gone from the source."""
    return f"run {run.again('prune', *(['--dry-run'] if dry_run else []))} again"


def _prune_cancelled(run: Run, exc: KeyboardInterrupt, results: list[dict[str, Any]], dry_run: bool) -> None:
    """A prune stopped by Ctrl-C, SIGTERM or SIGHUP after it removed days: those are listed (they are gone from
    the source, their archives proven), then the day it was on, left as it was."""
    code, how = _cancel_said(exc)
    removed = [r for r in results if r["status"] in REMOVED]
    on = getattr(exc, "cancelled_at", None)  # (doing, table, day): what the day it was on is left as
    if on is not None:
        results = [*results, {"table": on[1], "day": on[2], "status": "cancelled", "message": CANCELLED_LEAVES[on[0]]}]
        left = f"it was {on[0]} {on[1]} {on[2]}: {CANCELLED_LEAVES[on[0]]}"
    else:
        left = "the day it was on was left as it was"
    message = (f"pruning was cancelled {how} after {len(removed)} day(s) were "
               f"removed from the source (listed); {left}; to fix: {_prune_again(run, dry_run)}")
    if run.as_json:
        click.echo(_json_text(_worded(_outcome(code, {"exit_code": code, "error": message, "retryable": True,
                                                      "days": results}))))
    else:
        for r in removed:
            run.out.print(_said(_verbatim(r["table"]), f" {r['day']}: {r['status']} (", _verbatim(r.get("relation", "")),
                                f", {_num(r.get('rows'))} rows; archive ", _verbatim(r.get("archive", "")), ")"),
                          soft_wrap=True)
    click.echo(f"error: {_printable(message)}", err=True)
    sys.exit(code)


@main.command()
@click.option("--dry-run", is_flag=True, help="prove each due day and list what would be removed; remove nothing")
@command
def prune(run: Run, dry_run: bool) -> None:
    """Remove days older than each table's retention window from PostgreSQL, each only after its archive
    passes the deep verification and a fingerprint re-check in the removing transaction
    (archive_pipeline.core.lifecycle). Tables without a retention setting are left alone.

    Exits 1 when a due day is refused (not archived, not proven, or changed)."""
    from archive_pipeline.core.lifecycle import due_days

    now = dt.datetime.now(dt.UTC)  # each table's today is its own zone's
    results: list[dict[str, Any]] = []
    stopped = ""  # why a table's configuration failed it after other days were done (exit 2, as alone)
    skipped = [spec.name for spec in run.tables if spec.retention is None]
    # every table's selection first: one a table cannot read (a usage error) must stop the command before it
    # removes anything from the tables before it
    selected = {spec.name: run.days(spec) for spec in run.tables if spec.retention is not None}
    try:
        for spec in run.tables:
            if spec.retention is not None:
                due = sorted(set(due_days(spec, now)) & set(selected[spec.name]))
                if run.first or run.last:  # days asked for by name that are not due yet: said, not passed over
                    results += _not_due(run, spec, [day for day in selected[spec.name] if day not in set(due)],
                                        dry_run)
                try:
                    with _losing_the_database(run, results, f"looking for the due days of {spec.name}"):
                        _prune_table(run, spec, due, dry_run, results)
                except ArchiveError as exc:  # the table cannot be read at all (a grant, a missing table)
                    if len(selected) == 1 or run.lost:
                        raise  # the command's only table: its own error (exit 2 for configuration)
                    results += _table_failed(spec, due, exc)  # the days removed before are still reported
                    if _configuration(exc) and not stopped and results:
                        stopped = results[-1]["message"]
    except KeyboardInterrupt as exc:
        if not any(r["status"] in REMOVED for r in results):
            raise
        _prune_cancelled(run, exc, results, dry_run)
    except _DatabaseLost as exc:
        lost = str(exc)
    else:
        lost = ""
    refused = [r for r in results if r["status"] in ("refused", "failed")]

    def render() -> None:
        table = _table("table", "day", "status", "action", "relation", "rows", "archive")
        for r in results:
            style = {"refused": "red", "failed": "red", "would remove": "yellow", "not due": "dim"}.get(r["status"])
            table.add_row(r["table"], r["day"], _styled(r["status"], style),
                          r.get("action", ""), r.get("relation", ""), _num(r.get("rows")),
                          r.get("archive", "") or r.get("message", ""))
        run.out.print(table)
        for r in refused:
            run.out.print(_said(_verbatim(r["table"]), f" {r['day']}: {r['message']}"), soft_wrap=True)
        if skipped:
            run.out.print(_said("no retention setting, nothing pruned: ", _names(skipped)))
        if dry_run:
            run.out.print("dry run: nothing was removed")

    ended = {"exit_code": EXIT_UNREACHABLE, "error": f"{lost}; the days after it were not tried: "
             f"{_prune_again(run, dry_run)}", "retryable": True} if lost else _stopped_by(stopped)
    code = EXIT_UNREACHABLE if lost else EXIT_USAGE if stopped else EXIT_DIFFERENCES if refused else EXIT_OK
    run.answer({"dry_run": dry_run, "days": results, "no_retention": skipped, **ended}, render, code,
               f"error: {ended['error']}" if lost else "")


if __name__ == "__main__":
    main()
