# Quickstart: `make train` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CAPSNET_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup train test bench clean

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
	CAPSNET_DATA_DIR=$(CAPSNET_DATA_DIR) $(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m capsnet.bench $(ARGS)

clean:
	rm -rf $(VENV)
