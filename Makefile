# Two commands: `make run` starts everything, `make test` proves it works. Both install the
# locked environment (uv.lock, every package pinned with its hashes) into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# uv installs from the lock; it is itself pinned and bootstrapped with pip into .tools.
UV_VERSION := 0.13.9
UV := .tools/bin/uv
EXTRAS := --extra dev --extra embedded --extra django --extra docs --extra otel
SYNC = UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --quiet --python $(PYTHON) $(EXTRAS)
# pytest-xdist: the live tests mostly wait on real processes, so three run at once on two cores;
# worksteal hands a finished worker the others' queued tests (main pass 400 s -> 333 s: with the
# fault tests together in tests/faults, plain load balancing left one worker with the tail).
PARALLEL ?= -n 3 --dist worksteal
# The main pass alone in its stage: a CI run used about one core of two on average at -n 3
# (its tests mostly wait on real processes), so it runs four at once.
MAIN_PARALLEL ?= -n 4 --dist worksteal

.PHONY: run test test-fast test-latest test-contract lock sync lint format schema docs bench \
	bench-dev reliability worker beat api clean

$(UV):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "JobQL needs Python 3.11+"'
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Every target below runs this first: a no-op in 0.1 s when .venv matches the lock, a fresh
# .venv when PYTHON names another interpreter. NO_SYNC=1 uses the environment as it is (the
# tests' own `make run`, which must not touch the environment running them).
sync: $(UV)
	$(if $(NO_SYNC),,$(SYNC))

lock: $(UV)  ## re-resolve uv.lock against the newest releases the ranges in pyproject.toml allow
	$(UV) lock --upgrade

run: sync  ## Valkey (unless REDIS_URL is set), a worker, beat and the API on :$(PORT)
	$(BIN)/jobql dev --port $(PORT)

# The passes of `make test`. Each backend pass selects its tests by marker (tests/conftest.py):
# `contract` the GraphQL contract, `rabbitmq` / `postgres` / `django_results` the tests that
# hold whatever broker or result backend is configured.
DJANGO_RESULTS := DJANGO_SETTINGS_MODULE=exampleproject.settings JOBQL_RESULT_BACKEND_URL=django-db \
	PYTHONPATH=$(CURDIR)/examples/django

# The contract pass may run on another CPython (CI: the newest here, the rest on the lowest).
CONTRACT_PYTHON ?= $(PYTHON)
CONTRACT_VENV ?= $(if $(filter $(CONTRACT_PYTHON),$(PYTHON)),$(VENV),.venv-contract)
# Passes that share no server run side by side; each prints its output when it ends.
# Stage 1: the main pass (the longest, about six minutes) in one slot; in the other, one after
# another, lint, the docs, the dashboard's rebuild check, the contract pass's environment and
# bytecode (otherwise every process of that pass compiles the same modules at once), then the
# short passes (browser, PostgreSQL, the Django example), which used to wait for stage 2 while
# that slot stood idle for four minutes. Stage 2: the three long backend passes, the
# contract's first (four at a time made an API take over 30 s to start).
SIDE_BY_SIDE := $(MAKE) --no-print-directory --output-sync=target

test: sync  ## lint, type-check, build the docs, the tests against real services: fast paths on and off; RabbitMQ; results in PostgreSQL and Django; the Django example; pages in a browser
	@echo "make test: stage 1 (main pass; lint, docs, browser, PostgreSQL, Django example) from $$(date +%T)"
	$(SIDE_BY_SIDE) -j2 test-main stage-1-rest
	@echo "make test: stage 2 (contract, RabbitMQ, Django results) from $$(date +%T)"
	$(SIDE_BY_SIDE) -j3 test-contract-pass test-rabbitmq test-django-results

# One after another, in this order, beside the main pass: -j1 keeps this sub-make off the
# shared job slots (sharing them, it took the main pass's slot for half a minute). Listed as
# goals of one parallel make instead, they started in an order of make's choosing: the main
# pass started last, after nearly two minutes.
stage-1-rest:
	$(MAKE) -j1 --no-print-directory lint docs dashboard-check warm-contract test-browser \
		test-postgres test-django-example

.PHONY: stage-1-rest bench-harness dashboard dashboard-check test-browser test-main test-contract-pass test-django-results test-django-example test-rabbitmq test-postgres \
	warm-contract
test-main: sync
	$(BIN)/python -m pytest $(MAIN_PARALLEL) --durations=25 --deselect $(HARNESS_TEST) -m "not browser"

# The bench harness end to end (a minute or more of one worker, mostly waiting on its
# stacks): out of make test for CI's 10-minute budget, run by `make bench-harness`.
HARNESS_TEST := tests/live/test_bench.py::test_the_harness_measures_every_figure_against_its_baseline
bench-harness: sync  ## the benchmark harness at tiny sizes, end to end (a minute or two)
	$(BIN)/python -m pytest $(HARNESS_TEST)

warm-contract:
	$(MAKE) --no-print-directory sync PYTHON=$(CONTRACT_PYTHON) VENV=$(CONTRACT_VENV)
	-$(CONTRACT_VENV)/bin/python -m compileall -q -j 1 $(CONTRACT_VENV)/lib gql tasks devtools tests >/dev/null

