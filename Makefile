# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, start the sandbox, watch a small workload
#   make test   - create .venv, install, lint, install tar/zstd/age if missing (apt-get), run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint tools bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/walkit demo

lint: $(BIN)/.installed
	$(BIN)/ruff check walkit tests bench

tools:
	@sh scripts/ensure-tools.sh

test: lint tools
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_sandbox.py
	$(BIN)/python bench/bench_wal.py
	$(BIN)/python bench/bench_restore.py
	$(BIN)/python bench/bench_bundle.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
