"""Per-token log-probabilities and the losses built on them (pure torch; no DeepSpeed, no Ray).

A loss takes the log-probabilities of the next tokens, the micro batch, and the number of trained
tokens in the WHOLE global batch, and returns the micro batch's share of the global loss:
sum over its trained tokens / global token count. Summed over every micro batch of every learner
this is the token-mean loss of the global batch, however the batch is split (the learner undoes
DeepSpeed's own division by accumulation steps and learner count), so one learner and two learners
take the same step. GRPO registers its own loss here with the same signature.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from learners.sft_masking import IGNORE_INDEX


def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | ...) for t in 0..T-2, shape [B, T-1], in fp32.

    cross_entropy over a flattened view avoids holding a full log_softmax copy of the logits.
    """
    vocab = logits.shape[-1]
    shifted = logits[:, :-1, :].reshape(-1, vocab).float()
    targets = input_ids[:, 1:].reshape(-1)
    return -F.cross_entropy(shifted, targets, reduction="none").view(input_ids.shape[0], -1)


def sft_loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], global_tokens: float) -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood of the trained tokens (labels != IGNORE_INDEX), normalised by the
    global batch's trained-token count."""
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).to(logprobs.dtype)
    nll_sum = -(logprobs * mask).sum()
    return nll_sum / global_tokens, {"nll_sum": nll_sum.item(), "trained_tokens": mask.sum().item()}


LossFn = Callable[[torch.Tensor, dict, float], tuple[torch.Tensor, dict]]
LOSSES: dict[str, LossFn] = {"sft": sft_loss}


def register_loss(name: str, fn: LossFn) -> None:
    """Add a loss (e.g. GRPO's) so a stage can select it with stage.loss=NAME."""
    LOSSES[name] = fn


# GRPO's loss lives in its own module (it has its own settings); registered here so stage.loss=grpo validates.
from learners.grpo_loss import grpo_loss  # noqa: E402

LOSSES["grpo"] = grpo_loss
