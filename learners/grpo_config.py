"""Typed settings of a GRPO stage (`stage.grpo` in conf/stage/grpo*.yaml) and the placement plan of
its actors (the RL fields of conf/cluster/*), both checked before Ray starts."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from learners.grpo_loss import KL_ESTIMATORS
from learners.train_config import ConfigError


@dataclass
class GRPOSettings:
    group_size: int = 4               # G: rollouts per prompt (stage.global_batch counts trajectories)
    kl_beta: float = 0.001            # 0 needs no reference policy
    kl_estimator: str = "k3"          # k1 | k2 | k3 (learners/grpo_loss.py)
    eps_low: float = 0.2              # clip range of the importance ratio: [1 - eps_low, 1 + eps_high]
    eps_high: float = 0.2
    mini_batches: int = 1             # optimizer steps per training step (1 = strictly on-policy)
    zero_variance: str = "keep"       # groups with equal rewards: keep (advantage 0) | drop (dynamic sampling)
    refill_rounds: int = 2            # with zero_variance=drop: extra generation rounds to refill the batch
    untrainable: str = "drop"         # episodes that cannot be trained: drop (out of the group) | zero_weight
    code_tokens: str = "train"        # ATS code tokens: train (with their T=1 log-probs) | mask (no gradient)
    tis_cap: float | None = None      # truncated importance sampling cap for engine/learner mismatch; null = off
    max_staleness: int = 0            # rollouts older than this many weight versions are regenerated
    overlap: bool = False             # generate step k+1 while step k trains (needs max_staleness >= 1)
    max_train_tokens: int = 8192      # longer episodes are set apart as untrainable (counted)
    weight_sync_bucket_mb: int = 512  # NCCL transfer to vLLM engines, bucket by bucket
    sampling: dict = field(default_factory=dict)  # overrides of rollout.sampling for training rollouts

    def loss_options(self) -> dict:
        return {"eps_low": self.eps_low, "eps_high": self.eps_high, "kl_beta": self.kl_beta,
                "kl_estimator": self.kl_estimator, "tis_cap": self.tis_cap}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def grpo_settings(values: dict | None, global_batch: int, micro_batch: int, num_learners: int) -> GRPOSettings:
    """stage.grpo as GRPOSettings, refusing unknown keys and sizes that do not divide."""
    values = dict(values or {})
    known = {f.name for f in fields(GRPOSettings)}
    unknown = sorted(set(values) - known)
    _check(not unknown, f"unknown setting(s) {', '.join('stage.grpo.' + k for k in unknown)}; known: {', '.join(sorted(known))}")
    g = GRPOSettings(**values)
    _check(g.group_size >= 2, f"stage.grpo.group_size={g.group_size}: GRPO needs at least 2 rollouts per prompt "
                              "(advantages are relative to the group)")
    _check(global_batch % g.group_size == 0,
           f"stage.global_batch={global_batch} trajectories is not a multiple of stage.grpo.group_size="
           f"{g.group_size}; set stage.global_batch to {max(1, global_batch // g.group_size) * g.group_size}")
    per_pass = g.mini_batches * micro_batch * num_learners
    _check(g.mini_batches >= 1 and global_batch % per_pass == 0,
           f"stage.global_batch={global_batch} is not a multiple of stage.grpo.mini_batches ({g.mini_batches}) x "
           f"stage.micro_batch ({micro_batch}) x cluster.num_learners ({num_learners}) = {per_pass}")
    _check(g.kl_beta >= 0, f"stage.grpo.kl_beta={g.kl_beta}: must be >= 0 (0 = no KL, no reference model)")
    _check(g.kl_estimator in KL_ESTIMATORS, f"stage.grpo.kl_estimator={g.kl_estimator!r}: use one of {KL_ESTIMATORS}")
    _check(g.eps_low >= 0 and g.eps_high >= 0, "stage.grpo.eps_low and eps_high must be >= 0")
    _check(g.zero_variance in ("keep", "drop"), f"stage.grpo.zero_variance={g.zero_variance!r}: use keep or drop")
    _check(g.untrainable in ("drop", "zero_weight"), f"stage.grpo.untrainable={g.untrainable!r}: use drop or zero_weight")
    _check(g.code_tokens in ("train", "mask"), f"stage.grpo.code_tokens={g.code_tokens!r}: use train or mask")
    _check(g.tis_cap is None or g.tis_cap > 0, f"stage.grpo.tis_cap={g.tis_cap}: must be > 0, or null for off")
    _check(g.max_staleness >= 0 and g.refill_rounds >= 0, "stage.grpo.max_staleness and refill_rounds must be >= 0")
    _check(not g.overlap or g.max_staleness >= 1,
           "stage.grpo.overlap=true trains on rollouts one weight version old: set stage.grpo.max_staleness=1")
    _check(g.max_train_tokens >= 16, f"stage.grpo.max_train_tokens={g.max_train_tokens}: too small")
    _check(g.weight_sync_bucket_mb >= 1, "stage.grpo.weight_sync_bucket_mb must be >= 1")
    return g


@dataclass(frozen=True)
class PlacementPlan:
    """What a GRPO stage asks of the cluster, by actor type."""

    items: tuple[tuple[str, int, int], ...]  # (what, GPUs, CPUs)

    @property
    def gpus(self) -> int:
        return sum(g for _w, g, _c in self.items)

    @property
    def cpus(self) -> int:
        return sum(c for _w, _g, c in self.items)

    def describe(self) -> str:
        return "; ".join(f"{what}: {g} GPU, {c} CPU" for what, g, c in self.items)


def rl_placement(cluster, kl_beta: float, judge_gpus: int) -> PlacementPlan:
    """Every actor of a GRPO stage with the resources its config gives it."""
    c = cluster
    items = [(f"{c.num_learners} learner(s) (cluster.num_learners x gpus/cpus_per_learner)",
              c.num_learners * c.gpus_per_learner, c.num_learners * c.cpus_per_learner),
             (f"{c.rollout_engines} rollout engine(s) (cluster.rollout_engines x gpus/cpus_per_engine)",
              c.rollout_engines * c.gpus_per_engine, c.rollout_engines * c.cpus_per_engine),
             (f"{c.sandbox_actors} sandbox actor(s) (cluster.sandbox_actors x cpus_per_sandbox)", 0,
              c.sandbox_actors * c.cpus_per_sandbox),
             ("the reward actor (cluster.reward_cpus)", 0, c.reward_cpus)]
    if kl_beta > 0 and c.reference == "separate":
        items.append((f"{c.reference_workers} reference worker(s) (cluster.reference_workers x gpus/cpus_per_reference)",
                      c.reference_workers * c.gpus_per_reference, c.reference_workers * c.cpus_per_reference))
    if judge_gpus:
        items.append(("the vLLM judge (judge.vllm.gpus)", judge_gpus, 0))
    return PlacementPlan(tuple(items))


def validate_rl_cluster(cluster) -> None:
    c = cluster
    _check(c.rollout_engines >= 1, f"cluster.rollout_engines={c.rollout_engines}: need at least 1 engine")
    _check(c.gpus_per_engine >= 0 and c.cpus_per_engine >= 1, "cluster.gpus_per_engine >= 0 and cpus_per_engine >= 1")
    _check(c.sandbox_actors >= 1 and c.cpus_per_sandbox >= 1, "cluster.sandbox_actors and cpus_per_sandbox must be >= 1")
    _check(c.reward_cpus >= 1, "cluster.reward_cpus must be >= 1")
    _check(c.reference in ("colocated", "separate"), f"cluster.reference={c.reference!r}: use colocated or separate")
    _check(c.reference_workers >= 1, "cluster.reference_workers must be >= 1")


def check_plan_fits(plan: PlacementPlan, available_gpus: int, available_cpus: int) -> None:
    """Refuse a plan the cluster cannot hold, naming what is missing and who asks for it."""
    short = []
    if plan.gpus > available_gpus:
        short.append(f"{plan.gpus} GPUs but the cluster has {available_gpus}")
    if plan.cpus > available_cpus:
        short.append(f"{plan.cpus} CPUs but the cluster has {available_cpus}")
    _check(not short, f"the GRPO stage needs {' and '.join(short)} ({plan.describe()}); lower the counts in "
                      "conf/cluster (or use cluster.reference=colocated), or add nodes")
