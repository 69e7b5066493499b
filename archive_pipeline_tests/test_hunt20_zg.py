"""Hunt 20 (zg): the command line as a user drives it, and hostile configuration as an attack surface.

What held up (probed through the command line, not kept as tests): dates at the calendar's ends (0001-01-01, 0001-01,
9999-12, 9999-12-31, an hour 24:00, an offset +9999, 29 February of a non-leap year) in daily, hourly and monthly
tables of Pacific/Kiritimati are refused as usage errors or clipped to start_date, never a traceback; a --to month
after a --from day selects through the month's end, as the help says; --json answers of usage errors are JSON alone on
stdout; schema, table, day-column and column names holding ``%s``, ``%(x)s``, ``%`` and spaces go through archive
(also --dry-run, parallel_streams 2, hourly CSV, Parquet), list --check-source, verify --deep, compare --rows, prune
--dry-run and prune, and restore into the original and into a new ``%s`` target with no placeholder error (psycopg
reads ``%s`` inside a quoted identifier as a placeholder: every statement that binds a value composes names safely);
time zones that are files of the zone database but no zone (zone.tab, tzdata.zi, posixrules, localtime, right/UTC,
America/../UTC) are refused at load; key templates with a format spec, an index or an attribute are refused."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# YAML's "billion laughs": nine levels of ten aliases each, 10**9 strings in a file of under a kilobyte
_LAUGHS = "\n".join(['  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] +
                    [f"  l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)])


def _limited() -> None:  # (the child may not take the machine's memory: 2 GB of address space)
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("setting", ["name", "start_date"])
def test_a_config_file_of_a_kilobyte_whose_aliases_expand_a_billion_fold_is_refused_not_loaded_for_ever(
        tmp_path, setting):
    """Scenario: a table list of under a kilobyte (a file a user was sent, a generated file gone wrong, or one an
    attacker can write to) whose anchors nest aliases ten to a level, nine levels deep (YAML's "billion laughs"),
    and uses the deepest one as a table's ``name`` (or ``start_date``); ``archive-pipeline list --config`` it.

    Now: the load never ends. PyYAML keeps the aliases as shared references (cheap), but the loader's own checks walk
    the expanded value: for ``name``, config._misleading_settings -> _not_text recurses into every item of the
    sequence and every alias again (its ``seen`` set guards only _misleading_settings, not _not_text), 10**9 nodes;
    for ``start_date``, config._describe formats pydantic's error with ``(got {item.get('input')!r} ...)``, the repr
    of 10**9 strings (gigabytes: a MemoryError under a 2 GB limit, reported as "unexpected error ... a bug in
    archive_pipeline", or the OOM killer without one). The code location's load (dagster definitions validate, the
    daemon, the webserver) hangs the same way, in load_config.

    Should: refuse such a file at once as a configuration error (exit 2) naming the file: count the nodes an alias
    expands to while composing (or refuse aliases outside the settings where they make sense, or above a budget such
    as 10,000 expanded nodes), walk aliases once in _not_text, and quote a wrong value through a bounded repr
    (reprlib, or the first 100 characters)."""
    config = tmp_path / "tables.yaml"
    table = {"name": "  - name: *l8\n    day_column: at\n",
             "start_date": "  - name: public.events\n    day_column: at\n    start_date: *l8\n"}[setting]
    config.write_text(f"laughs:\n{_LAUGHS}\ntables:\n{table}")
    assert len(config.read_bytes()) < 1024
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), ARCHIVE_PG_DSN="postgresql://archiver@127.0.0.1:1/none", ARCHIVE_S3_BUCKET="b")
    try:
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--config", str(config)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20, preexec_fn=_limited)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading a {len(config.read_bytes())}-byte table list with nested aliases ({setting}) did not end "
                    "in 20 s")
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert str(config) in done.stderr and "unexpected error" not in done.stderr, done.stderr[-2000:]
