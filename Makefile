# Every target that needs Python creates the venv under .venv first (make install).
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint fmt demo example-aiohttp example-starlette example-agent bench bench-full chaos pg clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

EXAMPLES_STAMP := $(VENV)/.installed-examples

$(EXAMPLES_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,examples,pydantic-ai]'
	touch $(EXAMPLES_STAMP)

install: $(STAMP)

test: $(STAMP)
	scripts/ensure-chromium
	scripts/ensure-pgbouncer
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Run as root, the embedded Postgres runs as another user; the demo lets it add search
# permission to directories above ./.tidebase it cannot enter (see README, Security).
demo: $(STAMP)
	TIDEBASE_EMBEDDED_CHMOD=1 $(PY) -m examples.report.demo

# The report workflow behind web routes, with a worker in the same process, on
# http://127.0.0.1:$(EXAMPLE_PORT) (see examples/aiohttp_app/README.md). Ctrl-C stops it.
EXAMPLE_PORT ?= 8000

example-aiohttp: $(STAMP)
	$(PY) -m examples.aiohttp_app --port $(EXAMPLE_PORT)

example-starlette: $(EXAMPLES_STAMP)
	$(PY) -m examples.starlette_app --port $(EXAMPLE_PORT)

# The durable research agent (Pydantic AI) with its page on http://127.0.0.1:$(EXAMPLE_PORT):
# a scripted model by default, a real one with OPENAI_API_KEY or ANTHROPIC_API_KEY set
# (see examples/agent/README.md). A worker runs in the same process; Ctrl-C stops it.
example-agent: $(EXAMPLES_STAMP)
	$(PY) -m examples.agent --port $(EXAMPLE_PORT)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

bench-full: $(BENCH_STAMP)
	$(PY) -m benchmarks --full

# The long chaos run: a minute of SIGKILLed workers, repeated connection cuts, and real
# restarts of the local Postgres cluster (it waits for other sessions to end first).
chaos: $(STAMP)
	$(PY) -m tests.chaos --long

pg: $(STAMP)
	$(PY) -m tidebase_async.cli pg

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
