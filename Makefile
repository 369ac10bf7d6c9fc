# ssm-gd: `make test` and `make reproduce` work on a fresh machine with Python >= 3.11 and pip.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test reproduce reproduce-general device-check lint clean

install: $(STAMP)

# Re-runs only when the package metadata changes (the install is editable).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	JAX_PLATFORMS=cpu $(PY) -m pytest

# Every experiment, then results/REPORT.md (experiments/reproduce.py); QUICK=1: a small size, in
# results/quick/ (never over the committed results).
reproduce: install
	$(PY) -m experiments.reproduce $(if $(QUICK),--quick)

# MQAR, ListOps and language modelling over every mixer, then results/REPORT-general.md
# (experiments/general.py); QUICK=1: a small size, in results/quick/; ACCELERATOR=1: the published
# sizes (GPU/TPU).
reproduce-general: install
	$(PY) -m experiments.general $(if $(QUICK),--quick)$(if $(ACCELERATOR),--accelerator)

# The accelerator check (experiments/device_check.py): backend, the backend-dependent tests, the
# mixers' benchmark in float32 and bfloat16, the linear experiment's time to GD level, peak memory;
# writes results/bench/<device>.json. QUICK=1: a smoke size (the CPU).
device-check: install
	$(PY) -m experiments.device_check $(if $(QUICK),--quick)

lint: install
	$(VENV)/bin/ruff check ssm_gd experiments tests
	$(VENV)/bin/ruff format --check ssm_gd experiments tests

clean:
	rm -rf $(VENV) results .pytest_cache
