"""Every actor of a GRPO stage, placed on the cluster as conf/cluster says, and released together.

- learners: GRPOLearner actors on one placement group (learners/learner_actor.LearnerGroup);
- reference: with `cluster.reference: separate` (and kl_beta > 0) ReferenceWorkers on a placement
  group of their own; `colocated` puts it inside each learner;
- rollout engines: one RolloutActor per bundle of a placement group ({GPU: gpus_per_engine,
  CPU: cpus_per_engine} each; a tensor-parallel engine keeps its GPUs on one node);
- sandboxes: a SandboxPool of `sandbox_actors` SandboxActors shared by every engine;
- rewards: one RewardActor (and the vLLM judge servers when judge=vllm).
Thin on purpose: it creates and releases; the GRPO trainer drives.
"""
from __future__ import annotations

import logging

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.reward_actor import create_reward_actor
from actors.rollout_actor import RolloutActor
from actors.sandbox_pool import MAX_RESTARTS, SandboxPool

log = logging.getLogger(__name__)
# Rollout, sandbox and reward actors come back after a crash (MAX_RESTARTS; a restarted engine gets
# the current weights from the trainer before it generates again); learners do not: their state is the run's.


class RLWorkers:
    def __init__(self, cluster, learner_settings: dict, model_path: str, *, rollout: dict, sandbox: dict,
                 reward: dict | None, judge: dict | None, reference_settings: dict | None = None,
                 prompt: dict | None = None, ready_timeout_s: float = 600):
        from learners.learner_actor import GRPOLearnerActor, LearnerGroup, ReferenceActor

        c = cluster
        self.learners = self.reference = self.engine_group = self.sandbox_pool = None
        self.reward = self.judge_group = None
        self.engines: list = []
        try:
            self.learners = LearnerGroup(c.num_learners, c.gpus_per_learner, c.cpus_per_learner, learner_settings,
                                         strategy=c.placement_strategy, ready_timeout_s=ready_timeout_s,
                                         actor_class=GRPOLearnerActor)
            if reference_settings is not None:
                self.reference = LearnerGroup(c.reference_workers, c.gpus_per_reference, c.cpus_per_reference,
                                              reference_settings, strategy=c.placement_strategy,
                                              ready_timeout_s=ready_timeout_s, actor_class=ReferenceActor)
            self.sandbox_pool = SandboxPool(n_actors=c.sandbox_actors, config=sandbox, num_cpus=c.cpus_per_sandbox)
            bundle = {"CPU": c.cpus_per_engine, **({"GPU": c.gpus_per_engine} if c.gpus_per_engine else {})}
            self.engine_group = placement_group([bundle] * c.rollout_engines, strategy=c.placement_strategy)
            ready, _ = ray.wait([self.engine_group.ready()], timeout=ready_timeout_s)
            if not ready:
                raise TimeoutError(f"the cluster could not place {c.rollout_engines} rollout engine(s) with {bundle} "
                                   f"each within {ready_timeout_s:.0f} s; lower cluster.rollout_engines")
            self.engines = [
                RolloutActor.options(num_cpus=c.cpus_per_engine, num_gpus=c.gpus_per_engine, max_restarts=MAX_RESTARTS,
                                     scheduling_strategy=PlacementGroupSchedulingStrategy(
                                         self.engine_group, placement_group_bundle_index=i)).remote(
                    model_path, rollout=rollout, sandbox_pool=self.sandbox_pool, prompt=prompt)
                for i in range(c.rollout_engines)]
            self.reward, self.judge_group = create_reward_actor(reward, judge, num_cpus=c.reward_cpus,
                                                                max_restarts=MAX_RESTARTS)
            ray.get([e.stats.remote() for e in self.engines])  # engines loaded (raises their start-up error here)
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Release everything this created, whatever state it is in (a failed start included)."""
        for engine in self.engines:
            try:
                ray.get(engine.shutdown.remote(), timeout=60)
            except Exception:  # noqa: BLE001  (a dead actor must not keep the rest alive)
                pass
            ray.kill(engine)
        self.engines = []
        if self.engine_group is not None:
            remove_placement_group(self.engine_group)
            self.engine_group = None
        for group in (self.learners, self.reference):
            if group is not None:
                group.shutdown()
        self.learners = self.reference = None
        if self.sandbox_pool is not None:
            try:
                self.sandbox_pool.shutdown()
            except Exception:  # noqa: BLE001
                pass
            self.sandbox_pool = None
        if self.reward is not None:
            try:
                ray.get(self.reward.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001
                pass
            ray.kill(self.reward)
            self.reward = None
        if self.judge_group is not None:
            self.judge_group.stop()
            self.judge_group = None
