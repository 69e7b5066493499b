"""Hunt 16 (vl): "nothing the README says is false": concrete README claims checked against the product."""

from __future__ import annotations

import datetime as dt
import json

from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec

DAY = dt.date(2024, 3, 10)


def test_every_manifest_column_entry_carries_the_fields_the_readme_lists(conn, schema, store, s3_client, bucket,
                                                                        temp_dir):
    """README, "The manifest (`<key>.manifest.json`)":

        `columns[{name, pg_type, output_type, nullable, encoding, exact, note}]`

    A script written against that schema (``[c["note"] for c in manifest["columns"]]``, a jq filter ``.columns[]
    .note``, a JSON schema with those fields required) reads every column entry as having ``note``. Now:
    ``manifest.build_manifest`` writes ``note`` only where the encoding has a non-empty note, so for an ordinary
    table (an integer, a timestamptz and a text column in JSONL) no column entry has it and such a script fails
    with KeyError / null. The README marks the other fields that are present only sometimes (``object`` "null
    for an empty day", ``child_schema``/``child_name`` "read instead where present", ``settled_at``), but not
    this one; ``WriteStats.encodings`` (the same ``{"encoding", "exact", "note"}``) does always carry it.

    Should: every column entry has the seven listed fields (``note`` ``""`` when there is nothing to say), as
    the README lists them. Fix idea: in ``build_manifest`` write ``"note": encoding.get("note", "")``
    unconditionally (readers already accept it; or else say in the README that ``note`` is left out when
    empty)."""
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int, at timestamptz, label text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev VALUES (1, '2024-03-10 01:00+00', 'a'), (2, '2024-03-10 02:00+00', NULL)")
                 .format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    result = archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=result.manifest_key)["Body"].read())
    listed = {"name", "pg_type", "output_type", "nullable", "encoding", "exact", "note"}
    missing = {c["name"]: sorted(listed - c.keys()) for c in manifest["columns"] if listed - c.keys()}
    assert not missing, f"column entries lack fields the README lists: {missing}"
