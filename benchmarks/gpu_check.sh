#!/usr/bin/env bash
# The one-GPU check: a single H100/H200, under 8 minutes, no Ray and no vLLM (benchmarks/gpu_check.py says
# what it measures). All figures go to one JSON file, written after every section.
#
#   bash benchmarks/gpu_check.sh --prepare     # on the CPU machine: wheels into .whl/, Qwen's tokenizer into .cache/
#   bash benchmarks/gpu_check.sh               # on the GPU machine, carrying .whl and .cache/qwen25vl-tokenizer-*
#   bash benchmarks/gpu_check.sh --toy         # every section at toy size on CPU (proves the code paths only)
# Output: $OUT/gpu_check.json ($OUT defaults to runs/gpu_check). The GPU machine has torch, transformers and
# accelerate but no network: DeepSpeed and the small pure-Python packages travel as wheels, unpacked onto
# PYTHONPATH (no pip install needed there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_check}
# What the GPU image lacks (/work/.library/device/KINDS.md lists it: Python 3.12, torch, transformers, opencv, ...).
WHEELS=(deepspeed==0.19.8 hjson==3.1.0 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 autopep8==2.3.2
        pycodestyle==2.14.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5)
BINARY=(pydantic-core==2.50.5)  # built for the GPU machine's Python 3.12

if [ "${1:-}" = "--prepare" ]; then
  PY=${PYTHON:-.venv/bin/python}
  rm -rf .whl && mkdir -p .whl
  # DeepSpeed ships an sdist only; its wheel is pure Python (its CUDA ops are JIT-built when used; we use none).
  "$PY" -m pip wheel -q -c constraints.txt --no-deps -w .whl "${WHEELS[@]}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${BINARY[@]}"
  PYTHONPATH=. "$PY" -c "from tests.qwen_vocab import ensure_qwen_tokenizer; print(ensure_qwen_tokenizer('.cache'))"
  du -sh .whl .cache/qwen25vl-tokenizer-*
  echo "carry: .whl $(find .cache -maxdepth 1 -name 'qwen25vl-tokenizer-*' | sort | tail -1)"
  exit 0
fi

SITE=$(mktemp -d /tmp/gpu-check-site.XXXX)
if [ "${1:-}" != "--toy" ]; then  # the toy run uses this machine's environment; the wheels are the GPU machine's
  for wheel in .whl/*.whl; do
    [ -e "$wheel" ] && "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$SITE"
  done
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
"$PY" - <<'PYEOF'
import importlib
missing = [m for m in ("torch", "transformers", "deepspeed", "omegaconf", "PIL", "numpy") if importlib.util.find_spec(m) is None]
print("[gpu_check] missing packages:", missing or "none")
PYEOF
mkdir -p "$OUT"
# 470 s keeps the whole script under 8 minutes on the GPU; the JSON holds every section finished by then.
# The toy run on a shared 2-core CPU is slower than the real one on a GPU: it gets 30 minutes.
LIMIT=470
[ "${1:-}" = "--toy" ] && LIMIT=1800
timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@"
