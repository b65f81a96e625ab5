# The two commands of the README. Both install everything first (scripts/install.sh, idempotent).
VENV ?= .venv
TEST_WORKERS ?= 2  # pytest-xdist processes (tests pin torch to one thread each); 0 = one process

.PHONY: install demo test lint lock

install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/llmrec demo

test: install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25

# requirements.lock from pyproject.toml, keeping its versions (UPGRADE=1: the newest; see scripts/lock.sh)
lock:
	bash scripts/lock.sh

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

# The documentation site (mkdocs.yml, docs/): built offline and strict (a warning, a broken link or a public
# name without a docstring fails it) into site/; docs-serve rebuilds it on every edit at http://127.0.0.1:8000
.PHONY: docs docs-serve

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# The wheel in a fresh venv from the registries alone (minutes): build, install, assets, a tiny pipeline.
.PHONY: wheel-test
wheel-test: install
	LLMREC_WHEEL_TEST=1 $(VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/test_wheel.py

# The service held by 256 concurrent clients for 60 s (tests/test_soak.py; a 10-minute memory run:
# llmrec experiments soak RUN --seconds 600 --warmup 60, docs/tutorials/service-in-production.md).
.PHONY: soak
soak: install
	$(VENV)/bin/python -m pytest -q -s -m soak -p no:cacheprovider tests/test_soak.py

# The GPU check (docs/how-to/gpu-check.md): on a machine with one CUDA GPU, from this folder alone and without
# network (random-weight models, a tokenizer trained on the spot); at most ~8 minutes on an H100. Its CPU parts
# run in `make test`. The figures and each part's outcome: $(GPU_CHECK_OUT)/gpu-check.json and .md.
GPU_CHECK_OUT ?= runs/gpu-check
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
.PHONY: gpu-check
gpu-check:
	LLMREC_GPU_CHECK_OUT=$(GPU_CHECK_OUT) PYTHONPATH=src HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m gpu -q -rs \
		-p no:cacheprovider tests/gpu
