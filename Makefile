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

.PHONY: setup train test bench dashboard clean

setup: $(STAMP)

# torchnet 0.0.4 and visdom 0.2.4 ship only sources whose setup.py imports pkg_resources:
# they build with setuptools<81 present and build isolation off.
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'setuptools<81' wheel
	$(BIN)/python -m pip install --no-build-isolation -r requirements.txt
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -W "ignore:The 'warn' method is deprecated:DeprecationWarning" tests

dashboard: $(STAMP)
	$(BIN)/python -m capsnet.dashboard $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m capsnet.bench $(ARGS)

clean:
	rm -rf $(VENV)
