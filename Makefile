# hftrain: every target sets up what it needs first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the package so that pip never resolves an unpinned torch.
# On this project's CPU machines torch==2.13.0 is a local CPU wheel; for a CUDA build use
# e.g. `make install TORCH=torch==2.13.0` on a Linux machine with PyPI (its default torch wheels are CUDA builds).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.hftrain-installed
RUN ?= runs/shapes_demo

.PHONY: install short-run eval test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"  # default: pip install torch==2.13.0, before the package
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

short-run: install
	$(BIN)/accelerate launch --num_processes 1 hftrain/train.py recipes/shapes_demo.yaml --overwrite

eval: install
	$(BIN)/hftrain eval $(RUN)

test: install
	$(BIN)/python -m pytest -q

# bench/results.md and bench/results.json; BENCH_ARGS=--full for full sizes (default: < 10 min on 2 cores)
bench: install
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf runs data/shapes
