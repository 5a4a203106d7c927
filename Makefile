# Every target makes its own .venv first (Python 3.11), so a fresh clone needs only `make`.
# `demo` installs what runs (the sidecar, the zero-code side, the example backend); `test` adds
# the test peers.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
SOURCES := -e ./instrumentation -e
RUNTIME := $(VENV)/.runtime
DEV := $(VENV)/.dev
BUGSINK := $(VENV)/.bugsink

.PHONY: demo demo-sentry test test-gateway run bench mutate lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(RUNTIME): pyproject.toml instrumentation/pyproject.toml | $(BIN)/python
	$(PIP) $(SOURCES) '.[instrument,example]'
	touch $@

$(BUGSINK): $(RUNTIME)
	$(PIP) $(SOURCES) '.[instrument,example,bugsink]'
	touch $@

$(DEV): $(RUNTIME)
	$(PIP) $(SOURCES) '.[instrument,example,dev]'
	touch $@

demo: $(RUNTIME)  ## the example backend, zero-code instrumented, and the sidecar, for ~30 s
	$(BIN)/python -m examples.demo

demo-sentry: $(BUGSINK)  ## the same, sending to a local Bugsink you can browse
	$(BIN)/python -m examples.demo --bugsink

test: $(DEV)  ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

test-gateway: $(DEV)  ## deploy/gateway on the real OpenTelemetry Collector (built with Go first)
	bash bench/otelcol/build.sh
	$(BIN)/pytest -m gateway tests/test_gateway.py

run: $(RUNTIME)  ## the sidecar in the foreground: make run [CONFIG=otel-config.yaml]
	$(BIN)/otel-sidecar run $(if $(CONFIG),--config $(CONFIG))

bench: $(DEV)  ## throughput, the app's cost, then the targets' table; figures in bench/RESULTS.md
	-bash bench/otelcol/build.sh  # the Collector peer (needs Go); without it, its row says so
	$(BIN)/python bench/throughput.py --pipeline basic
	$(BIN)/python bench/throughput.py --pipeline reference
	$(BIN)/python bench/throughput.py --pipeline forward
	$(BIN)/python bench/processors.py
	$(BIN)/python bench/app_overhead.py
	$(PIP) 'matplotlib>=3.8,<4'  # draws the scaling curves
	$(BIN)/python bench/curves.py
	$(BIN)/python bench/targets.py

mutate: $(DEV)  ## mutation testing (mutmut) of the pipeline, processors, exporter helper, admission
	$(PIP) 'mutmut>=3.3,<4'
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/python bench/mutation_score.py

format: $(DEV)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
