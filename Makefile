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

# The main job on the bundled default scene: validate and draw the focal
# stack, fit defocus-aware 3D Gaussians to it (about 1.5 minutes on 2 cores),
# show the depth next to the ground truth, and export it as a point cloud.
demo: $(STAMP)
	$(BIN)/gs-dfd check --scene $(DEMO_SCENE) --preview $(DEMO_OUT)/stack.png --overwrite
	$(BIN)/gs-dfd fit --scene $(DEMO_SCENE) --out $(DEMO_OUT)/fit --overwrite
	$(BIN)/gs-dfd export --fit $(DEMO_OUT)/fit --out $(DEMO_OUT)/fit_points.ply --snapshot $(DEMO_OUT)/fit_points.png --overwrite
	@echo
	@echo "demo outputs in $(DEMO_OUT)/:"
	@echo "  stack.png            the focal stack, its depth and CoC maps"
	@echo "  fit/summary.png      input, all-in-focus, fitted depth next to depth_gt, confidence"
	@echo "  fit/depth.npy        depth (float32 metres); depth.png, aif.png, coc/, renders/"
	@echo "  fit/gaussians.ply    the 3D Gaussians (INRIA 3DGS layout, opens in 3DGS viewers)"
	@echo "  fit/metrics.json     re-render PSNR/SSIM per frame and depth metrics"
	@echo "  fit_points.ply       the fitted depth as a coloured point cloud (open3d, MeshLab, CloudCompare)"
	@echo "  fit_points.png       that cloud drawn from the camera, 20 degrees left and right and from above"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
