# The two commands of the README. Both install everything first (scripts/install.sh, idempotent).
VENV ?= .venv

.PHONY: install demo test lint

install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/llmrec demo

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
