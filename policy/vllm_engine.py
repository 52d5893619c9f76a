"""VLLMEngine: the engine contract on vLLM 0.32 (GPU clusters, the production rollout path).

Written against vLLM 0.32.0's source (file:line below are in its wheel). vLLM cannot run on the
project's CPU machines: the parts that touch it are exercised against vLLM's real classes in the
tier `make test-vllm` (tests_vllm/), the pure parts in tests/test_engine_vllm.py; the engine itself
has not run on a GPU yet. This module imports without vLLM; constructing the engine without it
raises with the install command.

Choices:
- ATS by phases (policy/vllm_phases.py): a text phase stopping at `<code>`, a code phase resubmitted
  from the ids at the code temperature, and so on, with prefix caching so a resubmission prefills
  only its last partial block. No custom logits processor, so vLLM's defaults stay: the V2 model
  runner, async scheduling, CUDA graphs.
- log-probs: `logprobs_mode="raw_logprobs"` (vllm/v1/worker/gpu/sample/sampler.py:172, the logits
  before penalties and temperature) and `logprobs=0` give the chosen token's untempered log-prob.
- repetition stop: vLLM's own `repetition_detection` ends a looping phase in the scheduler
  (vllm/v1/core/sched/utils.py:129); the replay's monitor decides where the round is cut.
- images: vLLM's Qwen2.5-VL processor expands each single `<|image_pad|>` into its n copies
  (vllm/multimodal/processing/processor.py:1699 `_apply_prompt_updates`), so we send each run
  collapsed to one pad with our pixel budget (mm_processor_kwargs min/max_pixels,
  vllm/model_executor/models/qwen2_vl.py:958), and check the ids vLLM expanded
  (`RequestOutput.prompt_token_ids`) equal ours: a mismatch fails that request with finish_reason
  "error" (the episode stops with a clear error, the batch goes on).
- weights: vLLM's weight-transfer engine over NCCL (policy/vllm_weight_transfer.py has the learner
  side): only names, shapes and dtype names cross vLLM's RPC, which decodes arguments without type
  information (vllm/v1/engine/core.py:1913, 1755). After an update the prefix cache (KV computed by
  the old weights) and the encoder cache (old vision embeddings) are reset.
- tensor parallel: `tensor_parallel_size > 1` with `distributed_executor_backend="ray"` runs the
  workers on the placement-group bundles actors/rollout_placement.py reserved for this engine.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from policy.ats import TokenBytes
from policy.engine import Engine, GenerationRequest, GenerationResult
from policy.multimodal import PolicyProcessor
from policy.sequence_monitor import SequenceMonitor
from policy.vllm_phases import PhasedRequest

VLLM_INSTALL_HINT = (
    "VLLMEngine needs vLLM 0.32 and a CUDA GPU: run `pip install -c constraints.txt -e '.[vllm]'` on a GPU "
    "machine. On CPU machines use policy.hf_engine.HFEngine (same contract)."
)
# resolve_obj_by_qualname splits on the LAST "." (vllm/utils/import_utils.py:119): module path, then class.
WORKER_EXTENSION = "policy.vllm_engine.ThymeWorkerExtension"


@dataclass
class VLLMEngineConfig:
    """Engine-start settings of vLLM (see vllm.EngineArgs, vllm/engine/arg_utils.py, for their meaning).

    max_model_len must hold the rollout's max_total_tokens. distributed_executor_backend: None lets
    vLLM choose (one GPU: in process); "ray" for tensor_parallel_size > 1 inside a RolloutActor.
    """

    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 32768
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    max_num_seqs: int = 256
    max_images_per_prompt: int = 8
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0
    min_pixels: int | None = None  # None: the model folder's preprocessor_config.json
    max_pixels: int | None = None
    # Largest loop period vLLM's own repetition check looks for (its cost grows with it, see
    # policy/vllm_phases.vllm_repetition_detection); None = all our detector can see.
    repetition_max_pattern: int | None = 64


# ---- pure conversion (tested without vLLM, and with it in tests_vllm/) -----------------------------
def collapse_image_placeholders(ids: Sequence[int], vision_start: int, image_pad: int, vision_end: int) -> list[int]:
    """`<|vision_start|><|image_pad|>*n<|vision_end|>` -> `<|vision_start|><|image_pad|><|vision_end|>`."""
    out: list[int] = []
    inside = False
    for t in ids:
        if t == image_pad and inside and out[-1] == image_pad:
            continue
        if t == vision_start:
            inside = True
        elif t == vision_end:
            inside = False
        out.append(t)
    return out


def tokens_prompt(prompt_ids: Sequence[int], images: Sequence, processor: PolicyProcessor) -> dict[str, Any]:
    """A vllm TokensPrompt (a TypedDict, vllm/inputs/llm.py:111: a plain dict) with collapsed image placeholders."""
    processor.check_prompt(prompt_ids, images)
    prompt: dict[str, Any] = {"prompt_token_ids": collapse_image_placeholders(
        prompt_ids, processor.vision_start_id, processor.image_pad_id, processor.vision_end_id)}
    if images:
        prompt["multi_modal_data"] = {"image": [im.convert("RGB") for im in images]}
    return prompt


def to_sampling_params(kwargs: Mapping[str, Any]):
    """vllm.SamplingParams from PhasedRequest.sampling_kwargs(): the repetition fields become vLLM's
    RepetitionDetectionParams (a msgspec field the scheduler reads by attribute, so not a dict)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RepetitionDetectionParams

    kw = dict(kwargs)
    detection = kw.pop("repetition_detection", None)
    return SamplingParams(**kw, repetition_detection=RepetitionDetectionParams(**detection) if detection else None)


