# Two commands on a fresh machine:  make run  (install + the default search)  /  make test  (install + tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPACE ?= contrastive_balance

export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install browser postgres run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m tuneddml.search --space=$(SPACE)

# headless Chromium (Debian's package) for the test that loads the MLflow UI
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Debian's PostgreSQL binaries (initdb, pg_ctl, postgres) for the test that runs MLflow on PostgreSQL;
# the test starts and stops its own server (127.0.0.1, a free port), never the system's
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)

test: install browser postgres
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check tuneddml tests bench

clean:
	rm -rf $(VENV) .pytest_cache
