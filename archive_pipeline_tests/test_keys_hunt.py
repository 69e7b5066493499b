"""Key-template hunt (sixth): what one table-day's cleanup, listing and generation numbering may touch.

A key template without ``{ext}`` (file names with no dot, e.g. ``{prefix}/{date}/{table}``) renders
``<dir>/ev`` for table ``ev``; its generations are ``<dir>/ev.g<N>``. A second table named ``ev.g2`` (a
quoted identifier) renders exactly ``<dir>/ev.g2``: the load-time check wanted a dot after the
generation number, accepted the configuration, and then table ``ev``'s runs took the other table's
archive for one of their own generations (deleted it as unreferenced, aborted its uploads, numbered
past it). Such a configuration is now refused at load.
"""

from __future__ import annotations

import pytest

from archive_pipeline.core.config import ArchiveConfig, ConfigError, parse_config

TEMPLATE = "{prefix}/{date}/{table}"  # no {ext}: file names without a dot


def test_a_key_that_looks_like_another_keys_generation_is_refused_at_load():
    tables = [{"name": "s.ev", "day_column": "at", "start_date": "2024-03-01", "key_template": TEMPLATE},
              {"name": "s.ev.g2", "day_column": "at", "start_date": "2024-03-01", "key_template": TEMPLATE}]
    with pytest.raises(ConfigError, match=r"looks like a later generation of another key"):
        parse_config({"tables": tables}, "tables.yaml")


def test_keys_without_an_extension_still_load():
    ArchiveConfig(tables=[{"name": "s.ev", "day_column": "at", "start_date": "2024-03-01", "key_template": TEMPLATE},
                          {"name": "s.events_archive", "day_column": "at", "start_date": "2024-03-01",
                           "key_template": TEMPLATE}])
