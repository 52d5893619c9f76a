"""How VLLMEngine starts vLLM: its worker-extension name, its engine arguments, the LLM methods it calls."""
import dataclasses
import inspect

import pytest


def test_worker_extension_resolves_with_vllms_resolver():
    """vllm/utils/import_utils.py:119 resolve_obj_by_qualname splits on the last "." (worker_base.py:297 uses it)."""
    from vllm.utils.import_utils import resolve_obj_by_qualname

    from policy.vllm_engine import WORKER_EXTENSION, ThymeWorkerExtension

    assert resolve_obj_by_qualname(WORKER_EXTENSION) is ThymeWorkerExtension
    with pytest.raises(AttributeError):  # the old `module:Class` form: every worker failed at start
        resolve_obj_by_qualname("policy.vllm_engine:ThymeWorkerExtension")


def test_worker_extension_adds_no_attribute_the_gpu_worker_has():
    """vllm/v1/worker/worker_base.py:301-311 asserts the extension shadows nothing of the worker class;
    the GPU worker is vllm/v1/worker/gpu_worker.py `Worker`, read here as source (it imports CUDA code)."""
    import pathlib
    import re

    import vllm

    from policy.vllm_engine import ThymeWorkerExtension

    source = (pathlib.Path(vllm.__file__).parent / "v1" / "worker" / "gpu_worker.py").read_text()
    worker_names = set(re.findall(r"^    def (\w+)", source, re.M)) | set(re.findall(r"self\.(\w+)\s*[:=]", source))
    ours = {a for a in vars(ThymeWorkerExtension) if not a.startswith("__")}
    assert ours == {"thyme_weight_digest"} and not ours & worker_names


def test_engine_arguments_are_accepted_by_vllms_engine_args(tiny_model_dir):
    """Every keyword VLLMEngine passes to vllm.LLM is a vllm.EngineArgs field (vllm/engine/arg_utils.py), and
    the weight-transfer config becomes vLLM's WeightTransferConfig with the NCCL backend (arg_utils.py:880)."""
    from vllm.config.weight_transfer import WeightTransferConfig
    from vllm.engine.arg_utils import EngineArgs

    from policy.multimodal import PolicyProcessor
    from policy.vllm_engine import VLLMEngineConfig, llm_kwargs

    processor = PolicyProcessor.from_pretrained(tiny_model_dir)
    kwargs = llm_kwargs(tiny_model_dir, VLLMEngineConfig(tensor_parallel_size=2, distributed_executor_backend="ray"),
                        processor)
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(kwargs) <= fields, set(kwargs) - fields
    args = EngineArgs(**kwargs)
    assert isinstance(args.weight_transfer_config, WeightTransferConfig) and args.weight_transfer_config.backend == "nccl"
    assert args.logprobs_mode == "raw_logprobs" and args.enable_prefix_caching
    assert args.mm_processor_kwargs == {"min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels}
    assert args.distributed_executor_backend == "ray" and args.tensor_parallel_size == 2


def test_the_llm_methods_the_engine_calls_take_what_it_passes():
    """vllm/entrypoints/rl/offline.py:12-60 (weight transfer), llm.py:418 generate, :574 collective_rpc,
    :829 reset_prefix_cache; vllm/v1/engine/llm_engine.py:410 reset_encoder_cache."""
    from vllm import LLM
    from vllm.v1.engine.llm_engine import LLMEngine

    for name in ("init_weight_transfer_engine", "update_weights"):
        params = list(inspect.signature(getattr(LLM, name)).parameters)
        assert params == ["self", "request"], (name, params)  # we pass {"init_info": ...} / {"update_info": ...}
    source = inspect.getsource(LLM.init_weight_transfer_engine) + inspect.getsource(LLM.update_weights)
    assert 'request["init_info"]' in source and 'request["update_info"]' in source  # dicts are read by key
    assert list(inspect.signature(LLM.start_weight_update).parameters) == ["self"]
    assert "weight_version" in inspect.signature(LLM.finish_weight_update).parameters
    assert {"prompts", "sampling_params", "use_tqdm"} <= set(inspect.signature(LLM.generate).parameters)
    assert callable(LLM.reset_prefix_cache) and callable(LLM.collective_rpc)
    assert list(inspect.signature(LLMEngine.reset_encoder_cache).parameters) == ["self"]
