# Two entry points for a fresh machine (see README.md):
#   make demo   — install, then run the main job on the embedded default data set (digits)
#   make test   — install (with the test extras and Fashion-MNIST), then run the test suite
# TORCH pins the torch build this project is tested with; `make test TORCH=` keeps whatever
# torch (>= 2.3) the environment already has.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PY      = $(VENV)/bin/python

.PHONY: demo gallery test install install-test fashion-mnist

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install -q $(TORCH) -e '.[corruptions]'

install-test: $(PY)
	$(PY) -m pip install -q $(TORCH) -e '.[test]'

fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

demo: install
	$(VENV)/bin/alignsam-diag demo --out demo-output

# The README's gallery: the demo's figures as committed palette PNGs (run after `make demo`).
gallery:
	$(PY) docs/gallery.py demo-output/figures

test: install-test fashion-mnist
	$(PY) -m pytest
