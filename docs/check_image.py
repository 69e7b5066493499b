"""Run the Dockerfile's steps as written, without Docker: a fresh virtualenv stands in for the image.

    python3.11 docs/check_image.py          # about 1-3 minutes (a fresh install of every dependency)

It copies what the Dockerfile's COPY lines copy (through .dockerignore's allow-list) into an empty
WORKDIR, applies its ENV lines, runs its RUN lines with the virtualenv first on PATH (`pip install .`
is the image's install, as-is), then starts its CMD (`dagster code-server start ...`, as-is: 0.0.0.0:4000)
with only ARCHIVE_PG_DSN / ARCHIVE_S3_BUCKET set to dummies, waits for the HEALTHCHECK command to pass,
and checks that the code location loaded (its assets listed over gRPC). Skipped: `useradd`/`USER`
(they change this machine's users). Not covered: the base image itself and the Docker daemon, which
the development machines do not have. Exits non-zero on any failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def exec_form(argument: str) -> list[str]:
    argument = re.sub(r"^(--\S+\s+)*CMD\s+", "", argument)  # HEALTHCHECK --interval=... CMD [...]
    return json.loads(argument) if argument.startswith("[") else ["sh", "-c", argument]


def main() -> int:
    started = time.monotonic()
    steps = instructions()
    base = steps[0][1]
    assert steps[0][0] == "FROM" and base.startswith("python:3.11"), base
    assert sys.version_info[:2] == (3, 11), f"run with Python 3.11 like the image ({base}), not {sys.version}"
    root = Path(tempfile.mkdtemp(prefix="archive-image-"))
    env_dir, workdir = root / "venv", root / "workdir"
    workdir.mkdir()
    venv.create(env_dir, with_pip=True)
    env = {"PATH": f"{env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "VIRTUAL_ENV": str(env_dir)}
    cmd = health = None
    for kind, argument in steps[1:]:
        if kind == "ENV":
            pairs = re.findall(r'\S+=(?:"[^"]*"|\S+)', argument)
            env.update(dict(shlex.split(pair)[0].split("=", 1) for pair in pairs))
        elif kind == "WORKDIR":
            print(f"WORKDIR {argument} -> {workdir}")
        elif kind == "COPY":
            *sources, _ = argument.split()
            for source in sources:
                target = workdir / source
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy(REPO / source, target)
        elif kind == "RUN":
            if argument.startswith("useradd"):
                print(f"skipped: RUN {argument}")
                continue
            print(f"RUN {argument}", flush=True)
            t0 = time.monotonic()
            subprocess.run(["sh", "-c", argument], cwd=workdir, env=env, check=True)
            print(f"    {time.monotonic() - t0:.0f} s")
        elif kind == "CMD":
            cmd = exec_form(argument)
        elif kind == "HEALTHCHECK":
            health = exec_form(argument)
    assert cmd and health
    run_env = {**env, "ARCHIVE_PG_DSN": "postgresql://nobody@127.0.0.1:9/none", "ARCHIVE_S3_BUCKET": "example"}
    print(f"CMD {shlex.join(cmd)}", flush=True)
    server = subprocess.Popen(cmd, cwd=workdir, env=run_env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(health, cwd=workdir, env=run_env, capture_output=True).returncode != 0:
            assert server.poll() is None, f"code server exited with {server.returncode}"
            assert time.monotonic() < deadline, "HEALTHCHECK did not pass within 120 s"
            time.sleep(1)
        print(f"HEALTHCHECK {shlex.join(health)}: ok")
        probe = ("from dagster._grpc.client import DagsterGrpcClient\n"
                 "from dagster._serdes import deserialize_value\n"
                 "snap = DagsterGrpcClient(port=4000, host='127.0.0.1').list_repositories()\n"
                 "print(deserialize_value(snap).__class__.__name__)\n")
        out = subprocess.run([str(env_dir / "bin" / "python"), "-c", probe], env=run_env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == "ListRepositoriesResponse", out  # a load error comes back as SerializableErrorInfo
        print("code location loaded: archive_pipeline")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    print(f"image steps ok in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
