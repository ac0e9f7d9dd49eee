# Two commands on a fresh machine: `make report` (every notebook from the shipped runs) and `make test`;
# `make reproduce` retrains everything (the full settings of params/full.yaml).
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= params/quick.yaml
# torch for the venv: everything here runs on a CPU. On Linux, PyPI's torch is the CUDA build; for the CPU
# build use e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" (see the README).
TORCH ?= torch==2.13.0

.PHONY: install test report reproduce benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,sweep]"
	touch $@

# Unit tests, then every notebook at its cheap defaults under nbval.
test: install
	$(PY) -m pytest --nbval-lax --nbval-current-env tests notebooks

report: install
	$(VENV)/bin/labkit run-notebooks -f $(PARAMS)

reproduce: install
	$(VENV)/bin/labkit run-notebooks -f params/full.yaml

# e.g. make benchmark BENCH_ARGS="--rounds 4 --levels x86-64-v3 --torch-isa avx2" (an AVX2 CPU's view)
benchmark: install
	$(PY) benchmarks/train_speed.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs/notebooks-* outputs/train-* outputs/02_train*
