"""Hunt 6 (lx): regressions and holes in the latest fixes (2748074..)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.config import TableSpec
from archive_pipeline.core.restore import restore_day
from archive_pipeline_tests.test_hunt4_gg import encoded_db  # noqa: F401 - a fixture: databases in other encodings

DAY = dt.date(2024, 3, 10)


def test_a_latin1_json_escape_of_a_latin1_character_is_archived_and_restored(encoded_db, store, temp_dir):
    """A LATIN1 database holds ``json`` written by a serializer that escapes everything beyond ASCII
    (``{"name": "Ren\\u00e9"}``: Python's json.dumps default). The character é is in LATIN1. Before 58893b2 the
    day archived as JSONL and restored into its own database exactly. What happens now: the archive refuses the
    day ("a \\u escape of a character beyond ASCII in a database whose encoding is not UTF8"), though
    json_populate_record turns \\u00e9 into LATIN1's é without error. What should happen: only an escape of a
    character the database's encoding lacks is refused; this day archives and restores exactly."""
    db = encoded_db("LATIN1")
    db.execute("CREATE TABLE ev (id int, at date, j json)")
    value = '{"name": "Ren\\u00e9"}'
    db.execute("INSERT INTO ev VALUES (1, '2024-03-10', %s::json), (2, '2024-03-10', '[1]')", (value,))
    spec = TableSpec(name="public.ev", day_column="at", start_date=DAY, format="jsonl")
    assert archive_partition(db, spec, DAY, store, temp_dir=str(temp_dir)).rows == 2
    restored = restore_day(db, store, spec, DAY, into="new", target="public.back", temp_dir=str(temp_dir))
    assert restored.rows == 2 and restored.fingerprint_checked
    assert db.execute("SELECT j::text FROM back WHERE id = 1").fetchone()[0] == value



def _archived_day_and_view(conn, schema, store, temp_dir, view: str) -> TableSpec:
    s = sql.Identifier(schema)
    conn.execute(sql.SQL("CREATE TABLE {}.ev (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("INSERT INTO {}.ev SELECT g, '2024-03-10', 'x' FROM generate_series(1, 5) g").format(s))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="jsonl")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    conn.execute(sql.SQL("CREATE TABLE {}.base (id int PRIMARY KEY, at date, note text)").format(s))
    conn.execute(sql.SQL("CREATE VIEW {}.v AS " + view).format(s, s))
    return spec


def test_restore_into_a_view_that_takes_no_insert_names_the_view_not_the_archivers_sql(conn, schema, store,
                                                                                        temp_dir):
    """A user restores a JSONL day with ``into='existing', target=<schema>.v``, where ``v`` is a view whose column
    ``note`` is computed (``note || ''``): not updatable. Before 70c2613 a view target was refused up front ("the
    target is not a table: ... is a view ... restore into the view's base table"). Now that updatable views are
    JSONL targets, this one reaches the INSERT and the failure reads "the server rejected the archiver's SQL
    (FeatureNotSupported: cannot insert into column "note" of view "v") ...; to fix: check the table definition;
    if it looks right, report it with this message" -- blaming the archiver and asking for a bug report. What
    should happen: the refusal says the target is a view that does not take the rows (not updatable) and sends
    the user to the view's base table or a new table."""
    from archive_pipeline.core.restore import RestoreError

    spec = _archived_day_and_view(conn, schema, store, temp_dir, "SELECT id, at, note || '' AS note FROM {}.base")
    with pytest.raises(RestoreError) as raised:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.v", temp_dir=str(temp_dir))
    text = f"{raised.value} {getattr(raised.value, 'remedy', '')}"
    assert "archiver's SQL" not in text and "report it" not in text, text
    assert "base table" in text or "into='new'" in text, text


def test_restore_skip_into_an_updatable_view_is_not_told_to_add_a_primary_key_to_the_view(conn, schema, store,
                                                                                          temp_dir):
    """A user restores a JSONL day with ``on_conflict='skip'`` into an updatable view ``v`` (``SELECT * FROM base``,
    ``base`` with a primary key on ``id``). The restore refuses: "... needs a primary key or unique constraint on
    <schema>.v ... and it has none ...; to fix: ... or add a primary key to the target". A view cannot have a
    primary key (ALTER TABLE v ADD PRIMARY KEY fails), and its base table has one. Before 70c2613 the view was
    refused as a view with the remedy to restore into its base table. What should happen: the remedy is one that
    works: restore into the view's base table (or skip through the base table's key)."""
    from archive_pipeline.core.restore import RestoreError

    spec = _archived_day_and_view(conn, schema, store, temp_dir, "SELECT * FROM {}.base")
    with pytest.raises(RestoreError) as raised:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.v", temp_dir=str(temp_dir),
                    on_conflict="skip")
    text = f"{raised.value} {getattr(raised.value, 'remedy', '')}"
    assert "add a primary key to the target" not in text, text


def test_a_restore_refused_usage_on_a_targets_sequence_names_the_sequence_not_grants_the_role_has(pg, conn, store,
                                                                                                   temp_dir):
    """A role with INSERT and SELECT on an existing table ``s.target`` restores a day into it. The target has a
    column the archive lacks, ``n bigserial`` (its default calls nextval of ``s.target_n_seq``), and the role has no
    USAGE on that sequence. The restore is refused, not retried (right), with "permission denied for sequence
    target_n_seq; to fix: GRANT INSERT, SELECT ON s.target TO <role> (the restoring role needs both on the
    target)" (ba14397's _restore_grant): the role has both already, and pasting the statement changes nothing.
    What should happen: the remedy names the privilege that is missing (GRANT USAGE ON SEQUENCE ... TO the role),
    as errors.refused_grant does for a type or a schema."""
    from archive_pipeline.core.errors import ArchiveError
    from archive_pipeline_tests.test_hunt6_lw import PASSWORD

    name = f"lx_{conn.info.backend_pid}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    role = f"{name}_r"
    owner = psycopg.connect(pg.dsn_for("postgres", database=name), autocommit=True)
    try:
        owner.execute("CREATE SCHEMA s")
        owner.execute("CREATE TABLE s.ev (id int, at date, note text)")
        owner.execute("INSERT INTO s.ev SELECT g, '2024-03-10', 'x' FROM generate_series(1, 5) g")
        owner.execute("CREATE TABLE s.target (id int, at date, note text, n bigserial)")
        pg.create_password_role(role, PASSWORD)
        owner.execute(sql.SQL("GRANT USAGE ON SCHEMA s TO {}").format(sql.Identifier(role)))
        owner.execute(sql.SQL("GRANT SELECT, INSERT ON s.target TO {}").format(sql.Identifier(role)))
        spec = TableSpec(name="s.ev", day_column="at", start_date=DAY, format="csv")
        archive_partition(owner, spec, DAY, store, temp_dir=str(temp_dir))
        with psycopg.connect(pg.dsn_for(role, PASSWORD, database=name), autocommit=True) as restoring:
            with pytest.raises(ArchiveError) as refused:
                restore_day(restoring, store, spec, DAY, into="existing", target="s.target", temp_dir=str(temp_dir))
        remedy = refused.value.remedy or ""
        assert "SEQUENCE" in remedy and "target_n_seq" in remedy, f"{refused.value}\nremedy: {remedy}"
    finally:
        owner.close()
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("ddl", ["CREATE TABLE {s}.unrelated (x int)", "CREATE TEMP TABLE scratch (x int)"])
def test_a_regclass_day_is_not_failed_by_an_unrelated_table_created_during_its_read(
        pg, conn, schema, store, temp_dir, monkeypatch, ddl):
    """An audit table ``audit (id int, at timestamptz, rel regclass)`` (the relation a trigger recorded) is archived
    while another session of the application creates an unrelated table (a migration's new table, or a report's
    ``CREATE TEMP TABLE``, which busy databases do all the time) during the read. No name any value prints
    changed. What happens: the day fails "a name a regclass value prints (a relation, type, function or schema
    renamed) ... was changed while the day was read" (2e0db64: ``source._names_digest`` hashes every row of
    pg_class, oids included, so any relation created or dropped anywhere in the database counts as a rename); the
    retry fails the same way while the database is busy. What should happen: the day is archived green (only a
    name a day's value prints, changed, fails it)."""
    from archive_pipeline.core import archive

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.orders (id int)")
    conn.execute(f"CREATE TABLE {s}.audit (id int, at timestamptz, rel regclass)")
    conn.execute(f"INSERT INTO {s}.audit SELECT g, '2024-03-10 01:00+00', '{s}.orders'::regclass "
                 "FROM generate_series(1, 5) g")
    spec = TableSpec(name=f"{schema}.audit", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "column"})
    original = archive.write_day
    other = pg.connect()

    def busy_meanwhile(*args, **kwargs):  # another session, during the read
        other.execute(ddl.format(s=s))
        other.commit()
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "write_day", busy_meanwhile)
    try:
        assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 5
    finally:
        other.close()


