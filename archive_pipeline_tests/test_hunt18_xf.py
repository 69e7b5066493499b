"""Hunt 18 (xf): hostile names and non-ASCII text end to end (schema, table and column names with quotes, percent
signs, braces, dots, NFC/NFD twins, CJK and emoji; S3 prefixes with blanks, accents and '%20'; PGCLIENTENCODING;
the Dagster asset keys, jobs, checks and removal of two tables that differ only in what Dagster replaces)."""

from __future__ import annotations

import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import parse_config
from archive_pipeline.core.restore import parse_relation
from archive_pipeline_tests.test_hunt17_wf import _env, _events, cli


# --------------------------------------------------------------------------------------------------


def test_the_restored_tables_name_as_reported_names_that_table_when_given_back_as_target(
        pg, s3, bucket, conn, schema, store, tmp_path):
    """Scenario: a table whose catalog name holds double quotes, ``"x"`` (the quote characters are part of it: a name
    once created as CREATE TABLE \"\"\"x\"\"\" by mistake, or on purpose). `restore --day D1 --into new --target
    'S.\"\"\"x\"\"\"' --json` (SQL's quoting, which restore --target takes and README shows) creates it and reports it
    as ``days[0].target`` and ``created``; the operator (or a script) then restores the next day into the table
    the first command reported: `restore --day D2 --into existing --target <that name>`. The schema also holds an
    unrelated table ``x`` of the same columns.

    Now: RestoreResult.target and .created are ``str(Relation)``, i.e. source.relation_name, which quotes the
    parts only when the schema holds a dot, so the new table is reported as ``S."x"``: restore.parse_relation
    reads that back as the table ``x`` (a part that is one quoted identifier is unquoted). The second command
    exits 0 and loads D2 into the unrelated table ``x``; ``"x"`` stays with D1 only. (A name with a blank around
    it, ``S." x"``, is reported as ``S. x``, which --target refuses as white space.)

    Should: every name the command line reports as a table it created or restored into reads back, through
    --target, as that table. Fix idea: in relation_name, double-quote both parts whenever either would not read
    back as itself through parse_relation (a schema holding a dot, a part that starts with '"' or has white space
    around it), as already done for a dotted schema."""
    days, table = _events(conn, schema, n_days=2)
    spec = parse_config({"tables": [table]}).tables[0]
    for day in days:
        archive_partition(conn, spec, day, store)
    env = _env(pg, s3, bucket, tmp_path, [table])
    quoted_name = '"x"'  # the catalog name: three characters, quotes included

    first = cli(env, "restore", "--day", days[0].isoformat(), "--into", "new", "--target",
                f'{schema}."""x"""', "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    answer = json.loads(first.stdout)
    reported = answer["days"][0]["target"]
    assert answer["days"][0]["created"] == [reported]
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier(schema, "x"),
                                                             sql.Identifier(schema, quoted_name)))

    second = cli(env, "restore", "--day", days[1].isoformat(), "--into", "existing", "--target", reported, "--json")
    counts = {name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]
              for name in (quoted_name, "x")}
    assert counts == {quoted_name: 40, "x": 0}, (counts, reported, tuple(parse_relation(reported)), second.stdout,
                                                  second.stderr)
