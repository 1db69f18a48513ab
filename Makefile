# siamsearch: `make test` and `make demo` are the two commands of the quick start.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision pinned to the wheels this project is tested with; any torch>=2.1 works.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: test test-slow demo bench bench-quick venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q $(TORCH) || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[test,demo,ray,serve,tensorboard]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

test-slow: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/siamsearch demo

bench: $(STAMP)
	$(PY) -m benchmarks

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) build *.egg-info