def test_a_view_over_only_an_inheritance_parent_is_archived(conn, schema, store, temp_dir):
    """A legacy inheritance layout: ``ev`` holds the current rows and ``ev_old`` (``INHERITS (ev)``) the moved-away
    history; the application reads the current rows through ``CREATE VIEW ev_current AS SELECT * FROM ONLY ev``,
    and that view is the configured table. Nothing changes while the day is archived. What happens: every run
    fails, retryable, "... ev_old is no longer its child (NO INHERIT) since the snapshot, which sees its rows"
    (2e0db64 made ``source.same_members`` check views: the inheritance children of the view's base table that the
    view's query never reads, by ONLY, are taken for children that left). What should happen: the day is
    archived (5 rows of ``ev`` itself)."""
    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.ev (id int, at timestamptz)")
    conn.execute(f"CREATE TABLE {s}.ev_old () INHERITS ({s}.ev)")
    conn.execute(f"INSERT INTO {s}.ev SELECT g, '2024-03-10 01:00+00' FROM generate_series(1, 5) g")
    conn.execute(f"INSERT INTO {s}.ev_old SELECT g, '2024-03-10 02:00+00' FROM generate_series(6, 8) g")
    conn.execute(f"CREATE VIEW {s}.ev_current AS SELECT * FROM ONLY {s}.ev")
    spec = TableSpec(name=f"{schema}.ev_current", day_column="at", start_date=DAY, format="csv",
                     partitioning={"mode": "column"})
    assert archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir)).rows == 5


