# Two commands for a fresh machine (see README.md):
#   make demo     set everything up and archive the sample days through Dagster (UI=1: keep the UI up)
#   make test     run the whole test suite
# and one for the numbers:
#   make bench    benchmark archiving, restoring and verifying against PostgreSQL's own COPY
#
# The first use creates $(VENV) and installs the project into it (again whenever pyproject.toml
# changes). INSTALL=0 uses an existing environment as it is: make test VENV=/path/to/venv INSTALL=0

PYTHON  ?= python3
VENV    ?= .venv
INSTALL ?= 1
# test processes (pytest-xdist): each starts its own PostgreSQL cluster and S3 server and takes whole
# test files, so module-scoped fixtures (the demo started for real) run once; 0: all in one process
TEST_WORKERS ?= 2
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SETUP   := $(if $(filter 1,$(INSTALL)),$(STAMP))

.PHONY: demo test bench install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(SETUP)
	$(PY) -m archive_pipeline.local.demo $(if $(filter 1,$(UI)),--ui) $(ARGS)

test: $(SETUP)
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

bench: $(SETUP)
	$(PY) bench/run.py $(ARGS)
	$(PY) bench/restore.py $(ARGS)
	$(PY) bench/wide_parquet.py
