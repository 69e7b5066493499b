"""boto3 sessions that share botocore's loaded service models.

Every new boto3 session loads and parses the S3 service model (JSON, several MB) again: 0.1-0.25 s of CPU for
each Dagster step, sensor tick, schedule tick and command that builds a client, more than a small day's whole
archive costs (bench/backfill.py). The models are read-only data, so one botocore loader serves every session
of the process; each session keeps its own credentials, profile and configuration.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_LOCK = threading.Lock()


@functools.cache
def _shared_loader() -> Any:
    from botocore.loaders import create_loader

    return create_loader()


def new_session(profile_name: str | None = None) -> Any:
    """A new ``boto3.session.Session`` (``profile_name`` as boto3 takes it) over the process's shared model loader."""
    import boto3
    import botocore.session

    core = botocore.session.Session()
    loader = _shared_loader()
    core.register_component("data_loader", loader)
    with _LOCK:  # boto3 appends its own data directory to the loader's paths on every session: once is enough
        known = list(loader.search_paths)
        session = boto3.session.Session(botocore_session=core, profile_name=profile_name)
        if len(loader.search_paths) > len(known) and loader.search_paths[-1] in known:
            del loader.search_paths[len(known):]
    return session

