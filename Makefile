# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, run every notebook headless: executed notebooks in build/notebooks/,
#                 charts in build/*.png, a printed summary (walkit/story.py; `walkit demo` still shows a change stream)
#   make test   - create .venv, install, lint, install tar, zstd, age, chromium if missing (apt-get), run every test
#   make lab    - JupyterLab on notebooks/ (uses $MONGODB_URI when set, else each notebook starts the sandbox)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo lab test lint tools bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m walkit.lab.story --out build

lab: $(BIN)/.installed
	$(BIN)/jupyter lab notebooks/

lint: $(BIN)/.installed
	$(BIN)/ruff check walkit tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

tools:
	@sh scripts/ensure-tools.sh

test: lint tools
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_sandbox.py
	$(BIN)/python bench/bench_wal.py
	$(BIN)/python bench/bench_restore.py
	$(BIN)/python bench/bench_bundle.py
	$(BIN)/python bench/bench_simulate.py
	$(BIN)/python bench/bench_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
