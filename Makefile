# Two set-up commands: `make run` and `make test`. Both create .venv and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pick a CUDA build with e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint bench slow clean

$(VENV)/.torch-stamp:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	touch $@

$(VENV)/.run-stamp: $(VENV)/.torch-stamp pyproject.toml
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-stamp: $(VENV)/.torch-stamp pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.run-stamp

# Until the GUI exists, `make run` launches the daemon in the foreground on embedded defaults.
run: $(VENV)/.run-stamp
	$(PY) -m daemon $(RUN_ARGS)

lint: $(VENV)/.dev-stamp
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS)

slow: $(VENV)/.dev-stamp
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(VENV)/.dev-stamp
	$(PY) -m pytest tests/bench -m bench -s -p no:randomly $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
