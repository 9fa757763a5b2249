# showwork — every job is one target; each target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# The models `make model MODEL=<name>` materialises (scripts/materialize_model.py): gemma-3-270m (the
# default) or smollm2-135m. Training and eval targets materialise the one their config or run names.
model_in = $(or $(shell sed -n 's|^[[:space:]]*path:[[:space:]]*models/\([^/[:space:]]*\).*|\1|p' $(1) 2>/dev/null | head -n 1),gemma-3-270m)

.PHONY: help setup model parity test test-fast bench bench-report bench-profile lint format clean mutation

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Every installed module is byte-compiled: where PYTHONDONTWRITEBYTECODE is set (this project's
# machines and CI set it), a module without its .pyc is compiled again by every process that
# imports it, and `make test` starts hundreds of them (a fresh clone's tests with no .pyc: 1,454 s;
# with: 1,164). pip compiles one file at a time; compileall on every core does the same files
# (its exit status counts the few files of the installed packages that are not Python 3, which
# pip skips the same way).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -c requirements.lock -e '.[torch,jax,model,sweep,bench,dev]'
	$(PY) -m compileall -qq -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || true
	touch $@

setup: $(STAMP) ## Create .venv and install the pinned torch + JAX/Tunix stacks
	@echo "environment ready: $(VENV)"

models/%/.complete: | $(STAMP)
	$(PY) -m scripts.materialize_model --model $* --out models/$*

MODEL ?= gemma-3-270m
model: models/$(MODEL)/.complete ## Materialise a model into models/<MODEL> (HF safetensors, float32); MODEL=gemma-3-270m (default) | smollm2-135m

parity: models/$(MODEL)/.complete ## torch vs JAX on models/<MODEL>: max |logit difference| (exit 1 above 1e-3) and a packed row's SFT loss
	$(PY) -m scripts.parity --model models/$(MODEL)

# The real_model tests use both real models (Gemma 3 270M and SmolLM2-135M-Instruct).
REAL_MODELS := models/gemma-3-270m/.complete models/smollm2-135m/.complete

# Line + branch coverage of the whole suite, subprocesses included (pyproject.toml [tool.coverage]):
# a table of the files not fully covered, runs/coverage/html/index.html, and a failure below
# fail_under. COV= runs the tests without it.
COV ?= --cov --cov-report=term:skip-covered --cov-report=html

# Tests run in TEST_WORKERS pytest-xdist processes (default: the cores this process may use), one
# test file per worker at a time so module fixtures are built once, each worker on one BLAS/OpenMP
# thread so two workers do not oversubscribe the cores, the longest files first (tests/conftest.py).
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(len(os.sched_getaffinity(0)), 4))")
XDIST = $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)
TEST_ENV = $(if $(XDIST),OMP_NUM_THREADS=1 MKL_NUM_THREADS=1,)

# The two model conversions (one core each, most of it Python) and Chromium run side by side.
test: $(STAMP) ## Run the whole test suite (tiny models + the two real models) with coverage
	$(MAKE) --no-print-directory -j 3 $(REAL_MODELS) chromium
	mkdir -p runs/coverage
	$(TEST_ENV) $(PY) -m pytest $(XDIST) $(COV) $(PYTEST_ARGS)

test-fast: $(STAMP) chromium ## Tests that do not need the real model
	$(TEST_ENV) $(PY) -m pytest $(XDIST) -m "not real_model" $(PYTEST_ARGS)

# Every run is saved under runs/bench/ (pytest-benchmark storage, for `compare`) and as runs/bench/latest.json.
# BENCH_THREADS (default: the cores this process may use), BENCH_STEPS, BENCH_ROUNDS, BENCH_DEVICE=cuda
# (bfloat16) and BENCH_LOAD (the machine's load, stated in every entry) tune it.
bench: $(STAMP) models/gemma-3-270m/.complete data ## The benchmark suite: each hot step beside its peers (TRL, transformers, Tunix) -> runs/bench/
	@mkdir -p runs/bench
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-columns=median,min,max,rounds \
		--benchmark-storage=file://runs/bench --benchmark-autosave --benchmark-json=runs/bench/latest.json -s $(PYTEST_ARGS)

bench-report: $(STAMP) ## Markdown table + PNG chart of runs/bench/latest.json, compared with the previous saved run
	$(PY) -m benchmarks.report --json runs/bench/latest.json --storage runs/bench --out runs/bench/report

