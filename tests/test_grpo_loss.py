"""GRPO's pure parts against hand-computed values: advantages, KL estimators, the clipped loss, the
token normalisation over micro batches and ranks, the masks built from rollouts, and the dealing of
trajectories to ranks."""
from __future__ import annotations

import math

import pytest
import torch

from learners.grpo_batch import Trajectory, build_trajectories, deal, model_token_counts, untrainable_reason
from learners.grpo_loss import GRPOLossConfig, clipped_policy_loss, group_advantages, grpo_loss, kl_penalty, token_entropy


def test_group_advantages_by_hand():
    advantages, flat = group_advantages([1.0, 0.0, 0.0, 1.0], eps=0.0)
    # mean 0.5; sample std sqrt((4 * 0.25) / 3) = 0.57735
    assert not flat
    assert advantages == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-6)
    advantages, _ = group_advantages([2.0, 1.0, 0.0])  # mean 1, std 1
    assert advantages == pytest.approx([1.0, 0.0, -1.0], abs=1e-5)
    assert group_advantages([0.5, 0.5, 0.5]) == ([0.0, 0.0, 0.0], True)
    assert group_advantages([1.0]) == ([0.0], True)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # d = ref - logp = -ln 2
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(math.log(2))
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(0.5 + math.log(2) - 1)
    same = torch.tensor([-1.3])
    for estimator in ("k1", "k2", "k3"):
        assert float(kl_penalty(same, same, estimator)) == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def test_clipped_policy_loss_by_hand():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # old log-probs 0: ratios 1.5, 1.5, 0.5, 0.5
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, torch.zeros(4), advantages, 0.2, 0.2)
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert clipped.tolist() == [True, False, False, True]
    loss, _ = clipped_policy_loss(logp, torch.zeros(4), advantages, 0.2, 0.3)  # eps_high widens the top only
    assert loss.tolist() == pytest.approx([-1.3, 1.5, -0.5, 0.8])


def _batch():
    torch.manual_seed(0)
    logp = torch.log(torch.rand(4, 5) * 0.9 + 0.05)
    batch = {
        "train_mask": torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 1]], dtype=torch.float32),
        "advantages": torch.tensor([1.0, -0.5, 0.25, 2.0]),
        "old_logprobs": logp + 0.1 * torch.randn(4, 5),
        "ref_logprobs": logp + 0.3 * torch.randn(4, 5),
        "rollout_logprobs": logp + 0.05 * torch.randn(4, 5),
    }
    batch["model_mask"] = batch["train_mask"].clone()
    return logp, batch


def test_grpo_loss_by_hand_and_split_invariance():
    logp, batch = _batch()
    cfg = GRPOLossConfig(eps_low=0.2, eps_high=0.28, kl_beta=0.05, kl_estimator="k3")
    tokens = float(batch["train_mask"].sum())
    loss, metrics = grpo_loss(logp, batch, tokens, cfg)
    # by hand, token by token
    expected, kl_sum = 0.0, 0.0
    for i in range(4):
        for t in range(5):
            if batch["train_mask"][i, t]:
                r = math.exp(float(logp[i, t] - batch["old_logprobs"][i, t]))
                a = float(batch["advantages"][i])
                pg = -min(r * a, min(max(r, 0.8), 1.28) * a)
                d = float(batch["ref_logprobs"][i, t] - logp[i, t])
                kl = math.exp(d) - d - 1
                expected += pg + 0.05 * kl
                kl_sum += kl
    assert float(loss) == pytest.approx(expected / tokens, rel=1e-5)
    assert metrics["kl_sum"] == pytest.approx(kl_sum, rel=1e-5) and metrics["trained_tokens"] == tokens

    # Any split into micro batches (or ranks), each normalised by the global count, sums to the same.
    parts = [grpo_loss(logp[rows], {k: v[rows] for k, v in batch.items()}, tokens, cfg)[0]
             for rows in ([0], [1, 2], [3])]
    assert float(sum(parts)) == pytest.approx(float(loss), rel=1e-6)
    # Gradients too: the step does not depend on how the batch is cut.
    whole = logp.clone().requires_grad_(True)
    grpo_loss(whole, batch, tokens, cfg)[0].backward()
    pieces = logp.clone().requires_grad_(True)
    for rows in ([0, 3], [1], [2]):
        grpo_loss(pieces[rows], {k: v[rows] for k, v in batch.items()}, tokens, cfg)[0].backward()
    assert torch.allclose(whole.grad, pieces.grad, atol=1e-7)


def test_grpo_loss_masks_and_importance_cap():
    logp, batch = _batch()
    cfg = GRPOLossConfig(kl_beta=0.0, tis_cap=1.02)
    masked = dict(batch, train_mask=torch.zeros_like(batch["train_mask"]))
    loss, metrics = grpo_loss(logp.requires_grad_(True), masked, 10.0, cfg)
    assert float(loss.detach()) == 0.0 and metrics["trained_tokens"] == 0.0  # nothing trained, nothing counted
    loss.backward()
    assert float(logp.grad.abs().sum()) == 0.0
    # The TIS weight is min(exp(old - rollout), cap), applied per token; without old log-probs the
    # training forward's own (detached) log-probs are the old ones: ratio 1.
    _, batch = _batch()
    on_policy = {k: v for k, v in batch.items() if k != "old_logprobs"}
    loss, metrics = grpo_loss(logp.detach(), on_policy, 1.0, cfg)
    weight = torch.exp(logp.detach() - batch["rollout_logprobs"]).clamp(max=1.02)
    expected = -(weight * batch["advantages"].unsqueeze(1) * batch["train_mask"]).sum()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert 0 < metrics["tis_capped"] <= metrics["trained_tokens"]


