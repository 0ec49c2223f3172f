# The two entry points of the README: `make demo` and `make test`. Each creates the virtual environment,
# installs the pinned dependencies (constraints.txt) and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,stream]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m engine demo

test: $(STAMP)
	$(PY) -m ruff check engine htkernels tests benchmarks
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) demo_out build *.egg-info
