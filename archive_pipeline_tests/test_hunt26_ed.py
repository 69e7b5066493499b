"""Hunt 26 (ed): the command line as a process among others: the terminal's width it is told (COLUMNS=0), and a
Ctrl-C its parent shell asked it to ignore (a background job of a script)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import struct
import subprocess
import sys
import termios
import textwrap

import yaml

from archive_pipeline.local.local_stack import create_sample_events
from archive_pipeline_tests.test_cli import cli_json
from archive_pipeline_tests.test_hunt11_qj import days, setup  # noqa: F401 - fixtures
from archive_pipeline_tests.test_user_hunt import ROOT, _cli_env, _days, _table


def _on_a_terminal(args: list[str], env: dict[str, str], columns: int) -> str:
    """``archive-pipeline *args`` with stdout and stderr on a pseudo-terminal ``columns`` wide, as an xterm
    (test_user_hunt's runner says TERM=dumb, for which rich takes 80 columns whatever COLUMNS says); what it
    printed, escape sequences removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "archive_pipeline.cli", *args],
                            env={**env, "COLUMNS": str(columns), "TERM": "xterm-256color"}, cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode("utf-8", "replace"))


def test_columns_zero_makes_the_listing_and_the_notes_vanish(pg, s3, bucket, conn, schema, tmp_path):
    """**Scenario:** a shell or job runner exports ``COLUMNS=0`` (some tools write 0 for "unknown" or "no limit";
    the terminal itself is 120 columns wide). The user runs ``archive-pipeline list`` in that terminal, and a
    script runs ``archive-pipeline list --day <a day before the table's start_date>`` with stderr into a log.

    **Now:** the terminal shows nothing at all (exit 0): not the table, not the per-table summary line. The
    script's log lacks the note that the selection holds no period of the table. ``Run.out``
    (``_CliConsole(width=None ...)`` on a terminal) and ``Run.err`` (``_CliConsole(stderr=True ...)``, always
    width=None) let rich read the width from ``$COLUMNS``; rich's ``Console.__init__`` takes "0" (it is digits)
    as a width of 0, and at width 0 renders every line, soft-wrapped or not, as nothing. ``_too_narrow`` even
    turns the table into ``_as_records``, which prints nothing either. Exit 0 with no output reads as "nothing
    configured, nothing to say".

    **Should:** the listing (every day, its state) and the notes are printed whatever COLUMNS says; a width of 0
    is no width (as rich's own size property treats a terminal that reports 0 columns: 80). Fix idea: in
    ``_CliConsole.__init__`` (or where Run builds its consoles) pass ``width`` explicitly when ``$COLUMNS`` is not
    a positive number: the terminal's own size (``shutil.get_terminal_size``) or 80, never 0."""
    days = _days(2)
    create_sample_events(conn, days, 10, schema=schema)
    config = tmp_path / "tables.yaml"
    config.write_text(yaml.safe_dump({"tables": [_table(schema, days[0])]}))
    env = _cli_env(pg, s3, bucket, config)
    name = f"{schema}.events"

    shown = _on_a_terminal(["list"], env, 0)
    assert days[0].isoformat() in shown and "missing" in shown and f"{name}: 2 missing" in shown, repr(shown)

    done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", "list", "--day", "2024-01-01"],
                          env={**env, "COLUMNS": "0"}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{name}: no daily period of the table in the selection" in done.stderr, (done.stdout, done.stderr)


def test_a_background_archive_of_a_script_is_cancelled_by_the_ctrl_c_its_shell_made_it_ignore(
        setup, days, tmp_path):
    """**Scenario:** a maintenance script (no job control) starts the night's archive in the background and waits
    for it: ``archive-pipeline archive --day D --json > d.json & wait``. POSIX shells start such a job with SIGINT
    ignored, so that a Ctrl-C at the terminal (sent to the whole process group) stops the script's foreground
    steps, never the background work: the same as ``trap '' INT`` or a supervisor that ignores SIGINT for its
    children. The operator presses Ctrl-C while the day is being committed.

    **Now:** the archive is cancelled anyway: exit 130, ``ok: false``, "archiving <table> D was cancelled by
    Ctrl-C: nothing of the day was published", and the day is not archived. ``cli._cancellable`` installs
    ``_cancel`` for SIGINT and SIGTERM unconditionally, replacing the SIG_IGN the process inherited; it keeps an
    ignored disposition only for SIGHUP (``nohup``). Python itself leaves an inherited ignored SIGINT ignored
    (no KeyboardInterrupt), so before the CLI took the signal the same script's archive finished.

    **Should:** a signal the process was started with ignored stays ignored (the Unix rule: catch SIGINT only if
    it was not ignored), for SIGINT and SIGTERM as for SIGHUP: the day is archived, exit 0, ``ok: true``.
    Fix idea: in ``_cancellable``, leave out of ``taken`` every signal whose ``signal.getsignal`` is
    ``SIG_IGN``, not only SIGHUP."""
    env, name = setup
    day = days[0].isoformat()
    runner = tmp_path / "runner.py"
    runner.write_text(textwrap.dedent("""
        import os, signal, sys
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # (the premise: the shell made it ignore SIGINT)
            sys.exit(99)
        import archive_pipeline.core.archive as A
        original = A._Archiving._commit
        def commit(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # the operator's Ctrl-C reaching the process group
            return original(self, *args, **kwargs)
        A._Archiving._commit = commit
        from archive_pipeline.cli import main
        sys.argv[0] = "archive-pipeline"
        main()
    """))
    line = shlex.join([sys.executable, str(runner), "archive", "--day", day, "--json"])
    done = subprocess.run(["bash", "-c", f"{line} & wait $!"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode != 99, "the background job did not start with SIGINT ignored"
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] and answer["days"][0]["status"] == "archived", answer
    assert cli_json(env, "list", "--day", day)["days"][0]["state"] == "archived"
