"""The reference policy GRPO's KL is measured against: the stage's starting weights, frozen.

`ReferencePolicy` is the model itself, inside a DeepSpeed engine without an optimizer (under ZeRO-3
its parameters are partitioned over the ranks that hold it, as OpenRLHF does for its reference).
It lives either on the learners (`cluster.reference: colocated`: each learner holds one, in the same
process group) or on its own bundles (`separate`: a `ReferenceWorker` group with its own process
group, as placed by learners.learner_actor.LearnerGroup).
"""
from __future__ import annotations

import numpy as np
import torch

from learners.learner import MODEL_INPUTS, free_rendezvous_address, init_process_group
from learners.losses import next_token_logprobs


class ReferencePolicy:
    def __init__(self, model_path: str, zero_stage: int, use_bf16: bool, world_size: int):
        import deepspeed
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
        model.config.use_cache = False
        model.requires_grad_(False)
        config = {
            "train_micro_batch_size_per_gpu": 1, "train_batch_size": world_size, "gradient_accumulation_steps": 1,
            "bf16": {"enabled": use_bf16},
            # ZeRO-3 partitions the frozen weights; below 3 there is nothing to partition without an optimizer.
            "zero_optimization": {"stage": 3 if zero_stage == 3 else 0},
            "steps_per_print": 1 << 30,
        }
        self.engine, *_ = deepspeed.initialize(model=model, config=config)
        self.engine.eval()

    @torch.no_grad()
    def logprobs(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k].to(self.engine.device) for k in MODEL_INPUTS if k in batch}
        if "pixel_values" in inputs and self.engine.bfloat16_enabled():
            inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        return next_token_logprobs(self.engine(**inputs).logits, inputs["input_ids"]).float().cpu()


class ReferenceWorker:
    """A reference policy on bundles of its own (one per rank); the driver sends it trajectories and
    gets back each one's next-token log-probs."""

    def __init__(self, rank: int, world_size: int, local_rank: int, settings: dict):
        from learners.learner import LearnerSettings

        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.s = LearnerSettings(**settings)

    def node_address(self) -> tuple[str, int]:
        return free_rendezvous_address()

    def setup(self, master_addr: str, master_port: int) -> dict:
        from policy.multimodal import PolicyProcessor

        on_gpu = init_process_group(self.rank, self.world_size, self.local_rank, master_addr, master_port)
        use_bf16 = self.s.precision == "bf16" or (self.s.precision == "auto" and on_gpu)
        self.processor = PolicyProcessor.from_pretrained(self.s.model_path, max_pixels=self.s.max_pixels)
        self.pad_id = self.processor.tokenizer.pad_token_id or self.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.policy = ReferencePolicy(self.s.model_path, self.s.zero_stage, use_bf16, self.world_size)
        return {"rank": self.rank, "role": "reference", "bf16": use_bf16}

    def trajectory_logprobs(self, micro_batches: list[list]) -> list[list[np.ndarray]]:
        """Per micro batch, per trajectory: log p(token t+1 | ...) for t < len - 1 (float32)."""
        from learners.rollout_collate import collate_trajectories

        out = []
        for micro in micro_batches:
            batch = collate_trajectories(micro, self.processor, self.pad_id)
            logprobs = self.policy.logprobs(batch)
            out.append([logprobs[row, :len(t.token_ids) - 1].numpy().astype(np.float32) for row, t in enumerate(micro)])
        return out

    def shutdown(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