def test_token_entropy_matches_the_definition():
    logits = torch.randn(2, 7, 11)
    probs = torch.softmax(logits, -1)
    expected = -(probs * torch.log(probs)).sum(-1)
    assert torch.allclose(token_entropy(logits, chunk=3), expected, atol=1e-5)


def _record(episode: str, mask: list[int], ids: list[int] | None = None, code_runs=None) -> dict:
    ids = ids or list(range(10, 10 + len(mask)))
    return {"id": episode, "token_ids": ids, "loss_mask": mask, "logprobs": [-1.0] * len(ids),
            "segments": [["prompt", 0, 2], ["model", 2, len(ids)]], "images": [b"png"], "code_runs": code_runs or []}


def test_untrainable_episodes_and_group_outcomes():
    vision = {99}
    assert untrainable_reason(_record("a#0", [0, 0, 0]), vision, 100) == "no_model_tokens"
    assert untrainable_reason(_record("a#0", [0, 0, 1], [1, 2, 99]), vision, 100) == "image_placeholders"
    assert untrainable_reason(_record("a#0", [0, 0, 1, 1]), vision, 3) == "overlong"
    assert untrainable_reason(_record("a#0", [0, 1], code_runs=[{"sandbox_failed": True}]), vision, 100) == "sandbox_failed"
    assert untrainable_reason(_record("a#0", [0, 1, 1], [99, 2, 3]), vision, 100) is None  # a prompt image is fine

    records = [_record("p@0#0", [0, 0, 1]), _record("p@0#1", [0, 0, 1]), _record("p@0#2", [0, 0, 0]),
               _record("q@0#0", [0, 0, 1]), _record("q@0#1", [0, 0, 1])]
    rewards = [1.0, 0.0, 0.0, 0.5, 0.5]
    out = build_trajectories(records, rewards, vision_ids=vision, max_tokens=100)
    assert out.groups == 2 and out.zero_variance_groups == 1 and out.untrainable == {"no_model_tokens": 1}
    by_id = {t.id: t.advantage for t in out.trajectories}
    # p: the untrainable episode is left out before mean/std ([1, 0] -> +-0.7071); q: zero variance, kept at 0.
    assert by_id == pytest.approx({"p@0#0": 0.70711, "p@0#1": -0.70711, "q@0#0": 0.0, "q@0#1": 0.0}, abs=1e-4)
    kept = build_trajectories(records, rewards, vision_ids=vision, max_tokens=100, untrainable="zero_weight")
    # zero_weight: it stays in p's statistics ([1, 0, 0]: mean 1/3, std 0.57735) but is not trained on.
    assert {t.id: t.advantage for t in kept.trajectories}["p@0#0"] == pytest.approx(1.1547, abs=1e-3)
    assert "p@0#2" not in {t.id for t in kept.trajectories}
    dropped = build_trajectories(records, rewards, vision_ids=vision, max_tokens=100, zero_variance="drop")
    assert dropped.dropped_groups == ["q@0"] and {t.id for t in dropped.trajectories} == {"p@0#0", "p@0#1"}


def _trajectory(name: str, length: int, model: int) -> Trajectory:
    return Trajectory(name, list(range(length)), [0] * (length - model) + [1] * model, [0.0] * length,
                      [["prompt", 0, length - model], ["model", length - model, length]], [], 1.0, 1.0)


def test_deal_keeps_ranks_in_step_and_counts_tokens():
    trajectories = [_trajectory(f"t{i}", 10 + i, 3 + i) for i in range(5)]
    dealt = deal(trajectories, mini_batches=1, num_ranks=2, micro_batches_per_rank=2, micro_batch=2, seed=0)
    ranks = dealt[0]
    assert [len(rank) for rank in ranks] == [2, 2]  # same number of micro batches on every rank
    assert all(1 <= len(micro) <= 2 for rank in ranks for micro in rank)
    real = sorted(t.id for rank in ranks for micro in rank for t in micro if t.weight)
    assert real == sorted(t.id for t in trajectories)  # each trajectory exactly once
    assert model_token_counts(dealt) == [float(sum(3 + i for i in range(5)))]
    # Fewer trajectories than slots: fillers (weight 0, no tokens counted) keep every rank busy.
    few = deal(trajectories[:1], mini_batches=2, num_ranks=2, micro_batches_per_rank=1, micro_batch=1, seed=0)
    assert all(len(rank) == 1 for mini in few for rank in mini)
    assert model_token_counts(few) == [3.0, 0.0]
    with pytest.raises(ValueError, match="exceed"):
        deal(trajectories, mini_batches=1, num_ranks=1, micro_batches_per_rank=1, micro_batch=2, seed=0)
