# The archive_pipeline code location: a Dagster code server on port 4000, for a webserver and daemon
# that run elsewhere (workspace: docs/workspace.production.yaml; instance: docs/dagster.production.yaml).
#
#   docker build -t archive-pipeline .
#   docker run -p 4000:4000 -e ARCHIVE_PG_DSN=... -e ARCHIVE_S3_BUCKET=... archive-pipeline
#
# No settings or secrets are baked in: connection settings come from the environment at run time
# (README, "Configuration"); the table list is ./archive_tables.yaml unless ARCHIVE_PIPELINE_CONFIG
# points elsewhere (mount your own file, or build FROM this image and COPY it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/archive_pipeline
# Every dependency ships manylinux wheels (psycopg, psycopg2, pyarrow, adbc, zstandard): no compiler.
COPY pyproject.toml README.md ./
COPY archive_pipeline ./archive_pipeline
RUN pip install .
COPY archive_tables.yaml ./

# Run as an unprivileged user with a writable home (Dagster keeps small state files under ~/.dagster).
# Archives are staged in $TMPDIR (default /tmp) before upload: give the container enough space there
# for the largest day (or point ArchiveStoreResource.temp_dir at a volume).
RUN useradd --system --uid 10001 --create-home --home-dir /home/archive archive
USER archive

EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
CMD ["dagster", "code-server", "start", "-m", "archive_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000", "--location-name", "archive_pipeline"]
