"""Every actor of a GRPO stage, placed on the cluster as conf/cluster says, and released together.

- learners: GRPOLearner actors on one placement group (learners/learner_actor.LearnerGroup);
- reference: with `cluster.reference: separate` (and kl_beta > 0) ReferenceWorkers on a placement
  group of their own; `colocated` puts it inside each learner;
- rollout engines: one RolloutActor each, on a placement group of their own: a {CPU: cpus_per_engine}
  bundle per CPU engine, gpus_per_engine single-GPU bundles per GPU engine (a tensor-parallel vLLM
  engine runs one worker on each, actors/rollout_placement.py);
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
from actors.rollout_placement import RolloutPlacement
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
            self.engines = self._start_engines(c, model_path, rollout, prompt, ready_timeout_s)
            self.reward, self.judge_group = create_reward_actor(reward, judge, num_cpus=c.reward_cpus,
                                                                max_restarts=MAX_RESTARTS)
            ray.get([e.stats.remote() for e in self.engines])  # engines loaded (raises their start-up error here)
        except BaseException:
            self.shutdown()
            raise

    def _start_engines(self, c, model_path: str, rollout: dict, prompt: dict | None, timeout_s: float) -> list:
        """CPU engines on {CPU: cpus_per_engine} bundles; GPU engines on gpus_per_engine single-GPU bundles
        each (actors/rollout_placement.py: a tensor-parallel vLLM engine runs its workers on them)."""
        if c.gpus_per_engine:
            placement = RolloutPlacement(c.rollout_engines, c.gpus_per_engine, c.placement_strategy, timeout_s)
            self.engine_group = placement.group
            options = [placement.actor_options(i) for i in range(c.rollout_engines)]
            rollouts = [rollout if rollout.get("engine", "hf") != "vllm" else
                        {**rollout, "engine_options": {**(rollout.get("engine_options") or {}), **e.engine_options()}}
                        for e in placement.engines]
        else:
            bundle = {"CPU": c.cpus_per_engine}
            self.engine_group = placement_group([bundle] * c.rollout_engines, strategy=c.placement_strategy)
            ready, _ = ray.wait([self.engine_group.ready()], timeout=timeout_s)
            if not ready:
                raise TimeoutError(f"the cluster could not place {c.rollout_engines} rollout engine(s) with {bundle} "
                                   f"each within {timeout_s:.0f} s; lower cluster.rollout_engines")
            options = [{"num_cpus": c.cpus_per_engine, "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.engine_group, placement_group_bundle_index=i)} for i in range(c.rollout_engines)]
            rollouts = [rollout] * c.rollout_engines
        return [RolloutActor.options(max_restarts=MAX_RESTARTS, **opts).remote(
                    model_path, rollout=engine_rollout, sandbox_pool=self.sandbox_pool, prompt=prompt)
                for opts, engine_rollout in zip(options, rollouts)]

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
