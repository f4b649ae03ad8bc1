# Two commands on a fresh machine with Python 3.11:  `make sweep`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install sweep test test-quick bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -q pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## make sweep: install what is missing, then run the main job (a small real sweep on a local Ray)
sweep: $(STAMP)
	$(PY) launch/sweep.py $(ARGS)

## make test: install what is missing, then run the whole test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q -ra $(ARGS)

## make test-quick: the suite without the slow end-to-end tests
test-quick: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow" $(ARGS)

bench: $(STAMP)
	mkdir -p bench-results
	for b in benchmarks/bench_*.py; do $(PY) $$b --json bench-results/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
