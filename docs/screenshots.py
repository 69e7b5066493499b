"""Screenshots of the Dagster UI for the README, from a real headless browser on the demo stack.

    python docs/screenshots.py            # needs Debian's chromium (apt-get install chromium)

Starts `python -m archive_pipeline.local.demo --ui` (PostgreSQL, S3, 3 archived days, dagster dev), captures
with `chromium --headless`, then makes one run fail the way a real one does (a row added to an
archived day: "late rows", not retried) and captures that run:

  docs/partitions.png     the asset's partitions view
  docs/materialization.png  one materialization with its metadata
  docs/checks.png         the asset's checks
  docs/failed_run.png     the failed run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
ASSET = "archive/public/events"
JOB = "Archive_public_events"


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    if "errors" in answer:
        raise RuntimeError(answer["errors"])
    return answer["data"]


LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
STATUS = 'query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }'


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "$" not in line:
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0]
    return env


def wait_until(what: str, probe, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}")


def shoot(url: str, target: Path, size: str) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=15000",
                        f"--screenshot={target}", url],
                       check=True, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    print(f"{target.relative_to(REPO)}  {target.stat().st_size // 1024} KiB  <- {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3333)
    parser.add_argument("--size", default="1400,900", help="browser window, width,height")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="archive-shots-")) / "home"
    demo = subprocess.Popen([sys.executable, "-m", "archive_pipeline.local.demo", "--ui", "--port", str(args.port),
                             "--home", str(home)], cwd=REPO, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_until("the UI", lambda: urllib.request.urlopen(f"{base}/server_info", timeout=2))
        env = read_env(home / "env.sh")
        today = dt.datetime.now(dt.UTC).date()
        DOCS.mkdir(exist_ok=True)
        shoot(f"{base}/assets/{ASSET}?view=partitions&partition={today - dt.timedelta(days=1)}",
              DOCS / "partitions.png", args.size)
        shoot(f"{base}/assets/{ASSET}?view=events&partition={today - dt.timedelta(days=2)}",
              DOCS / "materialization.png", args.size)
        shoot(f"{base}/assets/{ASSET}?view=checks", DOCS / "checks.png", args.size)

        # A late row in a day that is archived already: the next run of that day refuses to overwrite.
        yesterday = (today - dt.timedelta(days=1)).isoformat()
        with psycopg.connect(env["ARCHIVE_PG_DSN"], autocommit=True) as conn:
            conn.execute("INSERT INTO public.events (id, created_at, user_id, event_type) "
                         "VALUES (-1, %s::timestamptz + interval '12 hours', 1, 'late')", (yesterday,))
        params = {"selector": {"repositoryLocationName": "archive_pipeline", "repositoryName": "__repository__",
                               "jobName": JOB},
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": yesterday}]}}
        launched = graphql(args.port, LAUNCH, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise SystemExit(f"launch failed: {launched}")
        run_id = launched["run"]["runId"]

        def finished() -> str | None:
            status = graphql(args.port, STATUS, {"id": run_id})["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        status = wait_until("the failing run", finished)
        print(f"run {run_id}: {status}")
        if status != "FAILURE":
            raise SystemExit("the run meant to fail did not")
        shoot(f"{base}/runs/{run_id}", DOCS / "failed_run.png", args.size)
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=120)
        shutil.rmtree(home.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
