# Every target makes its own .venv first (Python 3.11), so a fresh clone needs only `make`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test run bench lint format clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(READY)  ## the sidecar with realistic traffic for ~20 s, written to ./sidecar-out/
	$(BIN)/python examples/demo.py

test: $(READY)  ## lint, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

run: $(READY)  ## the sidecar in the foreground: make run [CONFIG=otel-config.yaml]
	$(BIN)/otel-sidecar run $(if $(CONFIG),--config $(CONFIG))

bench: $(READY)  ## throughput against a bare gRPC ceiling; figures go in bench/RESULTS.md
	$(BIN)/python bench/throughput.py --pipeline basic
	$(BIN)/python bench/throughput.py --pipeline reference
	$(BIN)/python bench/throughput.py --pipeline forward
	$(BIN)/python bench/processors.py

format: $(READY)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) sidecar-out .pytest_cache .ruff_cache
