# One-command setup. `make demo` and `make test` create .venv when missing and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out

.PHONY: demo demo-local test test-multihost install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/python -m pip install --progress-bar off -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Two hosts on this machine from Linux namespaces (private /dev/shm, /tmp and network; a shared
# path): train across them, lose one mid-epoch, finish on the other. Needs root (launch/multihost.py).
test-multihost: $(STAMP)
	$(BIN)/python -m launch.multihost --workdir multihost_out

# The main job on generated data: generate -> partition -> verify -> train on Ray (2 workers over
# 2 partitions, a local Ray instance) -> evaluate -> top-K recommendations under the users' own ids.
demo: $(STAMP)
	$(BIN)/distgnn gen --interactions 200000 --communities 8 --seed 0 --out $(DEMO_DIR)/data --overwrite
	$(BIN)/distgnn partition create --train $(DEMO_DIR)/data/train --test $(DEMO_DIR)/data/test \
		--valid-fraction 0.1 --num-parts 2 --method metis --out $(DEMO_DIR)/parts --overwrite
	$(BIN)/distgnn partition verify $(DEMO_DIR)/parts --train $(DEMO_DIR)/data/train
	$(BIN)/distgnn train --config configs/demo.yaml --partitions $(DEMO_DIR)/parts \
		--backend ray --num-workers 2 --out $(DEMO_DIR)/run --overwrite
	$(BIN)/distgnn evaluate --run $(DEMO_DIR)/run
	$(BIN)/distgnn recommend --run $(DEMO_DIR)/run --k 20 --out $(DEMO_DIR)/recs.parquet --overwrite

# The same training in one process (no Ray).
demo-local: $(STAMP)
	$(BIN)/distgnn train --config configs/demo.yaml --partitions $(DEMO_DIR)/parts \
		--out $(DEMO_DIR)/run-local --overwrite
	$(BIN)/distgnn evaluate --run $(DEMO_DIR)/run-local

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
