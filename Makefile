# showwork — every job is one target; each target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL_DIR := models/gemma-3-270m
MODEL  := $(MODEL_DIR)/.complete
PYTEST_ARGS ?=

.PHONY: help setup model parity test test-fast bench lint format clean mutation

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[torch,jax,model,sweep,dev]'
	touch $@

setup: $(STAMP) ## Create .venv and install the pinned torch + JAX/Tunix stacks
	@echo "environment ready: $(VENV)"

$(MODEL): $(STAMP) scripts/materialize_model.py
	$(PY) -m scripts.materialize_model --out $(MODEL_DIR)

model: $(MODEL) ## Materialise Gemma 3 270M into models/gemma-3-270m (HF safetensors, float32)

parity: $(MODEL) ## Max |logit difference| torch vs JAX on the real model (exit 1 above 1e-3)
	$(PY) -m scripts.parity --model $(MODEL_DIR)

# Line + branch coverage of the whole suite, subprocesses included (pyproject.toml [tool.coverage]):
# a table of the files not fully covered, runs/coverage/html/index.html, and a failure below
# fail_under. COV= runs the tests without it.
COV ?= --cov --cov-report=term:skip-covered --cov-report=html

test: $(STAMP) $(MODEL) chromium ## Run the whole test suite (tiny models + the real default model) with coverage
	mkdir -p runs/coverage
	$(PY) -m pytest $(COV) $(PYTEST_ARGS)

test-fast: $(STAMP) chromium ## Tests that do not need the real model
	$(PY) -m pytest -m "not real_model" $(PYTEST_ARGS)

bench: $(STAMP) $(MODEL) ## pytest-benchmark suite of the hot paths, each beside a peer
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-columns=min,median,max,rounds $(PYTEST_ARGS)

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

# --- train: SFT, curriculum and GRPO ---------------------------------------------------------------
.PHONY: train curriculum
CONFIG ?= configs/sft_gemma3_270m_cpu.yaml
RUN ?= $(shell sed -n 's/^run_name:[[:space:]]*//p' $(CONFIG) | head -n 1)
TRAIN_ARGS ?=
BACKEND ?= torch
CURRICULUM_CONFIG ?= configs/curriculum/sft_gsm8k_steps_cpu.yaml

train: $(STAMP) $(MODEL) data ## SFT (default: LoRA on Gemma 3 270M, CPU) into runs/<RUN>/; BACKEND=torch|jax, CONFIG=, RUN=, TRAIN_ARGS= override
	$(PY) -m trainers_$(BACKEND).sft --config $(CONFIG) run_name=$(RUN) $(TRAIN_ARGS)
	@echo "results in runs/$(RUN)/: metrics.jsonl, plots/, eval/, summary.json, final/ (LoRA adapter), merged/ (HF safetensors)"

# The stage files live beside data/built/gsm8k, not in it: `make data` rebuilds that folder whole.
curriculum: $(STAMP) $(MODEL) data ## Curriculum SFT A→B→C on GSM8K stage files (CURRICULUM_CONFIG=, TRAIN_ARGS= override)
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

train-grpo: $(GRPO_NEEDS) $(STAMP) $(MODEL) data ## GRPO from the SFT run (SFT_RUN=runs/sft-gemma3-270m-cpu) into runs/<GRPO_RUN>/; BACKEND=torch|jax, GRPO_CONFIG=, GRPO_ARGS= override
	$(PY) -m trainers_$(BACKEND).grpo --config $(GRPO_CONFIG) run_name=$(GRPO_RUN) init.sft_run=$(SFT_RUN) $(GRPO_ARGS)
	@echo "results in runs/$(GRPO_RUN)/: metrics.jsonl (reward, eval_reward at step 0 and the end), samples.jsonl, plots/, eval/, $(if $(filter jax,$(BACKEND)),,final/, )merged/"

.PHONY: grpo-missing-sft
grpo-missing-sft:
	@echo "error: $(SFT_RUN) holds no $(GRPO_SFT_FILE); run \`make train\` first (or pass SFT_RUN=runs/<sft run>)" >&2; exit 2

# --- eval: base vs a trained run on the same held-out items ------------------------------------
.PHONY: eval eval-report chromium
EVAL_CONFIG ?= configs/eval/gsm8k_cpu.yaml
EVAL_DATA := data/built/gsm8k/test.jsonl

$(EVAL_DATA): | $(STAMP)
	$(MAKE) data

eval: $(STAMP) $(MODEL) $(EVAL_DATA) ## Base vs runs/<RUN> (default: the SFT default run) on the same held-out items -> runs/<RUN>/eval/
	@test -n "$(RUN)" || { echo "usage: make eval RUN=<run name> [EVAL_CONFIG=$(EVAL_CONFIG)]" >&2; exit 2; }
	$(PY) -m evals.run_eval --run runs/$(RUN) --config $(EVAL_CONFIG)

eval-report: $(STAMP) ## HTML report comparing RUNS="runs/a runs/b ..." -> runs/_compare/report.html
	@test -n "$(RUNS)" || { echo "usage: make eval-report RUNS=\"runs/a runs/b\"" >&2; exit 2; }
	$(PY) -m evals.report --compare $(RUNS) --out runs/_compare

chromium: ## Install headless Chromium for the report render test (no-op when present)
	@bash scripts/ensure_chromium.sh

# --- kaggle: the TPU notebook and its configs -------------------------------------------------
.PHONY: kaggle-check kaggle-notebook-test
KAGGLE_CONFIG ?= configs/kaggle/notebook.yaml

kaggle-check: $(STAMP) ## Validate the Kaggle notebook and every config it names (no model, no run)
	$(PY) -m submission.kaggle check --configs-only --config $(KAGGLE_CONFIG)
	$(PY) -m submission.kaggle check --configs-only --config configs/kaggle/ci_tiny.yaml
	$(PY) -m submission.kaggle check --configs-only --config configs/kaggle/notebook_gemma2.yaml
	$(PY) -m pytest -q tests/test_kaggle_notebook.py -m "not slow" $(PYTEST_ARGS)

kaggle-notebook-test: $(STAMP) ## Execute the notebook end to end on CPU (ci_tiny.yaml, tiny model, minutes)
	$(PY) -m pytest -q tests/test_kaggle_notebook.py $(PYTEST_ARGS)

# --- sweep: hyperparameter search on Ray Tune ---------------------------------------------------
.PHONY: sweep
SWEEP_CONFIG ?= configs/sweeps/sft_gemma3_270m_cpu.yaml
SWEEP_ARGS ?=

sweep: $(STAMP) $(MODEL) data ## Ray Tune sweep (ASHA) of a trainer's config -> runs/sweeps/<name>/, configs/promoted/<name>.yaml; SWEEP_CONFIG=, SWEEP_ARGS= override
	$(PY) -m scripts.sweep --config $(SWEEP_CONFIG) $(SWEEP_ARGS)