# The sides whose goals the last run missed, by default; BENCH_THREADS and BENCH_STEPS as above.
PROFILE_SIDES ?= sft_lora_ours grpo_ours decode_ours sft_lora_jax
bench-profile: $(STAMP) models/gemma-3-270m/.complete data ## Where each side's time goes (PROFILE_SIDES=...) -> runs/bench/profiles/
	$(PY) -m benchmarks.profile $(PROFILE_SIDES) --out runs/bench/profiles

lint: $(STAMP) ## ruff check + format check + the import rules (no cycles, no recipe importing a recipe) + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m scripts.check_imports
	$(VENV)/bin/mypy

# mutmut plants small bugs in the modules listed in pyproject.toml [tool.mutmut] and runs each
# against the fast tests that call its function; from scratch every time (3,300 mutants: long, one core).
MUTATION_JOBS ?= 1

mutation: $(STAMP) ## Mutation testing of scoring, rewards, traces, packing, stats, checkpoint/JSONL writers, record validation (slow; not in CI)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS)
	$(PY) -m scripts.mutation_report

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove caches (keeps .venv, models/ and runs/)
	rm -rf .pytest_cache .ruff_cache .mypy_cache .benchmarks mutants
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- data: trace datasets ----------------------------------------------------------------------
.PHONY: data
DATA_CONFIGS := configs/data/gsm8k.yaml configs/data/rg_mix.yaml configs/data/rg_gsm_symbolic.yaml

data: $(STAMP) ## Build GSM8K train/valid/test and the reasoning-gym sets into data/built/ (offline)
	@for cfg in $(DATA_CONFIGS); do $(PY) -m scripts.dataset build --config $$cfg || exit $$?; done
	$(PY) -m scripts.dataset contamination data/built/rg_mix/train.jsonl data/built/gsm8k/test.jsonl

# --- traces: the YAML-trace datasets (lab notebook 002) -----------------------------------------
.PHONY: traces
TRACE_CONFIGS := configs/data/yaml_traces.yaml configs/data/gsm8k_traces.yaml

# The contamination gate of both builds reads data/built/gsm8k/test.jsonl (from `make data`).
traces: $(STAMP) data/built/gsm8k/test.jsonl ## Build the synthetic and the converted-GSM8K YAML-trace datasets (offline); stats per expert and pattern
	@for cfg in $(TRACE_CONFIGS); do $(PY) -m scripts.dataset build --config $$cfg || exit $$?; done

# --- train: SFT, curriculum and GRPO ---------------------------------------------------------------
.PHONY: train curriculum
CONFIG ?= configs/sft_gemma3_270m_cpu.yaml
RUN ?= $(shell sed -n 's/^run_name:[[:space:]]*//p' $(CONFIG) | head -n 1)
TRAIN_ARGS ?=
BACKEND ?= torch
CURRICULUM_CONFIG ?= configs/curriculum/sft_gsm8k_steps_cpu.yaml

train: $(STAMP) models/$(call model_in,$(CONFIG))/.complete data ## SFT (default: LoRA on Gemma 3 270M, CPU) into runs/<RUN>/; BACKEND=torch|jax, CONFIG=, RUN=, TRAIN_ARGS= override
	$(PY) -m trainers_$(BACKEND).sft --config $(CONFIG) run_name=$(RUN) $(TRAIN_ARGS)
	@echo "results in runs/$(RUN)/: metrics.jsonl, plots/, eval/, summary.json, final/ (LoRA adapter), merged/ (HF safetensors)"

# The stage files live beside data/built/gsm8k, not in it: `make data` rebuilds that folder whole.
curriculum: $(STAMP) models/gemma-3-270m/.complete data ## Curriculum SFT A→B→C on GSM8K stage files (CURRICULUM_CONFIG=, TRAIN_ARGS= override)
	$(PY) -m scripts.dataset curriculum data/built/gsm8k/train.jsonl --config configs/curriculum/gsm8k_steps.yaml --out data/built/gsm8k-curriculum
	$(PY) -m scripts.run_curriculum --config $(CURRICULUM_CONFIG) $(TRAIN_ARGS)

# GRPO continues the SFT default run (`make train`); its own variable names, so CONFIG/RUN stay SFT's.
.PHONY: train-grpo
GRPO_CONFIG ?= configs/grpo_gemma3_270m_cpu.yaml
GRPO_RUN ?= $(shell sed -n 's/^run_name:[[:space:]]*//p' $(GRPO_CONFIG) | head -n 1)
SFT_RUN ?= runs/sft-gemma3-270m-cpu
GRPO_ARGS ?=

