"""Rollout engines on their own placement-group bundles (actors/rollout_placement.py), with Ray's pretend
GPUs: each engine's bundles are its own, and a tensor-parallel engine's workers, placed the way vLLM's
Ray executor places them (vllm/v1/executor/ray_executor.py:185-207), land on that engine's GPUs only."""
import os

import pytest
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.rollout_placement import RolloutPlacement, plan_engines


@ray.remote(num_cpus=0)
class Probe:
    """Stands where a RolloutActor would: reports its GPUs and starts workers as vLLM's executor does."""

    def gpus(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def vllm_workers_gpus(self) -> list[str]:
        group = ray.util.get_current_placement_group()  # what vllm/v1/executor/ray_utils.py:582 reads
        bundles = [int(b) for b in os.environ["VLLM_RAY_BUNDLE_INDICES"].split(",")]
        workers = [Probe.options(num_gpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=b, placement_group_capture_child_tasks=True)).remote() for b in bundles]
        try:
            return ray.get([w.gpus.remote() for w in workers])
        finally:
            for w in workers:
                ray.kill(w)


def test_plan_gives_each_engine_consecutive_single_gpu_bundles():
    bundles, engines = plan_engines(2, 2)
    assert bundles == [{"GPU": 1, "CPU": 1}] * 4 and [e.bundles for e in engines] == [(0, 1), (2, 3)]
    assert engines[1].engine_options() == {"tensor_parallel_size": 2, "distributed_executor_backend": "ray"}
    assert plan_engines(3, 1)[1][2].engine_options() == {"tensor_parallel_size": 1}
    with pytest.raises(ValueError):
        plan_engines(0, 1)


def test_single_gpu_engines_each_get_their_own_gpu(ray_cluster):
    placement = RolloutPlacement(num_engines=4, tensor_parallel_size=1, ready_timeout_s=30)
    try:
        probes = [Probe.options(**placement.actor_options(i)).remote() for i in range(4)]
        gpus = ray.get([p.gpus.remote() for p in probes])
        assert sorted(gpus) == sorted(set(gpus)) and all(g for g in gpus)
    finally:
        placement.remove()


def test_tensor_parallel_engines_keep_their_workers_on_their_own_bundles(ray_cluster):
    placement = RolloutPlacement(num_engines=2, tensor_parallel_size=2, ready_timeout_s=30)
    try:
        probes = [Probe.options(**placement.actor_options(i)).remote() for i in range(2)]
        assert ray.get([p.gpus.remote() for p in probes]) == ["", ""]  # the GPUs are the workers'
        per_engine = ray.get([p.vllm_workers_gpus.remote() for p in probes])
        gpus = [g for engine in per_engine for g in engine]
        assert all(len(engine) == 2 for engine in per_engine) and len(set(gpus)) == 4
    finally:
        placement.remove()
