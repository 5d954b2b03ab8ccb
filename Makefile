# Two entry points for a fresh machine (Python 3.11): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test lab

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup  ## the three methods on the built-in data set, with Table 2 (about 10-15 min on 2 CPU cores)
	$(PY) -m picie_lib compare --preset demo --out $(DEMO_OUT)

test: setup  ## lint, then the test suite (CPU)
	$(VENV)/bin/ruff check picie_lib tests
	$(PY) -m pytest

lab: setup  ## JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab notebooks/
