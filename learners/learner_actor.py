"""LearnerActor (a Learner as a Ray actor, one per GPU or CPU slot) and LearnerGroup, which places them
on one placement group, wires up torch.distributed between them and fans calls out to every rank."""
from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learners.deepspeed_ops import ensure_cpu_comm_op
from learners.grpo_learner import GRPOLearner
from learners.learner import Learner
from learners.reference import ReferenceWorker
from learners.spinner import spinner

LearnerActor = ray.remote(Learner)
GRPOLearnerActor = ray.remote(GRPOLearner)
ReferenceActor = ray.remote(ReferenceWorker)


class LearnerGroup:
    """`num_learners` LearnerActors, rank i on bundle i of one placement group.

    Setup order: place actors, ask rank 0 for its node IP and a free port, then call setup() on all
    ranks at once (init_distributed blocks until every rank has joined).
    """

    def __init__(self, num_learners: int, gpus_per_learner: int, cpus_per_learner: int, settings: dict,
                 strategy: str = "PACK", ready_timeout_s: float = 600, actor_class=LearnerActor):
        if not gpus_per_learner:
            ensure_cpu_comm_op()  # a message and a spinner instead of minutes of silence on a first run
        bundles = [{"CPU": cpus_per_learner, **({"GPU": gpus_per_learner} if gpus_per_learner else {})}
                   for _ in range(num_learners)]
        self.placement_group = placement_group(bundles, strategy=strategy)
        ready, _ = ray.wait([self.placement_group.ready()], timeout=ready_timeout_s)
        if not ready:
            remove_placement_group(self.placement_group)
            raise TimeoutError(f"the cluster could not place {num_learners} learner(s) with {bundles[0]} each within "
                               f"{ready_timeout_s:.0f} s; lower cluster.num_learners or free resources")
        self.actors = []
        for rank in range(num_learners):
            strategy_for_rank = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=rank)
            actor = actor_class.options(num_cpus=cpus_per_learner, num_gpus=gpus_per_learner,
                                         scheduling_strategy=strategy_for_rank).remote(
                rank, num_learners, self._local_rank(rank, gpus_per_learner), settings)
            self.actors.append(actor)
        master_addr, master_port = ray.get(self.actors[0].node_address.remote())
        with spinner(f"starting {num_learners} learner(s): loading the model, DeepSpeed init"):
            self.setup_info = ray.get([a.setup.remote(master_addr, master_port) for a in self.actors])

    @staticmethod
    def _local_rank(rank: int, gpus_per_learner: int) -> int:
        # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so its one visible device is 0.
        # CPU learners have no device to pick; the rank keeps their names apart.
        return 0 if gpus_per_learner else rank

    def call(self, method: str, *args_per_rank, **kwargs) -> list:
        """Call `method` on every rank; each positional arg is a list with one value per rank."""
        refs = [getattr(actor, method).remote(*(arg[rank] for arg in args_per_rank), **kwargs)
                for rank, actor in enumerate(self.actors)]
        return ray.get(refs)

    def call_all(self, method: str, *args, **kwargs) -> list:
        """Call `method` with the same arguments on every rank."""
        return ray.get(self.call_all_async(method, *args, **kwargs))

    def call_all_async(self, method: str, *args, **kwargs) -> list:
        return [getattr(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def shutdown(self) -> None:
        try:
            ray.get([actor.shutdown.remote() for actor in self.actors], timeout=60)
        except Exception:  # a dead actor must not stop the others from being released
            pass
        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self.placement_group)
