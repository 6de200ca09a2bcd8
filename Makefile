# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean setup conformance

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: eager vs deferred huge-folio splitting on an SNP guest with lazy acceptance.
demo: $(STAMP)
	mkdir -p build
	$(BIN)/gmemlab compare snp-lazy-accept-64g --policy eager --policy deferred --plot build/snp-lazy-accept-64g.png
	@echo "plot written to build/snp-lazy-accept-64g.png"

# The selftest checklist on the model (add --backend both to compare with this machine's /dev/kvm).
conformance: $(STAMP)
	$(BIN)/gmemlab conformance --backend model

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/rangemap.py
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/sim.py
	$(BIN)/python bench/hugepages_table.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
