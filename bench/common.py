"""What the benchmarks share: reading this process's memory, timing a shell command, and filling a
sample day the same way for every measurement."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def status_mb(field: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM, ...) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM).

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's peak across fork + exec, so a
    child of a big driver would report the driver's peak."""
    return status_mb("VmHWM")


def stop_cleanly_on_signals() -> None:
    """SIGTERM and SIGHUP (``kill``, a closed terminal) end the benchmark as Ctrl-C does: by unwinding,
    so the PostgreSQL cluster and S3 server it started are stopped and its temp files removed, instead of
    outliving it."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))


def time_command(cmd: str) -> float:
    """Wall seconds of one shell pipeline (pipefail: a failing stage fails the measurement)."""
    started = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - started


def fill_day(conn, day: dt.date, rows: int) -> float:
    """The sample events of ``day``, analyzed and checkpointed so no background write disturbs timings."""
    from archive_pipeline.local.local_stack import create_sample_events

    started = time.perf_counter()
    create_sample_events(conn, [day], rows)
    conn.execute("VACUUM ANALYZE public.events")
    conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def proc_cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU (user + system, all threads) of a live process from /proc; with ``children``, plus that of
    its reaped children (a PostgreSQL backend's CPU lands in the postmaster's when it exits)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU of a whole PostgreSQL cluster: the postmaster with its exited backends, plus live backends."""
    total = proc_cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(postmaster):
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:  # ppid
                total += proc_cpu_seconds(int(entry.name))
    return total
