"""The Dagster layer: thin and declarative over archive_pipeline.core."""
