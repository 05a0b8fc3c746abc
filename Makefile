# The front door: `make demo` sets up and runs the gateway on the embedded default;
# `make test` runs every check and test. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')

.PHONY: setup lock proto proto-check demo serve web test lint bench clean kafka-jars cluster cluster-down

setup: $(STAMP)

# Exactly the pinned set, each file checked against its hash (requirements-dev.lock: the runtime
# dependencies and the tools), then the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Re-pins both lock files from pyproject.toml, keeping every pin that still fits (uv prefers what
# the lock holds; UPGRADE=1 takes the newest); uv runs from a venv of its own, not the project's.
UV_VENV := .uv
lock:
	test -x $(UV_VENV)/bin/uv || ($(PYTHON) -m venv $(UV_VENV) && $(UV_VENV)/bin/pip install --quiet uv)
	$(UV_VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes \
	  --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -q -o requirements-dev.lock
	$(UV_VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes \
	  --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -q -o requirements.lock

# Regenerates the Python code for every .proto; the output is committed and tests/test_proto_fresh.py
# fails when it differs from what this target would write.
proto: $(STAMP)
	$(BIN)/python proto/generate.py proto

demo: $(STAMP)
	$(BIN)/python -m simulators.demo $(DEMO_ARGS)

serve: $(STAMP)
	$(BIN)/ofd serve

# The cabinet and the public receipt check on http://127.0.0.1:7781 (README, "The cabinet").
web: $(STAMP)
	$(BIN)/ofd web

# The production topology on this machine (root: network namespaces): three Kafka brokers,
# PostgreSQL with a synchronous replica, gateways behind HAProxy, a loader, Mosquitto. It stays in
# front until Ctrl-C; `make cluster-down` stops one left running and cleans up after a killed one.
cluster: $(STAMP)
	$(BIN)/python -m simulators.stage.cluster up

cluster-down: $(STAMP)
	$(BIN)/python -m simulators.stage.cluster down

# Apache Kafka's server jars from Maven Central into ~/.cache/ofd-gateway/kafka/<version>
# (OFD_KAFKA_HOME replaces ~/.cache/ofd-gateway/kafka); the tests fetch them on first use too.
kafka-jars: $(STAMP)
	$(BIN)/python -m simulators.stage.kafka fetch

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# Gateway against its echo floor, its scale curve over fleet sizes (local journal, then the
# production path: Apache Kafka plus PostgreSQL), then each layer against its own floor, the
# cost model built from them, the warehouse loader and the KGD forwarder (bench-results/*.json);
# then the capacity model for 1.2 million registers from all of these (it also runs a gateway
# briefly to measure bytes per receipt); last, the headline numbers of them all
# (bench-results/summary.json).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.scale
	$(BIN)/python -m benchmarks.scale --journal kafka
	$(BIN)/python -m benchmarks.layers
	$(BIN)/python -m benchmarks.kafka_producer
	$(BIN)/python -m benchmarks.cost_model
	$(BIN)/python -m benchmarks.warehouse
	$(BIN)/python -m benchmarks.kgd_forwarding
	$(BIN)/python -m benchmarks.cabinet_check
	$(BIN)/python -m benchmarks.capacity
	$(BIN)/python -m benchmarks.summary

clean:
	rm -rf $(VENV) $(UV_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .ofd-demo bench-results