def weight_transfer_init_info(master_address: str, master_port: int, rank_offset: int, world_size: int) -> dict:
    """The worker-side init info of vLLM's NCCL backend (vllm/distributed/weight_transfer/nccl_common.py:71).
    One tensor per broadcast (packed=False): the learner side (WeightSender) sends the same way."""
    return {"master_address": master_address, "master_port": int(master_port), "rank_offset": int(rank_offset),
            "world_size": int(world_size), "packed": False}


def weight_update_info(bucket: Sequence[tuple[str, Sequence[int], str]]) -> dict:
    """One bucket's update info (vllm/distributed/weight_transfer/nccl_engine.py:84, names/dtype_names/shapes)."""
    return {"names": [n for n, _, _ in bucket], "dtype_names": [d for _, _, d in bucket],
            "shapes": [[int(x) for x in shape] for _, shape, _ in bucket]}


def llm_kwargs(model_path: str | Path, cfg: VLLMEngineConfig, processor: PolicyProcessor) -> dict[str, Any]:
    """vllm.LLM's keyword arguments (vllm/entrypoints/llm.py:178; the ones it does not name go to
    vllm.EngineArgs, vllm/engine/arg_utils.py)."""
    kwargs: dict[str, Any] = dict(
        model=str(model_path), dtype=cfg.dtype, seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=cfg.max_model_len, tensor_parallel_size=cfg.tensor_parallel_size,
        max_num_seqs=cfg.max_num_seqs, enable_prefix_caching=cfg.enable_prefix_caching,
        enforce_eager=cfg.enforce_eager, logprobs_mode="raw_logprobs",
        limit_mm_per_prompt={"image": cfg.max_images_per_prompt},
        mm_processor_kwargs={"min_pixels": processor.min_pixels, "max_pixels": processor.max_pixels},
        worker_extension_cls=WORKER_EXTENSION,
        weight_transfer_config={"backend": "nccl"},  # vllm/config/weight_transfer.py:9
    )
    if cfg.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = cfg.distributed_executor_backend
    return kwargs


# ---- inside vLLM's workers ------------------------------------------------------------------------
class ThymeWorkerExtension:
    """Mixed into vLLM's GPU workers (worker_extension_cls, vllm/v1/worker/worker_base.py:296).

    Only control data in and out: a digest of the loaded weights, for checking that an update
    arrived (tests, benchmarks/gpu_check). Weights themselves travel over NCCL.
    """

    def thyme_weight_digest(self) -> dict[str, list[float]]:
        """vLLM's parameter name -> [sum, L2 norm] (fp64) of this worker's shard."""
        model = self.model_runner.model
        return {n: [float(p.double().sum()), float(p.double().norm())] for n, p in model.named_parameters()}


