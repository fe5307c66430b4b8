# Two commands on a fresh machine:  make run  (install + the default search)  /  make test  (install + tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPACE ?= contrastive_balance

export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m tuneddml.search --space=$(SPACE)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check tuneddml tests bench

clean:
	rm -rf $(VENV) .pytest_cache
