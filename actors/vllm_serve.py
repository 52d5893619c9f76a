"""The `vllm serve` command line of one judge replica (pure: no Ray, no vLLM needed to build it).

Flags of vLLM 0.32's serve parser (vllm/entrypoints/cli/serve.py:161, make_arg_parser); the module
`vllm.entrypoints.cli.main` is vLLM's CLI entry point (vllm/entrypoints/cli/main.py:39). Checked
against vLLM's real parser in tests_vllm/test_vllm_judge_cli.py.
"""
from __future__ import annotations

import sys

from rewards.config import VLLMJudgeConfig


def vllm_serve_command(cfg: VLLMJudgeConfig, port: int, python: str = sys.executable) -> list[str]:
    """The `vllm serve` command line for one replica (flags of vLLM 0.32's public CLI)."""
    return [
        python, "-m", "vllm.entrypoints.cli.main", "serve", cfg.model_path,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--served-model-name", cfg.served_model_name,
        "--tensor-parallel-size", str(cfg.tensor_parallel_size),
        "--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
        "--max-model-len", str(cfg.max_model_len),
        *cfg.extra_args,
    ]
