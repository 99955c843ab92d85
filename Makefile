# Set-up and the README's commands. Every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: dagster-home install run test test-fast lint bench ui mlflow-ui maps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, exactly these builds (they lie on this machine's disk); nothing may pull a newer one.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dagster-home:
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Run the main job end to end on the embedded extract (import -> ... -> register in MLflow).
run: install dagster-home
	$(BIN)/python -m pipelines.cli pipeline

## Run the tests (fast + slow + server tests; what CI runs), on TEST_WORKERS processes (pytest-xdist;
## the tests sharing one expensive fixture run on the same worker: tests/conftest.py).
TEST_WORKERS ?= 2
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not server"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Started from DAGSTER_HOME (holding a copy of dagster.yaml), so `dagster dev` uses that configuration
# and does not warn about the repo's dagster.yaml; the code location comes from workspace.yaml.
ui: install dagster-home
	cd $(DAGSTER_HOME) && $(abspath $(BIN))/dagster dev -w $(CURDIR)/workspace.yaml -h 127.0.0.1 -p 3000

# the store `make run` writes: $(LOC2VEC_DATA_DIR)/mlflow/mlflow.db (default var/), or $MLFLOW_TRACKING_URI
LOC2VEC_DATA_DIR ?= $(CURDIR)/var
MLFLOW_STORE = $(if $(MLFLOW_TRACKING_URI),$(MLFLOW_TRACKING_URI),sqlite:///$(abspath $(LOC2VEC_DATA_DIR))/mlflow/mlflow.db)

mlflow-ui: install
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri $(MLFLOW_STORE)

## Serve the data dir's map pages on http://127.0.0.1:$LOC2VEC_MAPS_PORT (default 8765); the maps asset links there.
maps: install
	$(BIN)/python -m loc2vec.evaluation.serve_maps --dir $(LOC2VEC_DATA_DIR)

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .dagster_home
