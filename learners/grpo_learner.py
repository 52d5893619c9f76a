"""The GRPO learner: a Learner (same DeepSpeed engine, checkpoints, resume) that trains on rollouts.

One `grpo_step` call per training step and rank: collate this rank's trajectories, get the
reference log-probs (a colocated reference, or ones the driver attached from a separate reference
group), the old log-probs when the step has several mini-batches (the weights before its first
update; with one mini-batch the old policy IS the current one, so its log-probs are the training
forward's own, detached), then one optimizer step per mini-batch. The gap between the log-probs the
engine recorded at rollout and this recomputation is measured on the way (before any update).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial

import torch

from learners.grpo_loss import GRPOLossConfig, grpo_loss, token_entropy
from learners.learner import Learner
from learners.losses import next_token_logprobs
from learners.rollout_collate import collate_trajectories

REFERENCE_MODES = ("none", "colocated", "separate")


@dataclass
class GRPOLearnerOptions:
    loss: dict = field(default_factory=dict)  # GRPOLossConfig fields
    code_tokens: str = "train"  # train | mask
    reference: str = "none"  # none (kl_beta 0) | colocated | separate
    reference_path: str | None = None  # the stage's starting weights (the KL's anchor)


class GapStats:
    """|rollout log-prob - learner log-prob| over model tokens: sum, max, count."""

    def __init__(self):
        self.total, self.max, self.count = 0.0, 0.0, 0

    def add(self, learner_logprobs: torch.Tensor, batch: dict) -> None:
        mask = batch["model_mask"] > 0
        if not bool(mask.any()):
            return
        gap = (learner_logprobs.detach().float().cpu() - batch["rollout_logprobs"])[mask].abs()
        self.total += float(gap.sum())
        self.max = max(self.max, float(gap.max()))
        self.count += int(mask.sum())

    def as_dict(self) -> dict:
        return {"logprob_gap_sum": self.total, "logprob_gap_max": self.max, "logprob_gap_tokens": self.count}


class GRPOLearner(Learner):
    def setup(self, master_addr: str, master_port: int) -> dict:
        info = super().setup(master_addr, master_port)
        self.options = GRPOLearnerOptions(**(self.s.grpo or {}))
        self.loss_cfg = GRPOLossConfig(**self.options.loss)
        self.loss_fn = partial(grpo_loss, cfg=self.loss_cfg)
        tokenizer = self.processor.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.token_bytes = None
        if self.options.code_tokens == "mask":
            from policy.ats import TokenBytes

            self.token_bytes = TokenBytes(tokenizer)
        self.reference = None
        if self.options.reference == "colocated":
            from learners.reference import ReferencePolicy

            self.reference = ReferencePolicy(self.options.reference_path or self.s.model_path, self.s.zero_stage,
                                             self.engine.bfloat16_enabled(), self.world_size)
        return {**info, "reference": self.options.reference}

    def _collate(self, micro: list) -> dict:
        batch = collate_trajectories(micro, self.processor, self.pad_id, self.token_bytes, self.options.code_tokens)
        if micro[0].ref_logprobs is not None:  # from a separate reference group
            width = batch["input_ids"].shape[1] - 1
            ref = torch.zeros((len(micro), width))
            for row, t in enumerate(micro):
                ref[row, :len(t.ref_logprobs)] = torch.as_tensor(t.ref_logprobs)
            batch["ref_logprobs"] = ref
        return batch

    def grpo_step(self, mini_batches: list[list[list]], global_tokens: list[float]) -> dict:
        """This rank's part of one training step: `mini_batches[m]` holds its micro batches (lists of
        Trajectory) of mini-batch m, whose model-token count over all ranks is `global_tokens[m]`."""
        started = time.perf_counter()
        collated = [[self._collate(micro) for micro in mini] for mini in mini_batches]
        collate_s = time.perf_counter() - started
        started = time.perf_counter()
        if self.reference is not None:
            for mini in collated:
                for batch in mini:
                    batch["ref_logprobs"] = self.reference.logprobs(batch)
        gap = GapStats()
        if len(collated) > 1:
            for mini in collated:
                for batch in mini:
                    batch["old_logprobs"] = self.logprobs(batch)
                    gap.add(batch["old_logprobs"], batch)
        logprob_s = time.perf_counter() - started
        results = []
        for m, mini in enumerate(collated):
            results.append(self.accumulate_and_step(mini, partial(self._loss_step, tokens=global_tokens[m],
                                                                   gap=gap if m == 0 and len(collated) == 1 else None)))
        return {"mini_batches": results, **gap.as_dict(), "collate_s": collate_s, "ref_old_logprob_s": logprob_s,
                "seconds": time.perf_counter() - started + collate_s}

    def _loss_step(self, batch: dict, tokens: float, gap: GapStats | None):
        logits = self._forward_logits(batch)
        logprobs = next_token_logprobs(logits, batch["input_ids"].to(logits.device))
        tensors = {k: v.to(logprobs.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        loss, metrics = self.loss_fn(logprobs, tensors, tokens)
        model_mask = tensors["model_mask"]
        metrics["entropy_sum"] = float((token_entropy(logits[:, :-1]) * model_mask).sum())
        if gap is not None:
            gap.add(logprobs, batch)
        return loss, metrics

    # ---- weights for the engines, bucket by bucket ----------------------------------------------
    def weight_bucket_plan(self, bucket_bytes: int) -> list[list[tuple[str, tuple[int, ...], str]]]:
        """The model's parameters cut into buckets of about `bucket_bytes` (names, full shapes, dtypes),
        in named_parameters order; every rank computes the same plan."""
        plan, bucket, size = [], [], 0
        for name, param in self.engine.module.named_parameters():
            shape = tuple(getattr(param, "ds_shape", param.shape))  # ZeRO-3 keeps the full shape in ds_shape
            nbytes = math.prod(shape) * param.element_size()
            if bucket and size + nbytes > bucket_bytes:
                plan.append(bucket)
                bucket, size = [], 0
            bucket.append((name, shape, str(param.dtype).removeprefix("torch.")))
            size += nbytes
        if bucket:
            plan.append(bucket)
        return plan

    def gathered_buckets(self, plan):
        """Yield each bucket's full tensors on rank 0 (None elsewhere); collective under ZeRO-3, so every
        rank must iterate. Only one bucket is ever gathered at a time."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        for bucket in plan:
            group = [params[name] for name, _shape, _dtype in bucket]
            if self.s.zero_stage == 3:
                with deepspeed.zero.GatheredParameters(group, modifier_rank=None):
                    yield [(n, p.detach().clone()) for (n, _s, _d), p in zip(bucket, group)] if self.rank == 0 else None
            else:
                yield [(n, p.detach()) for (n, _s, _d), p in zip(bucket, group)] if self.rank == 0 else None

    def publish_weights(self) -> list | None:
        """The whole state dict in Ray's object store (rank 0; None elsewhere), for HF engines: the
        driver hands the reference to every rollout actor, so the weights never pass through it."""
        import ray

        state = self.full_state_dict()
        return None if state is None else [ray.put(state)]

    # ---- NCCL transfer to vLLM engines (GPU clusters; policy/vllm_weight_transfer.py) -------------
    def start_weight_sender(self, master_address: str, master_port: int, world_size: int) -> None:
        """Rank 0 joins the transfer group with every engine worker (blocks until they have joined)."""
        if self.rank == 0:
            from policy.vllm_weight_transfer import WeightSender

            self._sender = WeightSender(master_address, master_port, world_size, self.engine.device)

    def send_weights(self, plan) -> int:
        """Gather bucket by bucket and broadcast each from rank 0; every rank takes part in the gather."""
        sent = 0
        for bucket in self.gathered_buckets(plan):
            if bucket is not None:
                self._sender.send(bucket)
                sent += len(bucket)
        return sent
