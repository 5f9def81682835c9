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

DEMO_SCENE ?= scenes/mixed_nyu_320
DEMO_OUT ?= out/demo

# Until `gs-dfd fit` exists the demo synthesises a scene, validates it and the
# bundled default scene, and draws their focal stacks.
demo: $(STAMP)
	$(BIN)/gs-dfd synth procedural --kind occlusion --seed 7 --out $(DEMO_OUT)/synth_scene --overwrite
	$(BIN)/gs-dfd check --scene $(DEMO_OUT)/synth_scene --preview $(DEMO_OUT)/synth_stack.png
	$(BIN)/gs-dfd check --scene $(DEMO_SCENE) --preview $(DEMO_OUT)/bundled_stack.png
	@echo
	@echo "demo outputs in $(DEMO_OUT)/:"
	@echo "  synth_scene/       a new focal stack (gs_dfd.scene/1)"
	@echo "  synth_stack.png    its frames, depth and CoC maps"
	@echo "  bundled_stack.png  the same for $(DEMO_SCENE)"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
