"""The vLLM tier: our code against vLLM 0.32.0's real classes, in .venv-vllm (make test-vllm).

vLLM is installed without its CUDA dependencies, so nothing here runs a model; each test names the
vLLM source it relies on. Fixtures and environment settings are the main suite's (tests/conftest.py).
"""
import importlib.metadata

import pytest

from tests.conftest import qwen_tokenizer_dir, scratch_dir, tiny_model_dir  # noqa: F401  (fixtures)

VLLM_VERSION = "0.32.0"


def pytest_configure(config):
    try:
        found = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        raise pytest.UsageError("tests_vllm needs vLLM: run `make test-vllm` (it builds .venv-vllm)") from None
    if found != VLLM_VERSION:
        raise pytest.UsageError(f"tests_vllm is written against vLLM {VLLM_VERSION}, found {found}")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


@pytest.fixture(scope="session", params=["tiny", "qwen"])
def tokenizer(request, tiny_tokenizer, qwen_tokenizer):
    """Both vocabularies: the tiny BPE and Qwen's real one (merges across tag boundaries)."""
    return tiny_tokenizer if request.param == "tiny" else qwen_tokenizer
