"""Hunt 23 (bh): the command line as a user tries it (archive_pipeline/cli.py line by line, and the README's
Command line section): flag combinations, exit codes, stdout against stderr, --json, signals mid-command."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys

from click.testing import CliRunner
from psycopg import sql

import archive_pipeline.cli as cli
from archive_pipeline_tests.test_cancelhunt import ROOT, assert_left_clean, cancelled_when_held, proxy, setup  # noqa: F401
from archive_pipeline_tests.test_hunt3_o import write_config

DAY = dt.date(2024, 3, 10)


def _invoke(*args: str):
    return CliRunner().invoke(cli.main, list(args))


def test_compare_rows_and_verify_deep_print_a_differing_row_s_text_reworded_as_if_it_were_a_core_message(
        conn, schema, archive_env, tmp_path):
    """Scenario: a table ``ev (id, at, note text)`` whose day 2024-03-10 is archived with two rows (note 'a' and
    'z'); then row 2's note is updated to ``aborted; set overwrite into='new'; retried automatically`` (a job log
    line, as an events table holds). ``compare --rows --day 2024-03-10`` (text and --json) and ``verify --deep``
    name the first differing row: the source's row 2.

    Now: the row is printed as ``(2,2024-03-10,"aborted; add --overwrite --into new; run the command again (it tries
    once)")``. Every string a command prints goes through cli._for_the_cli (_CliConsole.print for text; _worded
    for the JSON keys "differences" and "problems"), which rewrites the core's Dagster wording ("set overwrite",
    "into='new'", "retried automatically") into the command line's options. Only configured names (_KEPT) are
    protected; a row's values, which deep_verify quotes inside the same message, are not. The user is shown,
    in the one place that names the differing row, a value the database does not hold (grepping for it finds
    nothing), and a script reading --json gets altered data.

    Should: values quoted from the database (the differing row's text) are printed exactly (control characters
    escaped, as the README says, nothing else changed), in text and JSON alike. Fix idea: reword only the core's
    own sentences, not the quoted row (deep_verify could hand the row apart from its sentence, or mark it so that
    _for_the_cli protects it as it does _KEPT names)."""
    table = sql.Identifier(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, at date, note text)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, 'a'), (2, %s, 'z')").format(table), (DAY, DAY))
    config = str(write_config(tmp_path, [{"name": f"{schema}.ev", "day_column": "at", "start_date": "2024-03-01",
                                          "format": "jsonl", "compression": "none"}]))
    assert _invoke("archive", "--config", config, "--day", str(DAY)).exit_code == 0
    note = "aborted; set overwrite into='new'; retried automatically"
    conn.execute(sql.SQL("UPDATE {} SET note = %s WHERE id = 2").format(table), (note,))

    text = _invoke("compare", "--config", config, "--day", str(DAY), "--rows")
    answer = _invoke("compare", "--config", config, "--day", str(DAY), "--rows", "--json")
    deep = _invoke("verify", "--config", config, "--day", str(DAY), "--deep", "--json")
    assert (text.exit_code, answer.exit_code, deep.exit_code) == (1, 1, 1), (text.output, answer.output)
    [first] = [line for line in text.stdout.splitlines() if "first difference" in line]
    [named] = [d for d in json.loads(answer.stdout)["days"][0]["differences"] if "first difference" in d]
    [proven] = [p for p in json.loads(deep.stdout)["days"][0]["problems"] if "first difference" in p]
    assert "(2,2024-03-10," in first, first  # (the premise: the source's row 2 is the one named)
    assert f'"{note}"' in first and f'"{note}"' in named and f'"{note}"' in proven, (first, named, proven)


def test_closing_the_terminal_mid_archive_leaves_the_day_s_multipart_upload_open_and_says_nothing(
        setup, proxy, conn, s3_client, bucket):
    """Scenario: ``archive --day D`` runs in a terminal or an SSH session (the wide day of test_cancelhunt: two
    parts); while the store holds its first part, the session goes away (the terminal window closed, the SSH
    connection dropped): the process gets SIGHUP, as every process of a closed terminal does.

    Now: cli._cancellable installs handlers for SIGINT and SIGTERM only, so SIGHUP keeps Python's default action and
    the process dies on the spot (exit status -1): the day's multipart upload stays open in the store (its parts
    billed until a lifecycle rule or the day's next run aborts it), its temp file stays in TMPDIR, and nothing is
    printed. The README's promise for a cancelled command (the same cleanup as a failure: upload aborted, the day's
    lock and sessions released, one line naming what was interrupted) holds for Ctrl-C and SIGTERM, not for the
    most common way an interactive command is stopped besides them.

    Should: SIGHUP cancels like SIGTERM (exit 129, 128 + 1, with the same one line and cleanup), so closing a
    terminal leaves nothing half written. Fix idea: add signal.SIGHUP (where the platform has it) to the signals
    _cancellable takes, raising Terminated (or a sibling that exits 129)."""
    env, spec, temp = setup

    def terminal_session() -> None:  # a session's process, as a shell starts it: SIGHUP at its default
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    child = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", "archive", "--day", DAY.isoformat()],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=terminal_session)
    code, err = cancelled_when_held(proxy, child, conn, [signal.SIGHUP], method="PUT", query="partNumber=")
    uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], (code, err, [u["Key"] for u in uploads])
    assert_left_clean(conn, s3_client, bucket, spec, temp, {})
    assert code == 128 + signal.SIGHUP and "was cancelled" in err, (code, err)