# ---- the engine (runs only where vLLM and a GPU are) ----------------------------------------------
class VLLMEngine(Engine):
    def __init__(self, model_path: str | Path, config: VLLMEngineConfig | None = None):
        try:
            import vllm
        except ImportError as error:
            raise RuntimeError(VLLM_INSTALL_HINT) from error
        self.config = cfg = config or VLLMEngineConfig()
        self._processor = PolicyProcessor.from_pretrained(model_path, cfg.min_pixels, cfg.max_pixels)
        self.token_bytes = TokenBytes(self._processor.tokenizer)
        self.llm = vllm.LLM(**llm_kwargs(model_path, cfg, self._processor))  # vllm/entrypoints/llm.py:178
        # vLLM stops at the tokenizer's EOS plus the generation config's (vllm/sampling_params.py:772);
        # the replay's monitor must know the same set.
        generation_config = self.llm.model_config.try_get_generation_config()
        eos = generation_config.get("eos_token_id")
        eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
        if self._processor.tokenizer.eos_token_id is not None:
            eos_ids.add(self._processor.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        self._receiver: ThreadPoolExecutor | None = None
        self._rendezvous: Future | None = None
        self._lock = threading.Lock()  # vLLM's engine client is driven from one thread at a time

    @property
    def tokenizer(self):
        return self._processor.tokenizer

    @property
    def processor(self) -> PolicyProcessor:
        return self._processor

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self._wait_for_rendezvous()
        states = [PhasedRequest(r, SequenceMonitor(r.sampling, self.token_bytes, self.eos_ids, r.stop, r.in_code),
                                max_pattern=self.config.repetition_max_pattern) for r in requests]
        while active := [s for s in states if not s.done]:
            prompts = [tokens_prompt(s.prompt_ids(), s.request.images, self._processor) for s in active]
            params = [to_sampling_params(s.sampling_kwargs()) for s in active]
            with self._lock:
                outputs = self.llm.generate(prompts, params, use_tqdm=False)  # vllm/entrypoints/llm.py:418
            for state, output in zip(active, outputs):
                state.absorb_output(output)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        return [s.result(decode) for s in states]

    # ---- weights ------------------------------------------------------------------------------
    def load_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        raise NotImplementedError(
            "VLLMEngine takes new weights over NCCL, not through the object store: call "
            "start_weight_receiver(...) once, then receive_weights(buckets) while the learner's "
            "policy.vllm_weight_transfer.WeightSender sends them (vLLM's RPC carries control data only)")

    def start_weight_receiver(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """Join the learner's NCCL group; returns at once, the rendezvous completes when the sender joins.

        vLLM's workers block inside init_weight_transfer_engine until every rank has joined
        (vllm/distributed/weight_transfer/nccl_common.py:139, StatelessProcessGroup + PyNcclCommunicator),
        so the call runs on a side thread; generate and receive_weights wait for it first. The sender
        must join within 300 s (StatelessProcessGroup's store timeout, vllm/distributed/utils.py:471).
        """
        if self._rendezvous is not None:
            raise RuntimeError("start_weight_receiver was already called for this engine")
        info = weight_transfer_init_info(master_address, master_port, rank_offset, world_size)
        self._receiver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-weight-receiver")
        # vllm/entrypoints/rl/offline.py:12 (LLM.init_weight_transfer_engine -> collective_rpc)
        self._rendezvous = self._receiver.submit(self._locked, self.llm.init_weight_transfer_engine, {"init_info": info})

    def receive_weights(self, buckets: list[list[tuple[str, tuple[int, ...], str]]]) -> None:
        """Receive every bucket (name, shape, dtype name per tensor, in send order), load them, reset caches.

        One start/finish pair around all buckets (vllm/v1/worker/gpu_worker.py:1507-1600): the NCCL
        engine reloads layer by layer in between (vllm/distributed/weight_transfer/nccl_engine.py:159).
        """
        if self._rendezvous is None:
            raise RuntimeError("receive_weights before start_weight_receiver: the engine is not in the NCCL group")
        self._wait_for_rendezvous()
        with self._lock:
            self.llm.start_weight_update()  # vllm/entrypoints/rl/offline.py:33
            for bucket in buckets:
                self.llm.update_weights({"update_info": weight_update_info(bucket)})  # offline.py:41
            self.llm.finish_weight_update()  # offline.py:56
            self.llm.reset_prefix_cache()  # vllm/entrypoints/llm.py:829: cached KV came from the old weights
            self.llm.llm_engine.reset_encoder_cache()  # vllm/v1/engine/llm_engine.py:410: old vision embeddings

    def weight_digest(self) -> list[dict[str, list[float]]]:
        """Per worker: vLLM parameter name -> [sum, norm] (ThymeWorkerExtension); plain data over RPC."""
        with self._lock:
            return self.llm.collective_rpc("thyme_weight_digest")  # vllm/entrypoints/llm.py:574

    def _locked(self, fn, *args):
        with self._lock:
            return fn(*args)

    def _wait_for_rendezvous(self) -> None:
        if self._rendezvous is not None:
            self._rendezvous.result()  # blocks until the sender joined; raises the workers' error, if any
