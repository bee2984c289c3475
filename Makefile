# saga-sidecar: `make run` starts the sidecar in front of the demo services; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv run test lint format clean bench profile soak chaos verify schema
all: lint test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: venv  ## start demo services + sidecar (embedded stores) and print curl examples
	@scripts/run-demo.sh

test: venv  ## the whole suite against real Redis, PostgreSQL, RabbitMQ and NATS
	@scripts/with-test-services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

soak: venv  ## 10 minutes of steady mixed load: memory, descriptors and errors must stay flat (SOAK_ARGS)
	@scripts/with-test-services.sh $(BIN)/python scripts/soak.py $(SOAK_ARGS)

chaos: venv  ## fault-injection and hostile-input suites, 20x the examples and load phases
	@SAGA_SIDECAR_CHAOS=20 scripts/with-test-services.sh $(BIN)/python -m pytest \
		tests/reliability tests/hostile --timeout=1800 $(PYTEST_ARGS)

bench: venv  ## throughput/latency table vs. baselines (needs wrk; BENCH_QUICK=1 for ~2 min)
	@bench/prereqs.sh
	@scripts/with-test-services.sh $(BIN)/python -m bench.run

profile: venv  ## py-spy flame graph of the sidecar under load (PROFILE_SCENARIO=get|post|miss|replay|saga)
	@bench/prereqs.sh
	@scripts/with-test-services.sh $(BIN)/python -m bench.profile

verify:  ## model-check the idempotency and saga-lease protocols (models/*.pml) with spin
	@scripts/verify-models.sh

schema: venv  ## regenerate docs/schema/config.json and saga.json from the models (commit them)
	@mkdir -p docs/schema
	$(BIN)/saga-sidecar schema config > docs/schema/config.json
	$(BIN)/saga-sidecar schema saga > docs/schema/saga.json

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy proxy saga_runner yamlconfig httpsemantics

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
