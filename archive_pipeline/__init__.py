"""archive_pipeline: archive date-partitioned PostgreSQL tables to S3-compatible storage with Dagster."""

__version__ = "0.1.0"
