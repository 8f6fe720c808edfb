# Two commands do all set-up: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The local CPU build; a bare `torch` requirement would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,export,hf,lightning,tensorboard,wandb]'
	touch $(STAMP)

# The demo table: every config of configs/demo/ for seeds 0, 1, 2, two runs at a time (about 6 minutes).
demo: $(STAMP)
	$(BIN)/sparsetrain demo --seeds 0,1,2 --jobs 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Quick modes (estimated at about 30 minutes on 2 cores, half of it bench/quality.py; not timed as a whole); each script's --help shows the full mode.
bench: $(STAMP)
	$(BIN)/python bench/selection.py --quick
	$(BIN)/python bench/selection.py --quick --scaling
	$(BIN)/python bench/selection.py --quick --contended
	$(BIN)/python bench/overhead.py --quick
	$(BIN)/python bench/mask_events.py --quick
	$(BIN)/python bench/throughput.py --quick
	$(BIN)/python bench/quality.py --quick
	$(BIN)/python bench/inference.py --quick
	$(BIN)/python bench/translation.py --quick
	$(BIN)/python bench/point_ops.py --quick
	$(BIN)/python bench/detection.py --quick

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
