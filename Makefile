# Two entry points for a fresh machine (see README):
#   make demo   install, then run the whole pipeline on the built-in demo scene (dvc repro)
#   make test   install, then run the test suite
# Offline (no checkpoint downloads): make demo WEIGHTS=random runs the same pipeline as a DVC
# experiment with random-weight models (meaningless semantics, every stage exercised), at a
# 224 px model input (the small random CLIP's native 56 px would give 4 x 5 feature maps).
PY ?= python3
WEIGHTS ?=
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo lint test

$(BIN)/m3: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.15.0 torchvision==0.29.2
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import torch, torchvision, gsplat, pycolmap, faiss, zarr, open_clip, transformers, segment_anything; print('m3 environment ok: torch', torch.__version__)"
	touch $(BIN)/m3

install: $(BIN)/m3

demo: install
ifeq ($(WEIGHTS),)
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro
else
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc exp run -S 'features.clip.weights=$(WEIGHTS)' \
		$(if $(filter random,$(WEIGHTS)),-S 'features.clip.input_size=224')
endif

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
