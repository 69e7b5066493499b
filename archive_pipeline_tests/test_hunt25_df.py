"""Hunt 25 (df): a review of this session's latest fixes, round three (callers_connection's refuse_unusable and its
savepoint on a caller's connection).

Held up (probed, no test here): restore's JSONL array shortcut (_TARGET_COLUMNS' plain-element test) only ever
meets JSON-native arrays (numbers, booleans, texts, dates and times, uuid, bytea, enums' labels), since every other
array (ranges, multiranges, domains, json's, a user's type) is written as its literal in a JSON string; the
manifest's _ways_unambiguous (ways split on ASCII spaces only, _below tests the same); listing's former
granularities (_shape makes every period's key alike, so the first day's overlapping keys serve the range)."""

from __future__ import annotations

import threading

import psycopg

from archive_pipeline.core.archive import archive_partition
from archive_pipeline.core.plan import compare_days
from archive_pipeline_tests.test_hunt25_cs import DAY, _events


def test_compare_on_a_callers_connection_with_a_copy_in_progress_hangs_for_ever(pg, schema, conn, store, temp_dir):
    """Scenario: a library user's loader streams rows into a staging table with ``cur.copy("COPY ... FROM STDIN")``
    on its connection (autocommit) and, inside the copy block, checks a day of an archived table on the same
    connection: ``compare_days(c, spec, store, [day])`` (a mistake of theirs, as a pipeline or an aborted
    transaction is, which the session's fix now refuses up front).

    Now: session_settings.callers_connection -> refuse_unusable checks only the pipeline status and an aborted
    transaction (INERROR), not a command in progress (transaction_status ACTIVE: a COPY, a ``stream()`` not
    exhausted); _rolled_back_after then sees a status that is not IDLE and enters ``conn.transaction()``, which
    waits for the connection's lock the caller's open COPY holds: the call never returns, no error, no timeout
    (faulthandler: psycopg/transaction.py __enter__ under session_settings.callers_connection).

    Should: refuse_unusable refuses a connection whose transaction_status is ACTIVE (a COPY or another command in
    progress) with the same usage error (ValueError naming the call, its table and day: finish the COPY first;
    nothing was sent), before taking anything of the connection."""
    spec = _events(conn, schema)
    archive_partition(conn, spec, DAY, store, temp_dir=temp_dir)
    conn.execute(f"CREATE TABLE {schema}.staging (v text)")
    outcome: list[object] = []

    def check(c: psycopg.Connection) -> None:
        try:
            outcome.append([x.result for x in compare_days(c, spec, store, [DAY])])
        except Exception as exc:  # noqa: BLE001 - what the caller would see
            outcome.append(exc)

    with psycopg.connect(pg.dsn, autocommit=True) as c:
        with c.cursor().copy(f"COPY {schema}.staging (v) FROM STDIN") as copy:
            copy.write_row(("x",))
            worker = threading.Thread(target=check, args=(c,), daemon=True)
            worker.start()
            # a deadlock, not a race: the call waits for the lock this COPY holds until the block ends
            worker.join(timeout=10)
            hung = worker.is_alive()
        worker.join(timeout=20)  # (the COPY ended: let the call go on before the connection closes)
    assert not hung, "compare_days on a connection with the caller's COPY in progress never returned (deadlock)"
    assert outcome and isinstance(outcome[0], ValueError), f"not refused as a usage error: {outcome}"
