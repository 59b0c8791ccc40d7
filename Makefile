# dfuhil: two commands on a fresh machine.
#   make regression   set up, run suites/ on the farm in $(BOARDS) (the virtual farm by default)
#   make test         set up, lint, type-check and run the framework's own tests
PYTHON ?= python3
VENV   ?= .venv
# labgrid (coordinator, exporter, client) lives in its own venv: it needs pyserial-labgrid, a
# fork that installs the same `serial` package as the pyserial dfuhil and bumble depend on.
LAB_VENV ?= .venv-labgrid
BOARDS ?= boards.yaml
# Parallel workers for `make regression` (pytest-xdist, scheduled board by board); 0 = serial.
JOBS   ?= 4
# How virtual boards' probes are driven: pynrfjprog's API (default) or nrfutil (the virtual
# farm's own `nrfutil` executable, first on PATH): make regression PROBE=nrfutil
# nrfutil starts one process per register read, so LED sampling needs the farm in real time.
PROBE  ?=
PROBE_ARGS := $(if $(filter nrfutil,$(PROBE)),--sim-time-scale 1)
# The framework's own tests, a file per worker: they wait on paced virtual UARTs, clocks and
# lab processes far more than they compute, so three workers on two cores (measured: 556 s of
# pytest against 677 s with two, 1,291 tests, none flaky) (0 = one process).
TEST_JOBS ?= 3
PY     := $(VENV)/bin/python
DFUHIL := $(VENV)/bin/dfuhil
SAMPLE_FIRMWARE := firmware/virtual/.generated
# Allure's history between runs (trends, new failures); CI points it at its cache.
REPORT_HISTORY ?= reports/history.jsonl

.PHONY: setup firmware regression test lint typecheck bench bench-mesh bench-smp bench-ble \
	bench-farm bench-power bench-faults bench-infra bench-remote fuzz clean report report-setup \
	chromium \
	lab-setup ser2net

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Boards on several lab hosts: labgrid pinned in requirements-labgrid.txt, ser2net (Debian) for
# its exporters' RFC 2217 serial ports. CI runs as root on a fresh machine.
lab-setup: $(LAB_VENV)/.installed ser2net

$(LAB_VENV)/.installed: requirements-labgrid.txt
	$(PYTHON) -m venv $(LAB_VENV)
	$(LAB_VENV)/bin/python -m pip install --quiet --upgrade pip==25.3
	$(LAB_VENV)/bin/python -m pip install --quiet -r requirements-labgrid.txt
	touch $@

ser2net:
	@command -v ser2net >/dev/null || (apt-get update && apt-get install -y ser2net)

# The virtual farm's sample firmware set (deterministic, so re-generation changes no byte).
firmware: $(SAMPLE_FIRMWARE)

$(SAMPLE_FIRMWARE): $(VENV)/.installed $(shell find src/dfuhil/sim/firmware -name '*.py' 2>/dev/null) src/dfuhil/sim/mcuboot/config.py
	$(DFUHIL) firmware generate --out firmware/virtual
	touch $@

# The suites' verdict is the exit status; the report is built after them and never changes it.
regression: setup firmware
	@status=0; DFUHIL_PROBE=$(PROBE) $(PY) -m pytest suites --boards $(BOARDS) -n $(JOBS) $(PROBE_ARGS) || status=$$?; \
	$(MAKE) --no-print-directory report || echo "regression: the HTML report was not built (see the line above); the results are in reports/allure-results"; \
	exit $$status

# Allure 3, pinned in package.json / package-lock.json, into ./node_modules (never globally).
report-setup: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "report-setup: npm is not installed: apt-get install -y nodejs npm"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

report: setup
	@$(MAKE) --no-print-directory report-setup || { echo "report: Allure 3 could not be installed (npm ci failed above): install node and npm (apt-get install -y nodejs npm), then make report-setup"; exit 1; }
	$(DFUHIL) report build --results reports/allure-results --out reports --history $(REPORT_HISTORY)

# Headless Chromium for the report's rendering test (tests/test_report_html.py); CI runs as root.
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

lint: setup
	$(VENV)/bin/ruff check src fixtures suites tests bench conftest.py
	$(VENV)/bin/ruff format --check src fixtures suites tests bench conftest.py

typecheck: setup
	$(VENV)/bin/mypy

test: setup firmware report-setup chromium lab-setup lint typecheck
	$(PY) -m pytest tests -p no:randomly -n $(TEST_JOBS) --dist loadfile --junitxml=reports/tests-junit.xml --alluredir=reports/tests-allure-results

bench: setup firmware
	$(PY) bench/provision.py
	$(PY) bench/mesh_dfu.py
	$(PY) bench/smp_upload.py

bench-mesh: setup firmware
	$(PY) bench/mesh_dfu.py

bench-smp: setup firmware
	$(PY) bench/smp_upload.py

# SMP upload over the virtual BLE link at 7.5/15/30/50 ms against the link bound (issue 15).
bench-ble: setup firmware
	$(PY) bench/smp_upload.py --part ble

# Farm scale: generated farms of 1..32 boards in parallel, and the shipped farm serial vs -n.
bench-farm: setup firmware
	$(PY) bench/farm_scale.py $(BENCH_FARM_ARGS)

# The long fuzz campaign: every parser and wire decoder for FUZZ_BUDGET seconds each (the short,
# deterministic budget runs in `make test`, tests/fuzz/). Failing inputs land in reports/fuzz/.
FUZZ_BUDGET ?= 60
fuzz: setup firmware
	$(PY) tests/fuzz/campaign.py --budget $(FUZZ_BUDGET)

# Every flash operation of each MCUboot upgrade cut whole and torn; BUDGET bounds the wall time.
POWER_BUDGET ?= 900
bench-power: setup firmware
	$(PY) bench/power_cuts.py --seeds 3 --budget $(POWER_BUDGET)

# SMP uploads under each serial-line fault kind, many seeds; FAULT_SEEDS / FAULT_BUDGET_S bound it.
FAULT_SEEDS ?= 20
FAULT_BUDGET_S ?= 900
bench-faults: setup firmware
	$(PY) bench/line_faults.py --seeds $(FAULT_SEEDS) --budget-s $(FAULT_BUDGET_S)

# Per infrastructure fault kind, on 2 generated boards: detected, retried, quarantined, others ok.
bench-infra: setup firmware
	$(PY) bench/infra_faults.py

# 8 virtual boards local vs through labgrid (coordinator, 2 exporters, RFC 2217) on loopback.
bench-remote: setup firmware lab-setup
	$(PY) bench/remote_farm.py $(BENCH_REMOTE_ARGS)

clean:
	rm -rf reports firmware/virtual .pytest_cache .mypy_cache .ruff_cache node_modules
