# image-embeddings: every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

# Local defaults; any of them can be overridden from the environment.
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export IMAGE_EMBEDDINGS_DATA ?= $(CURDIR)/data
export IMAGE_EMBEDDINGS_INPUT_ROOT ?= $(IMAGE_EMBEDDINGS_DATA)/images
export IMAGE_EMBEDDINGS_OUTPUT_ROOT ?= $(IMAGE_EMBEDDINGS_DATA)/embeddings
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Test processes in parallel (pytest-xdist; one test file per process). Each loads TensorFlow.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

.DEFAULT_GOAL := help
.PHONY: help setup lock lint format browser test run demo airflow clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create or update .venv from the runtime and development locks (seconds when nothing changed)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q "$$(grep '^uv==' requirements.txt)"
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements.txt requirements-dev.txt
	@# The repository root on the venv's path: `python -m beam_jobs.image_embeddings` works anywhere.
	@echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/image_embeddings_repo.pth"
	@rm -f $(VENV)/.installed-*
	@touch $@

lock: ## Regenerate the locks: requirements.txt (runtime) and requirements-dev.txt (tests, lint)
	@test -x $(BIN)/uv || $(MAKE) setup
	$(BIN)/uv pip compile requirements.in --python-version 3.11 --quiet -o requirements.txt
	$(BIN)/uv pip compile requirements-dev.in --python-version 3.11 --quiet -o requirements-dev.txt

lint: setup ## Ruff over the whole repository
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

browser: ## Install Debian's Chromium for the UI test (skips without root/apt)
	scripts/install_browser.sh

test: setup lint browser reliability ## Set up, lint and run every test (the reliability ones first)
	$(PYTEST) --ignore=tests/reliability

.PHONY: reliability
reliability: setup ## Bad inputs, kills, GCS faults, reruns, tampering, secrets: tests, then their table
	@status=0; $(PYTEST) tests/reliability || status=$$?; \
	$(BIN)/python scripts/reliability_report.py || status=1; exit $$status

run: setup ## One DAG run for DATE=YYYY-MM-DD, any day (`airflow dags test`); prints where its outputs are
	@[[ -n "$(DATE)" ]] || { echo "usage: make run DATE=YYYY-MM-DD" >&2; exit 2; }
	$(BIN)/python scripts/run_day.py "$(DATE)"

.PHONY: search
search: setup ## K nearest images to IMAGE over DATE (or its last DAYS days): make search DATE=YYYY-MM-DD IMAGE=PATH_OR_URI [K=10] [DAYS=1] [STORE=files|pgvector|bigquery]
	@[[ "$(DATE)" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$$ && -n "$(IMAGE)" ]] || { echo "usage: make search DATE=YYYY-MM-DD IMAGE=PATH_OR_URI [K=10] [DAYS=1] [STORE=files|pgvector|bigquery]" >&2; exit 2; }
	$(BIN)/python -m beam_jobs.image_embeddings.search.query --date "$(DATE)" --image "$(IMAGE)" --k "$(or $(K),10)" --days "$(or $(DAYS),1)" --store "$(or $(STORE),files)"

demo: setup ## Demo images for three days, one DAG run each; prints where outputs and plots are
	$(BIN)/python scripts/demo.py

airflow: setup ## Local Airflow (UI, API, scheduler) with this DAG; prints how to log in
	scripts/airflow_local.sh standalone

.PHONY: bench
bench: setup ## Benchmarks: model ceiling, pipeline, seed's way, bf16, precisions (int8, bfloat16), daily steps, storage, DAG parse, search recall, publishing (BENCH_ARGS=--quick; the analysis at scale: BENCH_ARGS="--only scale")
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean: ## Remove generated data, Airflow state and caches (keeps .venv)
	rm -rf data .airflow .pytest_cache .ruff_cache test-artifacts benchmarks/out