# Checked before anything is installed or built: without the SFT run there is nothing to continue.
# torch continues the run's adapter (final/); JAX starts a fresh LoRA on its merged/ export.
GRPO_SFT_FILE := $(if $(filter jax,$(BACKEND)),merged/config.json,final/adapter_model.safetensors)
GRPO_NEEDS := $(if $(wildcard $(SFT_RUN)/$(GRPO_SFT_FILE)),,grpo-missing-sft)

train-grpo: $(GRPO_NEEDS) $(STAMP) models/$(call model_in,$(GRPO_CONFIG))/.complete data ## GRPO from the SFT run (SFT_RUN=runs/sft-gemma3-270m-cpu) into runs/<GRPO_RUN>/; BACKEND=torch|jax, GRPO_CONFIG=, GRPO_ARGS= override
	$(PY) -m trainers_$(BACKEND).grpo --config $(GRPO_CONFIG) run_name=$(GRPO_RUN) init.sft_run=$(SFT_RUN) $(GRPO_ARGS)
	@echo "results in runs/$(GRPO_RUN)/: metrics.jsonl (reward, eval_reward at step 0 and the end), samples.jsonl, plots/, eval/, $(if $(filter jax,$(BACKEND)),,final/, )merged/"

.PHONY: grpo-missing-sft
grpo-missing-sft:
	@echo "error: $(SFT_RUN) holds no $(GRPO_SFT_FILE); run \`make train\` first (or pass SFT_RUN=runs/<sft run>)" >&2; exit 2

# YAML traces: SFT on the trace datasets, then the trace evals (held-out seed / template, GSM8K
# test with solver answers, paired with the free-text run); the last line printed is one line of JSON.
.PHONY: train-traces
TRACES_CONFIG ?= configs/sft_yaml_traces_270m_cpu.yaml
TRACES_RUN ?= $(shell sed -n 's/^run_name:[[:space:]]*//p' $(TRACES_CONFIG) | head -n 1)
TRACES_EVAL_CONFIG ?= configs/eval/yaml_traces_cpu.yaml
EVAL_ARGS ?=

train-traces: $(STAMP) models/$(call model_in,$(TRACES_CONFIG))/.complete traces ## SFT on YAML traces (BACKEND=torch|jax), then its evals; prints one line of JSON (TRAIN_ARGS=, EVAL_ARGS= override)
	$(PY) -m trainers_$(BACKEND).sft --config $(TRACES_CONFIG) run_name=$(TRACES_RUN) $(TRAIN_ARGS)
	@$(PY) -m evals.traces --run runs/$(TRACES_RUN) --config $(TRACES_EVAL_CONFIG) $(EVAL_ARGS)

# --- eval: base vs a trained run on the same held-out items ------------------------------------
.PHONY: eval eval-report chromium
EVAL_CONFIG ?= configs/eval/gsm8k_cpu.yaml
EVAL_DATA := data/built/gsm8k/test.jsonl

$(EVAL_DATA): | $(STAMP)
	$(MAKE) data

eval: $(STAMP) models/$(call model_in,runs/$(RUN)/config.yaml)/.complete $(EVAL_DATA) ## Base vs runs/<RUN> (default: the SFT default run) on the same held-out items -> runs/<RUN>/eval/
	@test -n "$(RUN)" || { echo "usage: make eval RUN=<run name> [EVAL_CONFIG=$(EVAL_CONFIG)]" >&2; exit 2; }
	$(PY) -m evals.run_eval --run runs/$(RUN) --config $(EVAL_CONFIG)

# EVAL_DIR=eval-multidomain compares the runs' multi-domain evals instead (-> runs/_compare/eval-multidomain/).
EVAL_DIR ?= eval
eval-report: $(STAMP) ## HTML report comparing RUNS="runs/a runs/b ..." on their GSM8K evals (EVAL_DIR=...) -> runs/_compare/
	@test -n "$(RUNS)" || { echo "usage: make eval-report RUNS=\"runs/a runs/b\" [EVAL_DIR=eval]" >&2; exit 2; }
	$(PY) -m evals.report --compare $(RUNS) --eval-dir $(EVAL_DIR) --out runs/_compare$(if $(filter-out eval,$(EVAL_DIR)),/$(EVAL_DIR))

chromium: ## Install headless Chromium for the report render test (no-op when present)
	@bash scripts/ensure_chromium.sh

# --- kaggle: the TPU notebook and its configs -------------------------------------------------
.PHONY: kaggle-check kaggle-notebook-test
KAGGLE_CONFIG ?= configs/kaggle/notebook.yaml

