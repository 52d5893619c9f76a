"""One data-parallel learner: a DeepSpeed engine around the policy, fed micro batches by the driver.

The same class runs on CPU (fp32, gloo) and GPU (bf16, nccl); `learner_actor.LearnerActor` is this
class as a Ray actor on one placement-group bundle. The loss is looked up by name in
learners.losses.LOSSES, so the GRPO stage reuses everything here with its own loss.
"""
from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from learners.losses import LOSSES, next_token_logprobs
from learners.lr_schedule import warmup_cosine
from learners.rendezvous import start_process_group

# Without a GPU, tell DeepSpeed it is on CPU (before anything imports it) rather than let it warn, once
# per learner and reference rank, that it "was unable to detect" an accelerator.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


@dataclass
class LearnerSettings:
    """What a learner needs from the stage/model config (plain values: it crosses the Ray boundary)."""

    model_path: str
    total_steps: int
    accumulation_steps: int
    micro_batch: int
    lr: float
    warmup_ratio: float
    min_lr_ratio: float
    weight_decay: float
    adam_betas: tuple[float, float]
    adam_eps: float
    grad_clip: float
    zero_stage: int
    precision: str  # auto | bf16 | fp32
    loss: str = "sft"
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    max_pixels: int | None = None
    seed: int = 0
    grpo: dict | None = None  # GRPO stages: learners.grpo_learner.GRPOLearnerOptions fields


def deepspeed_config(s: LearnerSettings, world_size: int, use_bf16: bool) -> dict:
    """The DeepSpeed JSON config (pure). The optimizer and scheduler are ours, passed as objects."""
    config = {
        "train_batch_size": s.micro_batch * s.accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": s.accumulation_steps,
        "gradient_clipping": s.grad_clip,
        "bf16": {"enabled": use_bf16},
        "zero_optimization": {"stage": s.zero_stage, "overlap_comm": False, "contiguous_gradients": True},
        # A torch AdamW under ZeRO is fine; without this flag DeepSpeed refuses optimizers it did not build.
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
        "steps_per_print": 1 << 30,  # we log ourselves
    }
    if use_bf16 and s.zero_stage >= 1:
        # Without this DeepSpeed accumulates micro-batch gradients in the model dtype, bf16 (its
        # runtime/engine.py get_data_types); ZeRO keeps an fp32 accumulation buffer with it. Stage 0
        # has no fp32 path with bf16 weights (DeepSpeed 0.19 raises "unsupported mix").
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def _vision_module(model):
    for name, module in model.named_modules():
        if name.endswith("visual"):
            return module
    raise ValueError("model has no vision tower named 'visual': model.freeze_vision needs a Qwen2.5-VL")


def free_rendezvous_address() -> tuple[str, int]:
    """This process's node IP and a free TCP port (rank 0's become the process group's rendezvous)."""
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def init_process_group(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int) -> bool:
    """Join the ranks' torch.distributed group through DeepSpeed (nccl on GPU, gloo on CPU); returns
    whether this process has a GPU."""
    import deepspeed

    # torch.distributed reads the rendezvous from the environment; set it before init_distributed.
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    # torch.distributed warns on every ZeRO collective about renamed functions: noise in the job log.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if on_gpu else "gloo"
    # Our rendezvous listens on master_addr only (torch's env:// one listens on every interface).
    start_process_group(backend, master_addr, master_port, rank, world_size)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return on_gpu


