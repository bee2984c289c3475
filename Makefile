# saga-sidecar: `make run` starts the sidecar in front of the demo services; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv run test lint format clean bench profile
all: lint test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: venv  ## start demo services + sidecar (embedded stores) and print curl examples
	@scripts/run-demo.sh

test: venv  ## the whole suite against real Redis and PostgreSQL
	@scripts/with-test-services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv  ## throughput/latency table vs. baselines (needs wrk; BENCH_QUICK=1 for ~2 min)
	@bench/prereqs.sh
	@scripts/with-test-services.sh $(BIN)/python -m bench.run

profile: venv  ## py-spy flame graph of the sidecar under load (PROFILE_SCENARIO=get|post|miss|replay|saga)
	@bench/prereqs.sh
	@scripts/with-test-services.sh $(BIN)/python -m bench.profile

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy proxy saga_runner

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
