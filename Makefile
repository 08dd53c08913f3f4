PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Byte-compiled after installing, as pip does for an installed package: an editable install
# otherwise relies on Python writing the bytecode on first import, which PYTHONDONTWRITEBYTECODE
# (set on some machines) stops, and every command would compile darkroom's modules anew (~0.25 s);
# the numba kernels are compiled and cached too (~20 s, once), not during the first night
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/python -m darkroom.pipeline.kernels
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/darkroom demo

# the suite runs on two processes (pytest-xdist): the machine has two cores and many tests
# wait on solve-field, PostgreSQL or subprocesses; TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# The peer reduction (../shared/tools/peer_baseline.py) runs in its own environment: it needs
# photutils 3, darkroom pins photutils 2.
PEER_VENV ?= .venv-peer
$(PEER_VENV)/bin/python:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet numpy scipy "astropy>=6,<8" "ccdproc>=2.4,<3" \
	  "photutils>=3,<4" "astroscrappy>=1.2,<2" "astroalign>=2.5,<3" "matplotlib>=3.8,<4" "batman-package>=2.4,<3"

bench: $(STAMP) $(PEER_VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(PEER_VENV) build *.egg-info src/*.egg-info .pytest_cache
