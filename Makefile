# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install the project into it. constraints/cpu.txt pins the
# CPU build of torch; on a GPU machine install with `pip install -e '.[gpu]'` instead.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./embedscale-data

.PHONY: install demo lint test bench docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[dev,notebooks]'
	touch $@

demo: install
	$(BIN)/embedscale run samples/corpus --table sample --mode overwrite --data-dir $(DATA_DIR)
	$(BIN)/embedscale search sample "how do I split text into token-sized chunks?" -k 3 --data-dir $(DATA_DIR)

# The checks that read the code without running it: lint and format (ruff), the architecture's
# import contracts (import-linter, pyproject.toml) and types (mypy). The docs are built with
# `mkdocs build --strict` by tests/test_docs.py, which also checks what the pages name.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The project's own modules byte-compiled first (only those changed since the last run): where
# PYTHONDONTWRITEBYTECODE is set, as on this project's machines, no process would write them,
# and each of the suite's ~80 Python processes compiled them from source (~0.3 s of CPU each).
test: lint
	$(BIN)/python -m compileall -q -l embedscale
	$(BIN)/python -m compileall -q engine jobs api tests benchmarks
	$(BIN)/python -m pytest

docs: install
	$(BIN)/mkdocs serve

bench: install
	$(BIN)/python benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) $(DATA_DIR)
