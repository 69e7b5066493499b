"""The demo: everything on this machine, nothing to configure.

Starts a throwaway PostgreSQL (sample ``public.events``, one child partition per day for the last
few complete days), moto's S3 server on 127.0.0.1 and a SQLite Dagster instance in .dagster_home,
then runs the archive job for each day through Dagster, prints what landed in the bucket, and
restores one day to compare it with the source. With ``--ui`` it leaves ``dagster dev`` running on
the same services until Ctrl-C or SIGTERM (also when started in the background); either one stops
the UI, the daemon and the demo's PostgreSQL and S3 servers.
"""

import argparse
import contextlib
import datetime as dt
import faulthandler
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from archive_pipeline.local.local_stack import (create_sample_events, local_environment, local_stack, port_is_free,
                                                 serving, without_proxy_for_loopback)

REPO = Path(__file__).resolve().parents[2]
BUCKET = "archive-demo"
JOB = "Archive_public_events"
UI_START_TIMEOUT_S = 180  # dagster dev loading the code location on a busy 2-core machine, with room to spare


def _print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for line in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).rjust(w) if isinstance(x, int) else str(x).ljust(w)
                        for x, w in zip(line, widths, strict=True)).rstrip())


_signals: list[float] = []  # when SIGINT/SIGTERM arrived
_raise_on_signal = [True]  # False while dagster dev runs: its loop checks _signals instead


def _interrupt(signum: int, _frame) -> None:
    """The first signal interrupts whatever runs (KeyboardInterrupt: the `finally` blocks stop the
    services). Later ones only count: `kill %1` reaches both make and us, and make passes its SIGTERM on,
    so one request can arrive twice, and a second interrupt must not cut the shutdown short.

    While dagster dev runs the signal is only recorded: an exception raised at an arbitrary point of
    `Popen.poll()` can leave its internal lock taken, after which poll() never sees dagster dev exit."""
    _signals.append(time.monotonic())
    if len(_signals) == 1 and _raise_on_signal[0]:
        raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_on_signals(*, raise_at_once: bool = True) -> None:
    """SIGTERM (kill, `kill %1`, make passing it on) and SIGINT end the demo like Ctrl-C: through the
    `finally` blocks that stop dagster dev, PostgreSQL and S3. A shell starts background jobs with SIGINT
    ignored; installing the handlers undoes that for us, and children start with the default again.
    Called again before dagster dev starts: Dagster's in-process execution swaps the handlers while a
    run executes, and they must be ours whatever it left behind. SIGUSR1 prints every thread's stack
    (what a stuck demo is doing)."""
    _raise_on_signal[0] = raise_at_once
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _stop_group(process: subprocess.Popen) -> None:
    """Stop dagster dev and everything it started: SIGINT (its own clean shutdown), then SIGTERM, then
    SIGKILL, to its whole process group. Another Ctrl-C while waiting (a second later or more, not the
    duplicate of the first) skips to the next step."""
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        step = time.monotonic()
        while process.poll() is None and time.monotonic() < step + grace:
            if any(t > step and t > _signals[0] + 1 for t in _signals[1:]):
                break
            time.sleep(0.1)
        if process.poll() is not None:
            break
    with contextlib.suppress(ProcessLookupError):  # anything it left behind in its group
        os.killpg(process.pid, signal.SIGKILL)


def _port_taken(port: int) -> str:
    """Why the UI cannot have ``port``, for the user, with what to do instead."""
    return (f"port {port} (the Dagster UI's, --port) is in use: stop what uses it, or pick another port, "
            f"e.g. make demo UI=1 ARGS=\"--port {port + 1}\"")