def test_an_empty_day_archived_before_deep_check_was_set_is_not_failed_as_never_proven(conn, schema, archive_env):
    """A table is archived for a while; one day had no rows (archived as ``empty``: a manifest and no object).
    Then the team sets ``deep_check: true``. The weekly ``verify_archives`` re-checks that day. a8f0bc8's
    ``checks._recheck`` means to exempt empty days from its new "never proven" verdict (``not meta.get("empty")``),
    but the materialization's metadata records ``state: empty``, never a key ``empty``: the day's check FAILS
    ("its content was never proven against the source (archived before deep_check was set ...): run verify --deep
    for the day, or archive it again"), for a day with no content. What should happen: an empty day is re-checked
    by its manifest, as the exemption intends (SUCCEEDED)."""
    from archive_pipeline_tests.test_hunt3_t import DAYS, _config, _job, _verdicts
    from dagster import instance_for_test
    from archive_pipeline.definitions import build_definitions
    from archive_pipeline.local.local_stack import create_sample_events

    create_sample_events(conn, DAYS[:1], rows_per_day=0, schema=schema)
    before = _config(schema, max_retries=0, compression="none")
    after = _config(schema, max_retries=0, compression="none", deep_check=True)
    day = DAYS[0].isoformat()
    with instance_for_test() as instance:
        ran = _job(build_definitions(before), schema).execute_in_process(instance=instance, partition_key=day)
        assert ran.success
        states = [e.event_specific_data.materialization.metadata["state"].value
                  for e in ran.get_asset_materialization_events()]
        assert states == ["empty"], states
        build_definitions(after).resolve_job_def("verify_archives").execute_in_process(instance=instance,
                                                                                       raise_on_error=False)
        verdicts = _verdicts(instance, after.tables[0])
    assert verdicts[0][:2] == (day, "SUCCEEDED"), verdicts


