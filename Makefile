# The two commands of the README. Both install everything first (scripts/install.sh, idempotent).
VENV ?= .venv
TEST_WORKERS ?= 2  # pytest-xdist processes (tests pin torch to one thread each); 0 = one process

.PHONY: install demo test lint lock

install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/llmrec demo

test: install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS)

# requirements.lock from pyproject.toml, keeping its versions (UPGRADE=1: the newest; see scripts/lock.sh)
lock:
	bash scripts/lock.sh

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
