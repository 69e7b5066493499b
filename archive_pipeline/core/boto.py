"""boto3 sessions that share botocore's loaded service models.

Every new boto3 session loads and parses the S3 service model (JSON, several MB) again: 0.1-0.25 s of CPU for
each Dagster step, sensor tick, schedule tick and command that builds a client, more than a small day's whole
archive costs (bench/backfill.py). The models are read-only data, so one botocore loader serves every session
of the process; each session keeps its own credentials, profile and configuration.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from typing import Any

_LOCK = threading.Lock()

PROFILE_VARS = ("AWS_DEFAULT_PROFILE", "AWS_PROFILE")  # where botocore reads the profile, the first one set winning


def env_profile(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, profile) of the profile botocore uses from ``env``, or None. A blank variable is unset, as
    every other variable of the archive's is (``AWS_PROFILE:`` in a compose file whose host has none): botocore
    took it for the profile named '', and every client failed to build, explicit keys or not."""
    for name in PROFILE_VARS:
        if (env.get(name) or "").strip():
            return name, env[name]
    return None


def _without_blank_profile() -> dict[str, tuple] | None:
    """botocore's ``session_vars`` reading the profile from the variables of :data:`PROFILE_VARS` that are not
    blank, or None (botocore's own reading) when none is set blank."""
    blank = [name for name in PROFILE_VARS if name in os.environ and not os.environ[name].strip()]
    if not blank:
        return None
    return {"profile": (None, [name for name in PROFILE_VARS if name not in blank], None, None)}


@functools.cache
def _shared_loader() -> Any:
    from botocore.loaders import create_loader

    return create_loader()


def new_session(profile_name: str | None = None) -> Any:
    """A new ``boto3.session.Session`` (``profile_name`` as boto3 takes it) over the process's shared model loader;
    a blank ``profile_name`` or profile variable is none (see :func:`env_profile`)."""
    import boto3
    import botocore.session

    profile_name = profile_name if profile_name and profile_name.strip() else None
    core = botocore.session.Session(session_vars=_without_blank_profile())
    loader = _shared_loader()
    core.register_component("data_loader", loader)
    with _LOCK:  # boto3 appends its own data directory to the loader's paths on every session: once is enough
        known = list(loader.search_paths)
        session = boto3.session.Session(botocore_session=core, profile_name=profile_name)
        if len(loader.search_paths) > len(known) and loader.search_paths[-1] in known:
            del loader.search_paths[len(known):]
    return session

