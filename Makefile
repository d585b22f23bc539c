# Quickstart: `make train` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A copy of the dataset in ../shared/data/MNIST/raw is used when present (and CAPSNET_DATA_DIR
# is unset); otherwise config.py's data_dir, where train.py downloads MNIST.
ifneq ($(wildcard ../shared/data/MNIST/raw),)
export CAPSNET_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: setup train test test-fast bench dashboard analyze clean device-bundle device-check
# the math (loss, model and squash, routing, spectral, the fast kernels and their check, the
# settings): `make test-fast`, a minute or less; `make test` runs these and everything else
FAST_TESTS := tests/test_loss.py tests/test_model.py tests/test_routing.py tests/test_spectral.py \
	tests/test_kernels.py tests/test_fast_kernels.py tests/test_config.py
PYTEST := $(BIN)/python -m pytest -q -W "ignore:The 'warn' method is deprecated:DeprecationWarning"

setup: $(STAMP)

# torchnet 0.0.4 and visdom 0.2.4 ship only sources whose setup.py imports pkg_resources:
# they build with setuptools<81 present and build isolation off. The package itself goes in
# editable, so that the clone's .venv runs every command from any directory.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'setuptools<81' wheel
	$(BIN)/python -m pip install --no-build-isolation -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e .
	$(BIN)/python -m capsnet.dashboard.assets  # the dashboard's page files, from npm
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# the files in parallel, one worker per core (pytest-xdist): much of the suite is single-threaded
# process start-up (torch's import, the subprocesses some tests start), which the workers overlap;
# in the order collected (tests/conftest.py puts the longest files first)
test: $(STAMP)
	$(PYTEST) -n auto --dist loadfile --no-loadscope-reorder tests

test-fast: $(STAMP)
	$(PYTEST) $(FAST_TESTS)

dashboard: $(STAMP)
	$(BIN)/python -m capsnet.dashboard $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m capsnet.bench $(ARGS)

analyze: $(STAMP)
	$(BIN)/python -m capsnet.analyze $(ARGS)

clean:
	rm -rf $(VENV)

# A GPU machine that reaches no package index and does not see ../shared: `make device-bundle` here
# puts what it lacks into .device/ (ignored by git, under 30 MB): wheels of the pure-Python
# packages that its Python 3.12 + torch image does not have, and the MNIST files, gzipped. Carry
# .device to the machine and run `make device-check` there (OUT=DIR, BUDGET=seconds, default
# 300; ARGS="--only PART" reruns one part): it installs the wheels beside its own torch and writes
# every GPU measurement into DIR (capsnet/devicecheck.py says what).
DEVICE := .device
OUT ?= device-check
BUDGET ?= 300
# the device's Python, which holds its own torch
DEVICE_PYTHON ?= python3
WHEEL_PLATFORMS := --python-version 3.12 --implementation cp --only-binary=:all: \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any

device-bundle: $(STAMP)
	rm -rf $(DEVICE) && mkdir -p $(DEVICE)/wheels $(DEVICE)/data/MNIST/raw
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w $(DEVICE)/wheels \
		torchnet==0.0.4 visdom==0.2.4
	$(BIN)/python -m pip download --quiet --no-deps $(WHEEL_PLATFORMS) -d $(DEVICE)/wheels \
		tornado==6.6.1 jsonpatch==1.47 jsonpointer==3.12 websocket-client==1.9.2
	for f in $(CAPSNET_DATA_DIR)/MNIST/raw/*-ubyte; do gzip -9 -c $$f > $(DEVICE)/data/MNIST/raw/$$(basename $$f).gz; done
	du -sh $(DEVICE)

device-check:
	$(DEVICE_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/site $(DEVICE)/wheels/*.whl
	gunzip -kf $(DEVICE)/data/MNIST/raw/*.gz
	PYTHONPATH=/tmp/site CAPSNET_DATA_DIR=$(DEVICE)/data $(DEVICE_PYTHON) -m capsnet.devicecheck --out $(OUT) --budget $(BUDGET) $(ARGS)