def _run_dagster_dev(env: dict[str, str], home: Path, port: int) -> None:
    """`dagster dev` in a session of its own, so that it gets exactly one signal, from us, whether the
    demo runs in a terminal, in the background or under make. It runs in the instance directory:
    started beside the project's dagster.yaml, it would warn that DAGSTER_HOME overrides that file.
    `dagster dev` says on start that `dg dev` supersedes it; `dg` is a separate package (dagster-dg-cli)
    the demo does not need, so that one notice is silenced.

    The URL is printed only once the webserver answers on it: one that cannot bind the port logs it and
    goes on running, and the user would be sent to whatever else answers there. The demo ends (SystemExit,
    naming the port) when the UI does not come up in time or dagster dev exits by itself."""
    cmd = [sys.executable, "-W", "ignore:Function `dev_command` is superseded", "-m", "dagster", "dev",
           "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    if not port_is_free(port):  # taken while the demo archived (checked before it too)
        raise SystemExit(_port_taken(port))
    _stop_on_signals(raise_at_once=False)  # from here on a signal stops dagster dev (or keeps it from starting)
    process = subprocess.Popen(cmd, env=env, cwd=home, start_new_session=True)
    try:
        _wait_for_ui(process, port, home)
        if _signals:
            print("\nstopping dagster dev ...", flush=True)
        elif process.returncode is not None:
            raise SystemExit(f"dagster dev exited with code {process.returncode}; the Dagster UI on port {port} "
                             "is gone (its output above says why)")
    finally:
        _stop_group(process)


def _wait_for_ui(process: subprocess.Popen, port: int, home: Path) -> None:
    """Until a signal arrives or dagster dev exits: print the UI's URL once it answers, and give up (SystemExit
    naming the port) when it has not within UI_START_TIMEOUT_S. Not one blocking wait(): the kernel may hand
    SIGTERM to another thread of ours, and Python runs the handler only when the main thread runs again, which
    a wait() for dagster dev never lets it do."""
    url, up, deadline = f"http://127.0.0.1:{port}", False, time.monotonic() + UI_START_TIMEOUT_S
    while process.poll() is None and not _signals:
        if not up and serving(f"{url}/server_info"):
            up = True
            print(f"\nDagster UI: {url}  (Ctrl-C or SIGTERM stops it and the demo services)")
            print(f"Another shell can use this instance: . {_shell_path(home / 'env.sh')}", flush=True)
        elif not up and time.monotonic() > deadline:
            raise SystemExit(f"the Dagster UI did not answer on {url} within {UI_START_TIMEOUT_S} s (a webserver "
                             f"that cannot bind port {port} says so above); stopping dagster dev and the demo")
        time.sleep(0.2)


def _shell_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return shlex.quote(str(path.relative_to(Path.cwd())))
    return shlex.quote(str(path))


def write_env_file(home: Path, env: dict[str, str]) -> Path:
    """``env.sh`` in the instance directory: the demo's settings for a second shell (README: backfills)."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    lines.append(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"")
    path = home / "env.sh"
    path.write_text("# written by `make demo`: source it to use the demo's Dagster instance and services\n"
                    + "\n".join(lines) + "\n")
    return path


def write_demo_config(home: Path, first_day: dt.date) -> Path:
    """The shipped ``archive_tables.yaml`` with ``start_date`` at the demo's first day of sample data, in the
    instance directory. The sample days are the last few before today, so the shipped fixed start date
    would give the UI hundreds of grey "missing" days before them (not archived yet, and never to be,
    as there is nothing to archive): with this one every day the UI shows is one the demo has data for."""
    config = yaml.safe_load((REPO / "archive_tables.yaml").read_text())
    for table in config["tables"]:
        table["start_date"] = first_day.isoformat()
    path = home / "archive_tables.yaml"
    path.write_text(f"# written by `make demo` from {REPO / 'archive_tables.yaml'}: start_date is the first day of "
                    "the demo's sample data\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def show_round_trip(env: dict[str, str], day: dt.date) -> None:
    """Restore one archived day from the bucket into a new table and compare the source with the archive,
    through the command line a user would type (`archive-pipeline`, the same core and settings)."""
    print(f"\nround trip of {day}: restored from the bucket into a new table (kept only if its rows have the "
          "manifest's fingerprint), then the source compared with the archive:")
    for args in (["restore", "--day", day.isoformat(), "--into", "new", "--target", "public.events_restored"],
                 ["compare", "--day", day.isoformat()]):
        print(f"$ archive-pipeline {shlex.join(args)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "archive_pipeline.cli", *args], env={**os.environ, **env},
                              cwd=REPO, check=False)
        if done.returncode != 0:
            raise SystemExit(f"archive-pipeline {args[0]} exited with {done.returncode}")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high``, else a usage error naming the option (before
    anything is touched: ``--days 0`` used to empty the instance directory and then fail on no days)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be at least {low}" if high is None
                                             else f"must be from {low} to {high}, not {value}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=_int_in(1), default=3, help="complete days of sample data (default 3)")
    parser.add_argument("--rows", type=_int_in(0), default=20_000, help="rows per day (default 20,000)")
    parser.add_argument("--ui", action="store_true", help="leave `dagster dev` running afterwards")
    parser.add_argument("--port", type=_int_in(1, 65535), default=3000, help="port of the Dagster UI with --ui")
    parser.add_argument("--home", type=Path, default=REPO / ".dagster_home",
                        help="Dagster instance directory, emptied first (default .dagster_home)")
    args = parser.parse_args(argv)
    if args.ui and not port_is_free(args.port):  # known now: refused before the demo empties or starts anything
        print(f"{parser.prog}: {_port_taken(args.port)}", file=sys.stderr)
        return 1
    # The demo's services are its own: the user's libpq variables and proxy, meant for their databases and the
    # internet, must reach neither its clients (in this process) nor its child processes (dagster dev, the CLI).
    clean = local_environment()
    os.environ.clear()
    os.environ.update(clean)
    _stop_on_signals()
    try:
        return _demo(args)
    except KeyboardInterrupt:
        print("demo stopped", file=sys.stderr)
        return 130


def _demo(args: argparse.Namespace) -> int:
    home = args.home.resolve()
    shutil.rmtree(home, ignore_errors=True)  # the services are new each time; so is the history
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=n) for n in range(args.days, 0, -1)]

    print(f"starting PostgreSQL and the S3 endpoint; {args.rows:,} sample rows for each of {days[0]}..{days[-1]}",
          flush=True)
    with local_stack() as (pg, s3):
        with pg.connect() as conn:
            create_sample_events(conn, days, args.rows)
        s3.client().create_bucket(Bucket=BUCKET)
        env = {"ARCHIVE_PG_DSN": pg.conninfo, "ARCHIVE_S3_BUCKET": BUCKET, "ARCHIVE_S3_ENDPOINT_URL": s3.endpoint_url,
               "ARCHIVE_S3_PREFIX": "archive", "ARCHIVE_S3_ACCESS_KEY_ID": "demo",
               "ARCHIVE_S3_SECRET_ACCESS_KEY": "demo",
               "ARCHIVE_PIPELINE_CONFIG": str(write_demo_config(home, days[0])), "DAGSTER_HOME": str(home),
               **without_proxy_for_loopback(os.environ)}
        os.environ.update(env)
        write_env_file(home, env)

        from dagster import DagsterInstance

        from archive_pipeline.definitions import build_definitions

        defs = build_definitions()
        job = defs.resolve_job_def(JOB)
        rows = []
        with DagsterInstance.get() as instance:
            for day in days:
                started = time.perf_counter()
                result = job.execute_in_process(partition_key=day.isoformat(), instance=instance,
                                                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
                [event] = result.get_asset_materialization_events()
                meta = {k: v.value for k, v in event.materialization.metadata.items()}
                rows.append((day.isoformat(), meta["object_key"], meta["dagster/row_count"], meta["compressed_bytes"],
                             meta["uncompressed_bytes"], meta["md5"], f"{time.perf_counter() - started:.2f}s"))
        print("\narchived partitions of asset archive/public/events (materialized through Dagster):")
        _print_table(rows, ("day", "key", "rows", "bytes", "raw bytes", "md5", "run"))
        listing = s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        print(f"\nobjects in s3://{BUCKET} at {s3.endpoint_url}:")
        for obj in listing:
            print(f"  {obj['Key']}  {obj['Size']:,} bytes")
        show_round_trip(env, days[-1])
        sys.stdout.flush()
        if args.ui:
            _run_dagster_dev({**os.environ, **env}, home, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
