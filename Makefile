# dfuhil: two commands on a fresh machine.
#   make regression   set up, run suites/ on the farm in $(BOARDS) (the virtual farm by default)
#   make test         set up, lint, type-check and run the framework's own tests
PYTHON ?= python3
VENV   ?= .venv
BOARDS ?= boards.yaml
# How virtual boards' probes are driven: pynrfjprog's API (default) or nrfutil (the virtual
# farm's own `nrfutil` executable, first on PATH): make regression PROBE=nrfutil
# nrfutil starts one process per register read, so LED sampling needs the farm in real time.
PROBE  ?=
PROBE_ARGS := $(if $(filter nrfutil,$(PROBE)),--sim-time-scale 1)
PY     := $(VENV)/bin/python
DFUHIL := $(VENV)/bin/dfuhil
SAMPLE_FIRMWARE := firmware/virtual/.generated

.PHONY: setup firmware regression test lint typecheck bench bench-mesh bench-smp clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The virtual farm's sample firmware set (deterministic, so re-generation changes no byte).
firmware: $(SAMPLE_FIRMWARE)

$(SAMPLE_FIRMWARE): $(VENV)/.installed $(shell find src/dfuhil/sim/firmware -name '*.py' 2>/dev/null)
	$(DFUHIL) firmware generate --out firmware/virtual
	touch $@

regression: setup firmware
	DFUHIL_PROBE=$(PROBE) $(PY) -m pytest suites --boards $(BOARDS) $(PROBE_ARGS)

lint: setup
	$(VENV)/bin/ruff check src fixtures suites tests bench conftest.py
	$(VENV)/bin/ruff format --check src fixtures suites tests bench conftest.py

typecheck: setup
	$(VENV)/bin/mypy

test: setup firmware lint typecheck
	$(PY) -m pytest tests -p no:randomly --junitxml=reports/tests-junit.xml --alluredir=reports/tests-allure-results

bench: setup firmware
	$(PY) bench/provision.py
	$(PY) bench/mesh_dfu.py
	$(PY) bench/smp_upload.py

bench-mesh: setup firmware
	$(PY) bench/mesh_dfu.py

bench-smp: setup firmware
	$(PY) bench/smp_upload.py

clean:
	rm -rf reports firmware/virtual .pytest_cache .mypy_cache .ruff_cache
