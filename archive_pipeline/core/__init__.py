"""The archiver itself: no Dagster import (archive_pipeline_tests/test_layers.py checks it)."""
