"""The GRPO-ATS objective: group-normalised advantages, the clipped per-token policy gradient, the KL
to the reference policy and the truncated importance-sampling weight (pure torch: no DeepSpeed, no Ray).

What is normalised by what. For one optimizer step (one mini-batch of trajectories, spread over
every learner and micro batch):

    loss = (1 / N) * sum over trajectories i, trained tokens t of
               w_it * pg_it  +  beta * kl_it
    pg_it = -min(r_it * A_i, clip(r_it, 1 - eps_low, 1 + eps_high) * A_i)
    r_it  = exp(logp_it - old_logp_it)          (1 on the first mini-batch of a step)
    w_it  = min(exp(old_logp_it - rollout_logp_it), tis_cap)   (1 when tis_cap is None)

N is the mini-batch's total count of MODEL tokens (tokens the policy generated), over all learners:
the prompt, sandbox replies and their `<sandbox_output>` tags are in neither the sum nor N. "Trained"
tokens are the model tokens, minus the code tokens when `code_tokens: mask`; masked code tokens stay
in N, so masking code scales the gradient down by the code share rather than re-weighting the text
up. Each micro batch returns its share (its token sum over N); the learner undoes DeepSpeed's own
averaging, so the step is the same for 1 or N learners and any micro-batch split.

ATS: code tokens were sampled at temperature 0 but their log-probs (rollout, old, reference and
current) are all at temperature 1, the untempered policy, as the paper's release trains them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class GRPOLossConfig:
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_beta: float = 0.001
    kl_estimator: str = "k3"
    tis_cap: float | None = None  # truncated importance sampling for engine/learner mismatch; None = off

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.eps_low < 0 or self.eps_high < 0 or self.kl_beta < 0:
            raise ValueError("eps_low, eps_high and kl_beta must be >= 0")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0 or None, got {self.tis_cap}")


# ---- advantages ---------------------------------------------------------------------------------
def group_advantages(rewards: list[float], eps: float = 1e-6) -> tuple[list[float], bool]:
    """(r - mean) / (std + eps) within one group, and whether the group had zero variance.

    std is the sample standard deviation (n - 1), as TRL and verl use. A group of one, or one whose
    rewards are all equal, carries no signal: its advantages are 0 and it is reported as zero-variance.
    """
    n = len(rewards)
    if n < 2:
        return [0.0] * n, True
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
    if std < eps:
        return [0.0] * n, True
    return [(r - mean) / (std + eps) for r in rewards], False


# ---- per-token terms ----------------------------------------------------------------------------
def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman's k1, k2, k3).

    With d = ref_logp - logp: k1 = -d (unbiased, can be negative), k2 = d^2 / 2, k3 = exp(d) - d - 1
    (unbiased and >= 0; the GRPO paper's choice). The log-ratio is clamped so a token the reference
    finds nearly impossible cannot overflow exp().
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {KL_ESTIMATORS}")


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(r A, clip(r) A) and whether the clipped term was the one taken (for clip fraction)."""
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def grpo_loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], global_tokens: float,
              cfg: GRPOLossConfig = GRPOLossConfig()) -> tuple[torch.Tensor, dict]:
    """The micro batch's share of the step's loss (see the module doc), and its metric sums.

    logprobs [B, T-1]: current next-token log-probs. The batch holds, aligned with them:
    `train_mask` (1 on trained tokens), `model_mask` (1 on model tokens: only counted, for metrics),
    `advantages` [B], `old_logprobs`, `ref_logprobs` (when kl_beta > 0), `rollout_logprobs` (when
    tis_cap is set). `global_tokens` is N.
    """
    mask = batch["train_mask"].to(logprobs.dtype)
    old = batch.get("old_logprobs")
    old = logprobs.detach() if old is None else old
    advantages = batch["advantages"].to(logprobs.dtype).unsqueeze(1)
    pg, was_clipped = clipped_policy_loss(logprobs, old, advantages, cfg.eps_low, cfg.eps_high)
    metrics = {}
    if cfg.tis_cap is not None:
        weight = torch.exp((old - batch["rollout_logprobs"]).clamp(-20.0, 20.0)).clamp(max=cfg.tis_cap).detach()
        pg = pg * weight
        metrics["tis_weight_sum"] = float((weight * mask).sum())
        metrics["tis_capped"] = float(((weight >= cfg.tis_cap) & (mask > 0)).sum())
    per_token = pg
    if cfg.kl_beta > 0:
        kl = kl_penalty(logprobs, batch["ref_logprobs"], cfg.kl_estimator)
        per_token = per_token + cfg.kl_beta * kl
        metrics["kl_sum"] = float((kl.detach() * mask).sum())
    loss = (per_token * mask).sum() / global_tokens
    metrics.update(
        pg_sum=float((pg.detach() * mask).sum()),
        clipped_tokens=float((was_clipped & (mask > 0)).sum()),
        trained_tokens=float(mask.sum()),
        model_tokens=float(batch["model_mask"].sum()) if "model_mask" in batch else float(mask.sum()),
    )
    return loss, metrics


def token_entropy(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Entropy of the full next-token distribution at every position, [B, T] in fp32 (no gradient).

    In chunks along the sequence so a 150k vocabulary never needs a second fp32 copy of all logits.
    """
    out = []
    with torch.no_grad():
        for start in range(0, logits.shape[1], chunk):
            piece = logits[:, start:start + chunk].float()
            logz = torch.logsumexp(piece, dim=-1)
            out.append(logz - (torch.softmax(piece, dim=-1) * piece).sum(-1))
    return torch.cat(out, dim=1)
