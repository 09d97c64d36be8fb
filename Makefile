# streamlit-bridge: every target works on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install langflow run test lint components bench bench-browser clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[page,test,langflow]'
	touch $(STAMP)

install: $(STAMP)

# The real Langflow server for tests/test_langflow_*.py, in its own venv (.venv-langflow) so its
# pins never touch the project's; idempotent (about 30-90 s and 1.8 GB the first time).
langflow:
	PYTHON=$(PYTHON) bash scripts/install-langflow.sh

run: $(STAMP)
	$(VENV)/bin/streamlit-bridge up

# Three workers on two cores: most tests wait on real processes, sockets and browsers.
# Tests sharing one server or a global resource run on one worker (xdist_group markers).
test: $(STAMP) langflow
	bash scripts/test-services.sh
	$(PY) -m pytest -n 3 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check bridge streamlit_client langflow_component scripts/gen_components.py tests bench
	$(PY) scripts/gen_components.py --check
	$(VENV)/bin/mypy

# Write the shared helpers (their one source: langflow_component/__shared_helpers__.py) into
# the generated region of every Langflow component file. Standard library only: no install.
components:
	$(PYTHON) scripts/gen_components.py

bench: $(STAMP)
	$(PY) -m bench

bench-browser: $(STAMP)
	bash scripts/test-services.sh
	$(PY) -m bench.browser

clean:
	rm -rf $(VENV) .venv-langflow data .pytest_cache .mypy_cache .ruff_cache