test-contract-pass:
	$(MAKE) --no-print-directory test-contract PYTHON=$(CONTRACT_PYTHON) VENV=$(CONTRACT_VENV)

test-contract: sync  ## the contract and live tests with every fast path off (stock library behaviour)
	JOBQL_FAST_PATHS=false $(BIN)/python -m pytest $(PARALLEL) -m contract

test-django-results: sync
	$(DJANGO_RESULTS) $(BIN)/python -m pytest $(PARALLEL) -m django_results

test-django-example: sync
	$(MAKE) --no-print-directory -C examples/django test

# The dashboard's built files (committed, so a service needs no Node) are what its source and
# lock build: rebuilt into var/ (never over the served files, which tests may be reading) and
# compared file by file.
DASHBOARD_BUILT := gql/http/static/dashboard
dashboard: ## rebuild the dashboard (dashboard/) into gql/http/static/dashboard from its lock
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

dashboard-check:
	rm -rf var/dashboard-rebuilt
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error && \
		npm run --silent build -- --outDir ../var/dashboard-rebuilt --emptyOutDir
	diff -r $(DASHBOARD_BUILT) var/dashboard-rebuilt || { echo "dashboard-check: the built \
	dashboard differs from its source: run make dashboard and commit the result" >&2; exit 1; }

# The pages in a real browser (GraphiQL, the dashboard), one at a time beside the main pass.
test-browser: sync
	$(BIN)/python -m pytest -m browser

test-rabbitmq: sync
	JOBQL_TEST_BROKER=rabbitmq $(BIN)/python -m pytest $(PARALLEL) -m rabbitmq

test-postgres: sync
	JOBQL_TEST_RESULTS=postgres $(BIN)/python -m pytest $(PARALLEL) -m postgres

test-latest: $(UV)  ## the tests on the newest releases of every dependency, ignoring the lock (reports; never gates CI)
	rm -rf .venv-latest
	$(UV) venv --quiet --python $(PYTHON) .venv-latest
	$(UV) pip install --quiet --python .venv-latest/bin/python -e '.[dev,embedded,django]'
	$(UV) pip list --python .venv-latest/bin/python --outdated 2>/dev/null || true
	$(UV) pip freeze --python .venv-latest/bin/python | \
		grep -iE '^(strawberry-graphql|graphql-core|uvicorn|kombu|celery|redis|mypy)==' || true
	-.venv-latest/bin/mypy gql tasks devtools
	.venv-latest/bin/python -m pytest $(PARALLEL)

test-fast: sync  ## the in-process tests only (no worker, no API): seconds, not minutes
	$(BIN)/python -m pytest -m "not slow"

lint: sync
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gql tasks devtools

format: sync
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schema: sync  ## rewrite schema.graphql from the code
	$(BIN)/jobql export-schema > schema.graphql

# The documentation site (mkdocs.yml, docs/) in var/site, git-ignored; offline, no plugin
# fetches anything. Strict: a broken link or anchor, or a page missing from the nav, fails.
docs: sync  ## build the documentation site into var/site
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # without Material's end-of-life banner

# The fault, load and bad-input scenarios (docs/operating/guarantees.md); `make test` runs each in
# its smallest form, this runs them at full size and writes the ledger: the fault files, the
# Redis Cluster failover, then the RabbitMQ reconnect (only on a RabbitMQ broker). The Django
# beats' lease needs the example project's database and Django. Each writes a ledger of its own.
RELIABILITY_TESTS := tests/faults \
	tests/live/test_cluster.py::test_a_primary_killed_under_load_fails_over_to_its_replica_and_nothing_is_lost

reliability: sync  ## every fault scenario at full size; writes bench/results/reliability*.md
	JOBQL_RELIABILITY=full JOBQL_LEDGER_OUT=bench/results/reliability.md \
		$(BIN)/python -m pytest $(RELIABILITY_TESTS)
	JOBQL_RELIABILITY=full JOBQL_TEST_BROKER=rabbitmq \
		JOBQL_LEDGER_OUT=bench/results/reliability-rabbitmq.md \
		$(BIN)/python -m pytest tests/faults/test_rabbitmq_reconnect.py
	cd examples/django && JOBQL_RELIABILITY=full \
		JOBQL_LEDGER_OUT=$(CURDIR)/bench/results/reliability-django.md \
		$(abspath $(BIN))/python -m pytest tests/test_django_beats.py

# On another interpreter, in an environment of its own made from the same lock:
# `make bench PYTHON=<python3.13> VENV=.venv-3.13` writes bench/results/latest-py3.13.*.
bench: sync  ## every figure against its baseline, production profile; bench/results/latest.*
	$(BIN)/python -m bench.run

bench-dev: sync  ## the same in the development profile (no auth, text logs); latest-development.*
	$(BIN)/python -m bench.run --profile development

worker: sync  ## production worker on the configured queues (needs REDIS_URL)
	$(BIN)/jobql worker

beat: sync  ## production Celery beat running the periodic schedules (needs REDIS_URL)
	$(BIN)/jobql beat

api: sync  ## production API (needs REDIS_URL)
	$(BIN)/jobql api --host 0.0.0.0 --port $(PORT) --workers 4

clean:
	rm -rf $(VENV) .venv-latest .tools .mypy_cache .ruff_cache .pytest_cache
