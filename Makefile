# Two commands: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gs_dfd_installed
export OMP_NUM_THREADS ?= 2
# glibc: keep large temporaries instead of returning and re-faulting them.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 268435456

.PHONY: setup demo test clean-venv

$(STAMP): pyproject.toml constraints.txt tools/setup_env.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
