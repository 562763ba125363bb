# QwenTune: `make run` starts the GUI, `make test` runs lint + tests. Both create .venv on first use
# and reinstall only when a requirements file changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 7860
ARGS   ?=
PYTEST_ARGS ?=

# The GPU file is installed only on Linux x86_64 where nvidia-smi lists a GPU.
GPU := $(shell [ "$$(uname -sm)" = "Linux x86_64" ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo 1)
RUN_REQS := requirements.txt $(if $(GPU),requirements-gpu.txt)

.PHONY: run test test-fast lint demo-model bench-data clean help venv

help:
	@echo "make run    - install (first time) and start the GUI on http://$(HOST):$(PORT)"
	@echo "make test   - install dev tools (first time), then ruff check and pytest (the full suite, as CI)"
	@echo "make test-fast - ruff check and every test not marked slow (about a minute: the edit loop)"
	@echo "make clean  - remove .venv and caches"

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; v = sys.version_info; ok = (3, 10) <= v[:2] <= (3, 13); \
	  sys.exit(0 if ok else f"QwenTune needs Python 3.10 to 3.13; {sys.executable} is {v[0]}.{v[1]}. Install a supported Python and run: make PYTHON=python3.12 run")' \
	  || exit 1
	@if [ -e $(VENV) ] && ! $(PY) -c 'import sys' 2>/dev/null; then \
	  echo "error: $(VENV) exists but is broken (its python does not start). Fix: rm -rf $(VENV) && make $(MAKECMDGOALS)"; exit 1; fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || { echo "error: could not create $(VENV); on Debian/Ubuntu install python3-venv"; exit 1; }
	@touch $@

$(VENV)/.runtime-ok: $(VENV)/.python-ok $(RUN_REQS)
	@if [ -n "$(GPU)" ] && [ ! -f requirements-gpu.txt ]; then \
	  echo "error: a GPU was found but requirements-gpu.txt is missing; restore it with: git checkout requirements-gpu.txt"; exit 1; fi
	@echo "installing $(RUN_REQS) into $(VENV) ..."
	$(PY) -m pip install -q --disable-pip-version-check $(addprefix -r ,$(RUN_REQS))
	@touch $@

$(VENV)/.dev-ok: $(VENV)/.runtime-ok requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.runtime-ok

run: $(VENV)/.runtime-ok
	$(PY) launch.py --host $(HOST) --port $(PORT) $(ARGS)

lint: $(VENV)/.dev-ok
	$(VENV)/bin/ruff check .

test: $(VENV)/.dev-ok
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.dev-ok
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo-model: $(VENV)/.runtime-ok
	$(PY) -m core demo-model

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
