# Two entry points for a fresh machine (Python 3.11): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test test-fast lab

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup  ## the notebooks, executed: the three methods on the built-in data set, report.md (about 15 min, 2 CPU cores)
	$(PY) -m picie_lib run --preset demo --out $(DEMO_OUT)

test: setup  ## lint, every test, then every notebook under nbval on the smoke preset (CPU; its budget: tests/budget.py)
	@echo "make test runs every test (about 40 min on 2 cores, docs/tests.md); make test-fast runs the unit tier in under a minute"
	$(VENV)/bin/ruff check picie_lib tests notebooks benchmarks experiments
	$(PY) -m pytest --durations=40
	$(PY) -m pytest --nbval-lax --nbval-current-env notebooks/

test-fast: setup  ## the unit tier: pytest -m "not slow" (under a minute; no process started, no model trained)
	$(PY) -m pytest -m "not slow"

# `make lab RUN=outputs/demo-...` opens that run's executed notebooks, copied into its lab/ folder; `make lab` alone
# a scratch copy in outputs/lab/. JupyterLab's root is that copy: its autosave never touches the tracked notebooks.
RUN ?=

lab: setup  ## JupyterLab on working copies (RUN=DIR: the run in DIR, its executed notebooks; else a scratch copy)
	$(PY) -m picie_lib lab $(RUN)