@pytest.mark.parametrize("base, value", [("bool", "true"), ("inet", "10.0.0.1")])
def test_deep_verify_of_a_domain_column_with_an_ignored_cast_to_text_proves_an_intact_csv_archive(
        conn, schema, store, temp_dir, base, value):
    """A column of a domain ``d`` over ``bool`` (or ``inet``); someone once ran ``CREATE CAST (d AS text) WITH FUNCTION
    ...``, which PostgreSQL stores but ignores ("cast will be ignored because the source data type is a domain":
    ``d::text`` still runs bool's cast to text, 'true'). The day is archived as CSV, green. ``deep_verify`` (and
    with it the removal's proof and ``verify --deep``) now says the archive's rows are not the ones recorded:
    24232f4's ``verify._USER_TEXT_CAST_COLUMNS`` walks the domain chain and counts the ignored cast on the domain,
    so the proof hashes the archived text by bool's output function ('t'), while the archive's fingerprint (source
    side: ``source._COLUMNS_QUERY`` looks at the base type's casts only) hashed ``::text`` ('true'). Before 24232f4
    the same archive was proven. What should happen: the proof hashes what the archive's fingerprint hashed; the
    day is proven."""
    from archive_pipeline.core.verify import deep_verify

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE DOMAIN {s}.d AS {base}")
    conn.execute(f"CREATE FUNCTION {s}.d_text({s}.d) RETURNS text LANGUAGE sql AS $$ SELECT 'X' $$")
    conn.execute(f"CREATE CAST ({s}.d AS text) WITH FUNCTION {s}.d_text({s}.d)")
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, v {s}.d)")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '2024-03-10', %s)", (value,))
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format="csv")
    archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
    assert deep_verify(conn, store, spec, DAY, temp_dir=str(temp_dir)) == []


