#!/usr/bin/env bash
# Build .venv-vllm: the environment of the vLLM test tier (make test-vllm). vLLM 0.32.0 is installed
# without its dependencies, which are mostly CUDA wheels (several GB) that cannot run here anyway;
# tests_vllm/requirements.txt lists the pure-Python packages the vLLM modules under test import.
# Idempotent: a finished environment is marked with .venv-vllm/.installed and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
PY=$VENV/bin/python
if [ -f $VENV/.installed ] && [ $VENV/.installed -nt tests_vllm/requirements.txt ]; then exit 0; fi
test -x $PY || ${PYTHON:-python3} -m venv $VENV
$PY -m pip install -q --upgrade pip
$PY -m pip install -q -c constraints.txt -r tests_vllm/requirements.txt
$PY -m pip install -q --no-deps vllm==0.32.0
$PY -m pip install -q --no-deps -e .
touch $VENV/.installed