kaggle-check: $(STAMP) ## Validate the Kaggle notebook and every config it names (no model, no run)
	$(PY) -m submission.kaggle check --configs-only --config $(KAGGLE_CONFIG)
	$(PY) -m submission.kaggle check --configs-only --config configs/kaggle/ci_tiny.yaml
	$(PY) -m submission.kaggle check --configs-only --config configs/kaggle/notebook_gemma2.yaml
	$(PY) -m submission.kaggle check --configs-only --config configs/kaggle/notebook_llama32.yaml
	$(PY) -m pytest -q tests/test_kaggle_notebook.py -m "not slow" $(PYTEST_ARGS)

kaggle-notebook-test: $(STAMP) ## Execute the notebook end to end on CPU (ci_tiny.yaml, tiny model, minutes)
	$(PY) -m pytest -q tests/test_kaggle_notebook.py $(PYTEST_ARGS)

# --- sweep: hyperparameter search on Ray Tune ---------------------------------------------------
.PHONY: sweep
SWEEP_CONFIG ?= configs/sweeps/sft_gemma3_270m_cpu.yaml
SWEEP_ARGS ?=

sweep: $(STAMP) models/$(call model_in,$(shell sed -n 's/^base_config:[[:space:]]*//p' $(SWEEP_CONFIG) | head -n 1))/.complete data ## Ray Tune sweep (ASHA) of a trainer's config -> runs/sweeps/<name>/, configs/promoted/<name>.yaml; SWEEP_CONFIG=, SWEEP_ARGS= override
	$(PY) -m scripts.sweep --config $(SWEEP_CONFIG) $(SWEEP_ARGS)

# --- collatz: the learned ranking function of lab notebook 003 --------------------------------
.PHONY: collatz collatz-data
COLLATZ_CONFIG ?= configs/collatz_cpu.yaml
COLLATZ_RUN ?= $(shell sed -n 's/^run_name:[[:space:]]*//p' $(COLLATZ_CONFIG) | head -n 1)-$(BACKEND)
COLLATZ_ARGS ?=
COLLATZ_EXPORT ?= final# or best: the checkpoint with the fewest violations on the validation orbits
COLLATZ_SET := data/built/collatz/eval_50k.csv

$(COLLATZ_SET): | $(STAMP)
	$(PY) -m evals.collatz --build-set --set $@

collatz-data: $(COLLATZ_SET) ## Draw the Collatz eval set (50,000 pairs, as lab notebook 003 drew it) into data/built/collatz/

# resume=true: a killed run continues from its newest checkpoint, a finished one is only re-evaluated.
collatz: $(STAMP) $(COLLATZ_SET) ## Train the Collatz ranking MLP (CPU default; BACKEND=torch|jax, COLLATZ_ARGS=) then eval; ends with one JSON line
	$(PY) -m trainers_$(BACKEND).collatz --config $(COLLATZ_CONFIG) run_name=$(COLLATZ_RUN) resume=true $(COLLATZ_ARGS)
	$(PY) -m evals.collatz --run runs/$(COLLATZ_RUN) --set $(COLLATZ_SET)
	@if [ -d runs/$(COLLATZ_RUN)/best ]; then $(PY) -m evals.collatz --run runs/$(COLLATZ_RUN) --set $(COLLATZ_SET) --export best; fi
	@$(PY) -m evals.collatz --headline runs/$(COLLATZ_RUN) --export $(COLLATZ_EXPORT)

# --- package: the submission zip and its check ------------------------------------------------
.PHONY: package verify
SWEEP ?=
WITH_MODEL ?=

package: $(STAMP) ## The submission zip of runs/<RUN> -> dist/showwork_<run>_<date>_<commit7>.zip; SWEEP=<sweep dir>, WITH_MODEL=1
	@test -n "$(RUN)" || { echo "usage: make package RUN=<run name> [SWEEP=<sweep dir>] [WITH_MODEL=1]" >&2; exit 2; }
	$(PY) -m submission.package --run runs/$(RUN) $(if $(SWEEP),--sweep $(SWEEP)) $(if $(filter 1,$(WITH_MODEL)),--with-model)

verify: $(STAMP) ## Check a package: hashes, evidence schemas, README/WRITEUP figures (ZIP=dist/<name>.zip)
	@test -n "$(ZIP)" || { echo "usage: make verify ZIP=dist/<package>.zip" >&2; exit 2; }
	$(PY) -m submission.verify $(ZIP)
