# Two entry points for a fresh machine (see README):
#   make demo   install, then run the whole pipeline on the built-in demo scene (dvc repro)
#   make test   install, then lint, build the docs (make docs) and run the test suite
#   make docs   the docs site into site/ (mkdocs build --strict: any warning is an error)
# On a CUDA machine install the GPU build of FAISS instead: make install FAISS=gpu
# Offline (no checkpoint downloads): make demo WEIGHTS=random runs the same pipeline as a DVC
# experiment outside the workspace (`dvc exp run --temp`: params.yaml and the workspace stay as
# they are) with random-weight models (meaningless semantics, every stage exercised), at a 224 px
# model input (the small random CLIP's native 56 px would give 4 x 5 feature maps), then shows its
# metrics (`dvc exp show --md`, whole at any terminal width; `dvc exp apply <name>` brings its
# outputs and params into the workspace).
PY ?= python3
WEIGHTS ?=
FAISS ?= cpu
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo lint typecheck docs test

$(BIN)/m3: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.15.0 torchvision==0.29.2
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,$(FAISS),ray,serve,docs]"
	$(BIN)/python -c "import torch, torchvision, gsplat, pycolmap, faiss, zarr, open_clip, transformers, segment_anything, ray, fastapi, uvicorn, mkdocs, mkdocstrings; print('m3 environment ok: torch', torch.__version__)"
	$(BIN)/python -c "from pipeline.splat.raster_cpp import kernel; print('compiled CPU rasterizer:', 'ok' if kernel() else 'unavailable (torch backend)')"
	touch $(BIN)/m3

install: $(BIN)/m3

demo: install
ifeq ($(WEIGHTS),)
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro
else
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc exp run --temp -S 'features.clip.weights=$(WEIGHTS)' \
		$(if $(filter random,$(WEIGHTS)),-S 'features.clip.input_size=224')
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc exp show --no-pager --md --drop '.*' \
		--keep 'Experiment|Created|^psnr$$|^ssim$$|features.clip.(cosine|baseline_cosine)|^gaussians$$'
endif

lint: install typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over pipeline/ ([tool.mypy] in pyproject.toml): about 75 s on 2 cores from a clean clone,
# seconds once .mypy_cache holds the libraries' types.
typecheck: install
	$(BIN)/mypy

# NO_MKDOCS_2_WARNING: Material's end-of-life banner (printed on every run, not a build warning).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: install lint docs
	DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=20
