# The two commands of the README: `make demo` and `make test`. Both create .venv and install
# everything first (idempotent: re-running only re-installs when setup.py or the pins change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Apply the pins to pip's build environments too (DeepSpeed builds from its sdist).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# Keep Ray, W&B and HF files out of the home directory and offline by default.
export RAY_AUTH_MODE ?= disabled
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup system-deps demo test test-vllm bench sft-format-check clean

setup: system-deps $(VENV)/.installed

system-deps:
	@bash scripts/install_system_deps.sh

$(VENV)/.installed: setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m learners.deepspeed_ops
	@touch $@

# Sandbox, task sets, SFT -> SFT math -> GRPO on the tiny model, eval of base/SFT/GRPO on 400 held-out
# tasks, tables + outputs/demo/learning.png, chat (14-15 min on 2 cores; docs/training.md "The demo recipe").
demo: setup
	$(PY) -m launch.demo

test: setup
	$(PY) -m pytest tests

# The vLLM tier: our engine code against vLLM 0.32.0's real classes, in its own .venv-vllm (vLLM without
# its CUDA dependencies; nothing runs a model). ~2.5 min to build the environment, ~1.5 min of tests.
test-vllm:
	@bash scripts/setup_vllm_env.sh
	.venv-vllm/bin/python -m pytest tests_vllm

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The demo's SFT half: train the tiny model on 800 + 100 expert trajectories, eval it on 200 held-out tasks (~10 min).
sft-format-check: setup
	$(PY) benchmarks/sft_format_check.py

clean:
	rm -rf $(VENV) .venv-vllm .pytest_cache
