# `make demo` (real photos), `make demo-synthetic` and `make test`. All set up .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gs_dfd_installed
export OMP_NUM_THREADS ?= 2
# glibc: keep large temporaries instead of returning and re-faulting them.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 268435456

.PHONY: setup demo demo-synthetic test clean-venv

$(STAMP): pyproject.toml constraints.txt tools/setup_env.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

setup: $(STAMP)

DEMO_PHOTOS ?= scenes/keyboard_photos/jpg
DEMO_SCENE ?= scenes/mixed_nyu_320
DEMO_OUT ?= out/demo

# The main job on real photos: import a DSLR macro focus sweep (21 JPEGs without EXIF: the optics are flags, the
# focus distances unknown and assumed over a range, so depth is relative), draw the stack, fit defocus-aware 3D
# Gaussians to it (about two minutes on 2 cores) and export the depth as a point cloud.
demo: $(STAMP)
	$(BIN)/gs-dfd import $(DEMO_PHOTOS) --out $(DEMO_OUT)/keyboard --max-size 384 --focal-length-mm 100 --f-number 2.8 \
		--sensor-width-mm 36 --focus-unknown --focus-range-m 0.2 0.23 --overwrite
	$(BIN)/gs-dfd check --scene $(DEMO_OUT)/keyboard --preview $(DEMO_OUT)/stack.png --overwrite
	$(BIN)/gs-dfd fit --scene $(DEMO_OUT)/keyboard --out $(DEMO_OUT)/fit --overwrite
	$(BIN)/gs-dfd export --fit $(DEMO_OUT)/fit --out $(DEMO_OUT)/fit_points.ply --snapshot $(DEMO_OUT)/fit_points.png --overwrite
	@echo
	@echo "demo outputs in $(DEMO_OUT)/:"
	@echo "  keyboard/            the photos imported as a scene (scene.json says where each value came from)"
	@echo "  stack.png            the focal stack as imported"
	@echo "  fit/summary.png      first photo, all-in-focus image, depth (relative: the focus distances were assumed), confidence"
	@echo "  fit/depth.npy        depth (float32; metrics.json depth_scale says relative); depth.png, aif.png, coc/, renders/"
	@echo "  fit/gaussians.ply    the 3D Gaussians (INRIA 3DGS layout, opens in 3DGS viewers)"
	@echo "  fit/metrics.json     re-render PSNR/SSIM per frame, the registration (scale, rotation, shift) and focus found"
	@echo "  fit_points.ply       the fitted depth as a coloured point cloud (open3d, MeshLab, CloudCompare)"
	@echo "  fit_points.png       that cloud drawn from the camera, 20 degrees left and right and from above"

# The same on a bundled synthetic stack with ground truth: the depth next to depth_gt.
demo-synthetic: $(STAMP)
	$(BIN)/gs-dfd check --scene $(DEMO_SCENE) --preview $(DEMO_OUT)/synthetic_stack.png --overwrite
	$(BIN)/gs-dfd fit --scene $(DEMO_SCENE) --out $(DEMO_OUT)/synthetic_fit --overwrite
	$(BIN)/gs-dfd export --fit $(DEMO_OUT)/synthetic_fit --out $(DEMO_OUT)/synthetic_points.ply --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
