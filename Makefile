# Two commands on a fresh machine with Python 3.11:  `make sweep`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install sweep test test-quick test-busy bench gpu-check gpu-data gpu-quality clean

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

## make test-busy: the whole suite while a CPU hog keeps every core busy (timing-independence check; not CI)
test-busy: $(STAMP)
	@n=$$(nproc); pids=""; for i in $$(seq $$n); do nice -n 0 yes > /dev/null & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; echo "test-busy: $$n busy loop(s):$$pids"; \
	$(PY) -m pytest -q -ra $(ARGS); rc=$$?; kill $$pids 2>/dev/null; wait $$pids 2>/dev/null; \
	echo "test-busy: suite exit status $$rc next to $$n busy loop(s)"; exit $$rc

bench: $(STAMP)
	mkdir -p bench-results
	for b in benchmarks/bench_*.py; do $(PY) $$b --json bench-results/$$(basename $$b .py).json || exit 1; done

## make gpu-check: everything that needs a GPU in one command (~8 min on one H200): gpu-check/gpu_check.{json,log}
## (a CPU smoke run: make gpu-check ARGS="--device cpu --tiny")
# no install step: the device image has torch but no Ray / Optuna / CVXPY (the venv's python when there is one)
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out gpu-check $(ARGS)

## make gpu-data: the real data a device run carries (gpu-data/: 10,000 CIFAR-10 training + 1,000 test JPEGs, the
## NB201 table; ~14 MiB); then, on the device: make gpu-quality GPU_OUT=$$OUT (pass gpu-data to carry)
gpu-data: $(STAMP)
	$(PY) benchmarks/gpu_data.py --out gpu-data $(ARGS)

## make gpu-quality: TE-NAS's paper preset (both NTK couplings) and the combined score, 5 seeds, on gpu-data
GPU_OUT ?= gpu-check
gpu-quality:
	mkdir -p $(GPU_OUT)
	ISTANAS_SHARED_DATA=gpu-data $(GPU_PY) benchmarks/bench_tenas_quality.py \
	    --json $(GPU_OUT)/tenas_quality_paper.json --preset paper --device cuda --seeds 5 \
	    --couplings batch,frozen --combined-couplings frozen --skip-correlation $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