class Learner:
    """Lifecycle: Learner(...) -> setup(master_addr, master_port) on every rank at once -> train_step ..."""

    def __init__(self, rank: int, world_size: int, local_rank: int, settings: dict):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.s = LearnerSettings(**settings)
        self.engine = None

    # ---- setup --------------------------------------------------------------------------------
    def node_address(self) -> tuple[str, int]:
        return free_rendezvous_address()

    def setup(self, master_addr: str, master_port: int) -> dict:
        import deepspeed
        from transformers import Qwen2_5_VLForConditionalGeneration

        from policy.multimodal import PolicyProcessor

        on_gpu = init_process_group(self.rank, self.world_size, self.local_rank, master_addr, master_port)
        self._seed_everything(self.s.seed + self.rank)

        use_bf16 = self.s.precision == "bf16" or (self.s.precision == "auto" and on_gpu)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.s.model_path, dtype=torch.float32)
        model.config.use_cache = False
        if self.s.freeze_vision:
            _vision_module(model).requires_grad_(False)
        if self.s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.processor = PolicyProcessor.from_pretrained(self.s.model_path, max_pixels=self.s.max_pixels)

        decay, no_decay = [], []
        for param in model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": self.s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # Our own torch AdamW: DeepSpeed's fused one JIT-compiles for ~40 s and is slower on CPU.
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.s.lr,
                                      betas=tuple(self.s.adam_betas), eps=self.s.adam_eps)
        schedule = lambda step: warmup_cosine(step, self.s.total_steps, self.s.warmup_ratio, self.s.min_lr_ratio)  # noqa: E731
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer,
            # a callable so the scheduler drives the optimizer DeepSpeed wraps (ZeRO swaps the param groups)
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=deepspeed_config(self.s, self.world_size, use_bf16),
        )
        self.loss_fn = LOSSES[self.s.loss]
        return {"rank": self.rank, "device": str(self.engine.device), "bf16": use_bf16,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # ---- training -----------------------------------------------------------------------------
    def _forward_logits(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k].to(self.engine.device) for k in MODEL_INPUTS if k in batch}
        if "pixel_values" in inputs and self.engine.bfloat16_enabled():
            inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        return self.engine(**inputs).logits

    def _forward_logprobs(self, batch: dict) -> torch.Tensor:
        return next_token_logprobs(self._forward_logits(batch), batch["input_ids"].to(self.engine.device))

    def train_step(self, micro_batches: list[dict], global_tokens: float) -> dict:
        """One optimizer step over this rank's micro batches (exactly accumulation_steps of them).

        `global_tokens` is the trained-token count of the whole global batch (all ranks): every micro
        loss is its token sum over that, so the step is the global token-mean whatever the split.
        """
        def loss_step(batch):
            logprobs = self._forward_logprobs(batch)
            return self.loss_fn(logprobs, {k: v.to(logprobs.device) for k, v in batch.items()}, global_tokens)
        return self.accumulate_and_step(micro_batches, loss_step)

    def accumulate_and_step(self, micro_batches: list[dict], loss_step) -> dict:
        """Backward every micro batch's loss (`loss_step(batch) -> (loss, metrics)`), then one optimizer
        step; returns the summed metrics plus lr, grad norm, token counts and seconds."""
        if len(micro_batches) != self.s.accumulation_steps:
            raise ValueError(f"rank {self.rank} got {len(micro_batches)} micro batches, expected "
                             f"{self.s.accumulation_steps} (global batch / (micro batch x learners))")
        self.engine.train()
        start = time.perf_counter()
        lr = self.engine.lr_scheduler.get_last_lr()[0]
        totals = {"tokens": 0, "padded_tokens": 0}
        for batch in micro_batches:
            loss, metrics = loss_step(batch)
            # DeepSpeed averages gradients over ranks; we want their sum (the loss is already global-normalised),
            # and we normalised ourselves instead of dividing by accumulation steps.
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            self.engine.step()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            totals["tokens"] += int(batch["attention_mask"].sum())
            totals["padded_tokens"] += batch["attention_mask"].numel()
        grad_norm = self.engine.get_global_grad_norm()
        totals.update(lr=lr, grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                      seconds=time.perf_counter() - start, global_step=self.engine.global_steps)
        return totals

    @torch.no_grad()
    def logprobs(self, batch: dict) -> torch.Tensor:
        """Next-token log-probs of a batch under the current weights, on CPU (for GRPO's old/ref terms)."""
        self.engine.eval()
        return self._forward_logprobs(batch).float().cpu()

    # ---- weights and checkpoints --------------------------------------------------------------
    def full_state_dict(self) -> dict | None:
        """The whole model's weights on CPU, on rank 0 (None elsewhere). Collective under ZeRO-3."""
        import deepspeed

        module = self.engine.module
        if self.s.zero_stage == 3:
            state = {}
            for name, param in module.named_parameters():
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if self.rank == 0:
                        state[name] = param.detach().cpu().clone()
            if self.rank != 0:
                return None
            # Same keys as an unpartitioned state_dict: persistent buffers yes, rotary caches no.
            keys = set(module.state_dict().keys())
            state.update({n: b.detach().cpu().clone() for n, b in module.named_buffers() if n in keys})
            return {k: v for k, v in state.items() if k in keys}
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if self.rank == 0 else None

    def save_checkpoint(self, folder: str) -> None:
        """Hugging Face weights + processor (rank 0) and DeepSpeed/RNG state (every rank) into `folder`."""
        folder = Path(folder)
        state = self.full_state_dict()
        if self.rank == 0:
            self.engine.module.save_pretrained(str(folder / "hf"), state_dict=state, safe_serialization=True)
            self.processor.save_pretrained(folder / "hf")
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        (folder / "rng").mkdir(exist_ok=True)
        torch.save(rng, folder / "rng" / f"rank{self.rank}.pt")
        torch.distributed.barrier()

    def load_checkpoint(self, folder: str) -> int:
        """Restore weights, optimizer, scheduler and RNG from a checkpoint; returns its global step."""
        folder = Path(folder)
        path, _client = self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state",
                                                    load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {folder / 'deepspeed'}: the checkpoint is incomplete")
        rng_file = folder / "rng" / f"rank{self.rank}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=False)
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        return int(self.engine.global_steps)

    def parameter_digest(self) -> dict:
        """Small summary of the weights (sum and L2 norm per tensor) for equality checks in tests."""
        state = self.full_state_dict()
        if state is None:
            return {}
        return {k: (float(v.double().sum()), float(v.double().norm())) for k, v in state.items()}

    def settings(self) -> dict:
        return asdict(self.s)

    def shutdown(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

