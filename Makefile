# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean setup conformance vm-deps test-vm

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

# The selftest checklist on the model (add --backend both to compare with this machine's /dev/kvm).
conformance: $(STAMP)
	$(BIN)/gmemlab conformance --backend model

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	@$(MAKE) --no-print-directory vm-deps
	@$(BIN)/gmemlab debian-kernel >/dev/null || echo "debian-kernel: not fetched; VM tests will skip"
	$(BIN)/python -m pytest -rs
	@$(MAKE) --no-print-directory test-vm

# QEMU and a static busybox boot kernels for the kernel suite (issue 15); installed with apt when root.
vm-deps:
	@if command -v qemu-system-x86_64 >/dev/null && [ -x /bin/busybox ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "vm-deps: apt-get install qemu-system-x86 busybox-static"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 busybox-static >/dev/null; \
	else echo "vm-deps: skipped: qemu-system-x86_64 or /bin/busybox missing and no root apt-get to install them"; fi

# The kernel suite inside Debian's packaged kernel booted under QEMU (skips, saying why, where impossible).
test-vm: $(STAMP)
	@if ! command -v qemu-system-x86_64 >/dev/null; then echo "test-vm: skipped: no qemu-system-x86_64"; \
	elif ! kimg=$$($(BIN)/gmemlab debian-kernel); then echo "test-vm: skipped: no packaged kernel (see above)"; \
	else $(BIN)/gmemlab vm --kernel "$$kimg" --timeout 900 -- $(BIN)/python -m pytest tests/kernel tests/differential -rs -p no:cacheprovider; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/rangemap.py
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/sim.py
	$(BIN)/python bench/hugepages_table.py
	$(BIN)/python bench/sweep.py
	@if [ -w /dev/kvm ] && command -v gcc >/dev/null; then \
		$(BIN)/python bench/vcpu_exits.py && $(BIN)/python bench/host_populate.py; \
	else echo "bench: skipped vcpu_exits.py and host_populate.py: they need a writable /dev/kvm and gcc"; fi
	$(BIN)/python bench/vm.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
