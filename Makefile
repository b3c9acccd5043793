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
# constraints.txt: every other package at the version the test suite passed with (make lock renews it).
CONSTRAINTS ?= constraints.txt
LOCK_VENV := .venv-lock
TEST_WORKERS ?= 2

.PHONY: install lock short-run eval test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"  # default: pip install torch==2.13.0, before the package
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

# Re-resolve the newest versions pyproject.toml allows in a scratch environment, run the suite
# there, and only if it passes write them to constraints.txt (then `make install` picks them up).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet "$(TORCH)"
	$(LOCK_VENV)/bin/pip install --quiet -e ".[dev]"
	$(LOCK_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
	{ echo "# Versions the test suite passed with (make install installs with -c constraints.txt)."; \
	  echo "# torch is pinned on its own in the Makefile (TORCH). Regenerate with 'make lock'."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)'; } > $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

short-run: install
	$(BIN)/accelerate launch --num_processes 1 hftrain/train.py recipes/shapes_demo.yaml --overwrite

eval: install
	$(BIN)/hftrain eval $(RUN)

# The suite in TEST_WORKERS pytest-xdist processes (most of its time is single-threaded: imports and
# the processes the tests start); TEST_WORKERS=0 runs it in this process, in order.
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# bench/results.md and bench/results.json; BENCH_ARGS=--full for full sizes (default: < 10 min on 2 cores)
bench: install
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf runs data/shapes $(LOCK_VENV)
