# CampusHub Realtime: `make run` serves on the embedded default, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-py test-js lint fmt typecheck check migrate revision token cluster up down bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## serve on 0.0.0.0:8889 (embedded SQLite + in-process bus unless DATABASE_URL/REDIS_URL)
	@if [ -n "$$DATABASE_URL" ]; then $(PY) -m app migrate; fi
	$(PY) -m app serve

test: test-py test-js  ## the whole suite

test-py: $(STAMP)
	PYTHONASYNCIODEBUG=0 $(PY) -m pytest $(PYTEST_ARGS)

test-js:
	@if command -v node >/dev/null 2>&1; then node --test tests/js/ tests/asyncapi/; \
	elif [ "$$CI" = "true" ]; then echo "node is required for the SDK tests under CI" >&2; exit 1; \
	else echo "SKIPPED: SDK tests (node not found)"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy app

check: lint typecheck

migrate: $(STAMP)  ## alembic upgrade head on DATABASE_URL (or the embedded SQLite file)
	$(PY) -m app migrate

revision: $(STAMP)  ## make revision m="add things"
	$(VENV)/bin/alembic revision -m "$(m)"

token: $(STAMP)  ## make token USER=alice [NAME=Alice] [ROLE=service]
	@if [ "$(origin USER)" != "command line" ]; then \
		echo "usage: make token USER=alice [NAME=Alice] [ROLE=service]" >&2; exit 2; fi
	@$(PY) -m app token $(USER) $(if $(NAME),--name "$(NAME)") $(if $(ROLE),--role $(ROLE))

bench: $(STAMP)  ## quick benchmark run (< 3 min) against local Postgres + Redis; results in bench/results/
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py --quick --no-docs

bench-full: $(STAMP)  ## every scenario, 3 repeats; regenerates docs/BENCHMARKS.md and docs/bench/*.png
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache campushub.db campushub.db-*

cluster: $(STAMP)  ## two instances + nginx on :8889 against local Postgres and Redis (no Docker)
	$(PY) scripts/cluster.py

up:  ## docker compose cluster on :8889
	docker compose up --build

down:
	docker compose down
