# Two commands set everything up on a fresh machine:
#   make demo   - installs the project into .venv and runs the demo pipeline (local Prefect, MLflow on SQLite, CPU)
#   make test   - installs the project into .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch keeps the default install light; for a GPU: make TORCH=torch demo
TORCH ?= torch==2.13.0
# Offline, ../shared/data and ../shared/t5-small serve as the data and model mirrors when they exist.
export ELMREC_MIRROR ?= $(if $(wildcard ../shared/data/.),$(abspath ../shared/data))
export ELMREC_MODEL_MIRROR ?= $(if $(wildcard ../shared/t5-small/.),$(abspath ../shared))
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_EXTRA_LOGGERS ?= elmrec
# The library's log lines outside a flow run (tests, notebooks) stay local, without a warning each.
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore
# Passive OpenMP waits: spinning threads slow small ops badly on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)"
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/elmrec run --preset demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) work
