"""Trajectories (learners/grpo_batch.Trajectory) -> model inputs and per-token masks (learner side).

Per-token tensors are aligned with next-token log-probs: position t scores token t+1, so masks and
rollout log-probs are shifted by one. `model_mask` is 1 on tokens the policy generated (the agent
loop's loss mask: prompt, forced prefix, sandbox replies and their tags are 0); `train_mask` is
`model_mask`, minus code tokens under `code_tokens: mask`, times the trajectory's weight (0 for the
filler copies that keep ranks in step).
"""
from __future__ import annotations

import io

import torch
from PIL import Image

from policy.ats import CodeSpanTracker, TokenBytes


def code_token_mask(token_ids: list[int], segments: list, token_bytes: TokenBytes) -> list[int]:
    """1 on tokens generated inside an open `<code>` block (those ATS sampled at the code temperature).

    The state is followed over the reply as the engine followed it: a sandbox reply closes the round,
    so the next round starts outside code; a forced prefix can leave a round open inside code.
    """
    mask = [0] * len(token_ids)
    tracker = CodeSpanTracker()
    for kind, start, end in segments:
        if kind == "prompt":
            continue
        if kind == "sandbox":
            tracker = CodeSpanTracker()
            continue
        for i in range(start, end):
            mask[i] = int(tracker.in_code and kind == "model")
            tracker.feed(token_bytes[token_ids[i]])
    return mask


def collate_trajectories(trajectories: list, processor, pad_id: int, token_bytes: TokenBytes | None = None,
                         code_tokens: str = "train") -> dict[str, torch.Tensor]:
    """Right-padded model inputs plus train_mask, model_mask, advantages and rollout_logprobs."""
    if code_tokens not in ("train", "mask"):
        raise ValueError(f"code_tokens must be train or mask, got {code_tokens!r}")
    width = max(len(t.token_ids) for t in trajectories)
    rows = len(trajectories)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    model_mask = torch.zeros((rows, width), dtype=torch.float32)
    train_mask = torch.zeros((rows, width), dtype=torch.float32)
    rollout = torch.zeros((rows, width), dtype=torch.float32)
    images = []
    for row, t in enumerate(trajectories):
        n = len(t.token_ids)
        input_ids[row, :n] = torch.tensor(t.token_ids, dtype=torch.long)
        attention[row, :n] = 1
        model_mask[row, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        trained = model_mask[row, :n] * t.weight
        if code_tokens == "mask":
            code = torch.tensor(code_token_mask(t.token_ids, t.segments, token_bytes), dtype=torch.float32)
            trained = trained * (1 - code)
        train_mask[row, :n] = trained
        rollout[row, :n] = torch.tensor(t.rollout_logprobs, dtype=torch.float32)
        images += [Image.open(io.BytesIO(b)).convert("RGB") for b in t.images]
    batch = {"input_ids": input_ids, "attention_mask": attention,
             "model_mask": model_mask[:, 1:] * torch.tensor([float(t.weight > 0) for t in trajectories]).unsqueeze(1),
             "train_mask": train_mask[:, 1:], "rollout_logprobs": rollout[:, 1:],
             "advantages": torch.tensor([t.advantage for t in trajectories], dtype=torch.float32)}
    if images:
        batch.update(processor.pixel_inputs(images))
    batch["mm_token_type_ids"] = (input_ids == processor.image_pad_id).to(torch.int)
    return batch
