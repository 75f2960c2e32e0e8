# One-command setup. `make demo` and `make test` create .venv when missing and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out

.PHONY: demo test install clean bench-partition

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/python -m pip install --progress-bar off -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The main job on generated data: generate -> partition -> report -> verify.
demo: $(STAMP)
	$(BIN)/distgnn gen --interactions 200000 --communities 8 --seed 0 --out $(DEMO_DIR)/data --overwrite
	$(BIN)/distgnn partition create --train $(DEMO_DIR)/data/train --test $(DEMO_DIR)/data/test \
		--num-parts 2 --method metis --out $(DEMO_DIR)/parts --overwrite
	$(BIN)/distgnn partition verify $(DEMO_DIR)/parts --train $(DEMO_DIR)/data/train

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
