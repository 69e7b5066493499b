"""Hunt 24 (bp): a review of the last session's fixes (git log 2b001a9..49d2fdc -- archive_pipeline): each fix's
class on its sibling paths, the neighbours it touched, and its fault a step earlier or later."""

from __future__ import annotations

import datetime as dt
import json

from click.testing import CliRunner
from psycopg import sql

import archive_pipeline.cli as cli
from archive_pipeline_tests.test_hunt3_o import write_config

DAY = dt.date(2024, 3, 10)


def _invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


def test_prune_reports_a_differing_row_s_text_reworded_as_if_it_were_a_core_message(conn, schema, archive_env,
                                                                                    tmp_path):
    """Scenario: a table ``ev (id, at, note text)`` with ``retention: {keep_days: 30, action: delete}`` whose day
    2024-03-10 is archived with two rows; then row 2's note is updated to ``aborted; set overwrite into='new';
    retried automatically`` (a job log line, as an events table holds). ``prune --dry-run --day 2024-03-10`` proves
    the day before it would remove it: the proof fails and names the first differing row, the source's row 2.

    Now: the refusal prints the row as ``(2,2024-03-10,"aborted; add --overwrite --into new; run the command again
    (it tries once)")``, in text and in --json. Fix ef5414d protected the row's text only where compare --rows and
    verify --deep quote it (cli._day_checked notes it in _QUOTED); prune's proof (lifecycle.source_differs, which
    joins deep_verify's problems into the refusal's message) reaches the output through the same _for_the_cli
    rewording without passing _day_checked, so the one place that names the row a removal is refused for shows a
    value the database does not hold.

    Should: a differing row quoted from the database is printed exactly by every command that names it (prune's
    refusal, and the Dagster-side texts have no rewording at all). Fix idea: note the quoted values where the
    message is built (the core could mark them, or the CLI could apply _quoting to every error's text before
    _for_the_cli), not in one caller."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'a'), (2, %s, 'z')").format(table), (DAY, DAY))
    config = str(write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                          "format": "jsonl", "compression": "none",
                                          "retention": {"keep_days": 30, "action": "delete"}}]))
    assert _invoke("archive", "--config", config, "--day", str(DAY)).exit_code == 0
    note = "aborted; set overwrite into='new'; retried automatically"
    conn.execute(sql.SQL("UPDATE {} SET note = %s WHERE id = 2").format(table), (note,))

    text = _invoke("prune", "--config", config, "--day", str(DAY), "--dry-run")
    answer = _invoke("prune", "--config", config, "--day", str(DAY), "--dry-run", "--json")
    assert text.exit_code != 0 and answer.exit_code != 0, (text.output, answer.output)
    assert "(2,2024-03-10," in text.output, text.output  # (the premise: the source's row 2 is named)
    assert f'"{note}"' in text.output, text.output
    assert f'\\"{note}\\"' in answer.stdout or json.dumps(note)[1:-1] in answer.stdout, answer.stdout