def test_a_row_refused_by_a_views_base_table_is_not_blamed_on_what_the_view_shows(conn, schema, store, temp_dir):
    """A user restores a JSONL day into an updatable view ``v`` (``SELECT * FROM base``) whose base table has a CHECK
    that raises on one archived row (``CHECK (1/(id-2) IS NOT NULL)``: division by zero for id 2). The restore is
    refused, nothing restored (right), saying "the archived rows do not load into v (DivisionByZero: division by
    zero) ... v is a view: it shows what its query selects, not every row inserted through it, so the rows loaded
    through it are not all read back by the check; to fix: restore into the view's base table" (70c2613's
    ``restore._drift_explained`` says this of every failure through a view). No row was loaded nor read back, the
    view hides nothing, and the remedy fails the same way (the base table's CHECK refuses the row there too). What
    should happen: the cause named is the base table's own expression (its CHECK constraint), as for a table."""
    from archive_pipeline.core.restore import RestoreError

    spec = _archived_day_and_view(conn, schema, store, temp_dir, "SELECT * FROM {}.base")
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT picky CHECK (1 / (id - 2) IS NOT NULL)").format(
        sql.Identifier(schema, "base")))
    with pytest.raises(RestoreError) as raised:
        restore_day(conn, store, spec, DAY, into="existing", target=f"{schema}.v", temp_dir=str(temp_dir))
    text = f"{raised.value} {getattr(raised.value, 'remedy', '')}"
    assert "not every row inserted through it" not in text, text
    assert "picky" in text, text


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_lossy_cast_of_a_builtin_array_type_to_text_does_not_hide_a_change_from_compare(fmt, conn, schema, store,
                                                                                         temp_dir):
    """The class 24232f4 closed for a built-in scalar type, for its array: a DBA's compatibility cast
    ``CREATE CAST (timestamptz[] AS text) WITH FUNCTION tss_text(timestamptz[])`` (whole seconds). A day of a
    ``timestamptz[]`` column is archived; then one element changes by half a second. ``compare`` says "equal": the
    fingerprint still hashes the array through ``::pg_catalog.text`` (``fingerprint.column_text`` and
    ``source.Column.user_text_cast`` leave arrays out), which runs that cast. What should happen: the array is
    hashed by its output function, and compare says "differs"."""
    from archive_pipeline.core.plan import compare_days

    s = sql.Identifier(schema).as_string(conn)
    conn.execute(f"CREATE TABLE {s}.ev (id int, at date, ts timestamptz[])")
    conn.execute(f"INSERT INTO {s}.ev VALUES (1, '{DAY}', ARRAY['2024-03-10 12:00:00.25+00'::timestamptz]), "
                 f"(2, '{DAY}', ARRAY['2024-03-10 13:00:00+00'::timestamptz])")
    conn.execute(f"CREATE FUNCTION {s}.tss_text(timestamptz[]) RETURNS text LANGUAGE sql IMMUTABLE AS "
                 "$$ SELECT array_to_string(ARRAY(SELECT to_char(x AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
                 "FROM unnest($1) x), ',') $$")
    conn.execute(f"CREATE CAST (timestamptz[] AS text) WITH FUNCTION {s}.tss_text(timestamptz[])")
    spec = TableSpec(name=f"{schema}.ev", day_column="at", start_date=DAY, format=fmt)
    try:
        archive_partition(conn, spec, DAY, store, temp_dir=str(temp_dir))
        conn.execute(f"UPDATE {s}.ev SET ts = ARRAY[ts[1] + interval '0.5 second'] WHERE id = 1")
        compared = [c.result for c in compare_days(conn, spec, store, [DAY])]
    finally:
        conn.execute("DROP CAST IF EXISTS (timestamptz[] AS text)")
    assert compared == ["differs"], compared


# Left (see the closing note): a refused function of another schema is named without its schema (PostgreSQL's
# message leaves it out).



def test_list_and_verify_see_a_removed_days_only_archive_under_the_former_format(pg, s3, conn, schema, bucket,
                                                                                  tmp_path):
    """2024-03-10 is archived as JSONL and pruned (retention ``delete``): its archive is the day's only copy. The team
    switches the table to ``format: csv``. b9a3c1f made ``restore`` find the day under its former format (README:
    "``restore`` finds the day's archive there when nothing is at the new key"), and the restore works. But ``list
    --day 2024-03-10`` shows no day at all (neither archived nor removed), and ``verify --day 2024-03-10`` exits 1
    with nothing verified: the removed rows' only copy is invisible to the commands that check it, while restore
    restores it. What should happen: list shows the day archived (removed from the source) at its former key, and
    verify checks that archive."""
    import yaml

    from archive_pipeline_tests.test_hunt6_lp import DAY as LP_DAY, _cli, _day_partitions, _env

    _day_partitions(conn, schema)
    env = _env(pg, s3, bucket, tmp_path, schema, partitioning={"mode": "declarative"}, action="delete")
    day, span = ["--day", LP_DAY.isoformat()], ["--from", LP_DAY.isoformat(), "--to", LP_DAY.isoformat()]
    assert _cli(env, "archive", *day)[0] == 0
    assert [d["status"] for d in _cli(env, "prune", *span)[1]["days"]] == ["removed"]
    config = tmp_path / "tables.yaml"
    tables = yaml.safe_load(config.read_text())
    tables["tables"][0]["format"] = "csv"
    config.write_text(yaml.safe_dump(tables))
    listed = _cli(env, "list", *day)[1]
    verified = _cli(env, "verify", *day)
    assert [d["day"] for d in listed["days"]] == [LP_DAY.isoformat()], f"list: {listed}; verify: {verified}"
    assert verified[0] == 0, f"verify: {verified}"
