# The two commands of the README: `make demo` and `make test`.
# Each creates or refreshes the virtualenv at .venv/ and then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo test layers venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(PIP_CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(PIP_CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recfm demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest

# The import contract alone ([tool.importlinter] in pyproject.toml); `make test` runs it too
# (tests/test_layers.py).
layers: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) demo-output .pytest_cache .import_linter_cache
