# ssm-gd: `make test` and `make reproduce` work on a fresh machine with Python >= 3.10 and pip.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test reproduce lint clean

install: $(STAMP)

# Re-runs only when the package metadata changes (the install is editable).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	JAX_PLATFORMS=cpu $(PY) -m pytest

# QUICK=1: every experiment at smoke size.
reproduce: install
	$(PY) -m experiments.linear --out results/linear --no-progress $(if $(QUICK),--quick)
	$(PY) -m experiments.linear --out results/linear_scalar --d-out 1 --no-progress $(if $(QUICK),--quick)
	$(PY) -m experiments.linear --out results/linear_constructed --d-out 1 --layout constructed --no-progress $(if $(QUICK),--quick)
	$(PY) -m experiments.plateau --out results/plateau $(if $(QUICK),--quick)
	$(PY) -m experiments.construction --out results/construction $(if $(QUICK),--max-steps 2 --batch 64)
	$(PY) -m experiments.report --results results

lint: install
	$(VENV)/bin/ruff check ssm_gd experiments tests
	$(VENV)/bin/ruff format --check ssm_gd experiments tests

clean:
	rm -rf $(VENV) results .pytest_cache
