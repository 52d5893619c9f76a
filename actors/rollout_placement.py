"""Rollout engines on their own GPUs: one placement group, one single-GPU bundle per engine worker.

An engine with tensor_parallel_size k cannot live inside a one-GPU actor. Each engine gets k
consecutive `{"GPU": 1}` bundles. With k == 1 the RolloutActor takes its bundle's GPU and vLLM runs
in process. With k > 1 the actor sits on the engine's first bundle without a GPU of its own and
starts vLLM with `distributed_executor_backend="ray"`: vLLM then uses the actor's placement group
(vllm/v1/executor/ray_utils.py:579-582, get_current_placement_group, which needs
`placement_group_capture_child_tasks`) and puts worker r on bundle VLLM_RAY_BUNDLE_INDICES[r]
(vllm/v1/executor/ray_executor.py:185-207), so the k workers land on this engine's bundles only.
"""
from __future__ import annotations

from dataclasses import dataclass

from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@dataclass(frozen=True)
class EnginePlacement:
    """Where engine `index` runs: its bundles, and the Ray options and engine options that put it there."""

    index: int
    bundles: tuple[int, ...]

    @property
    def tensor_parallel_size(self) -> int:
        return len(self.bundles)

    def actor_options(self, group: PlacementGroup) -> dict:
        tp = self.tensor_parallel_size
        options = {
            "num_gpus": 1 if tp == 1 else 0,  # with tp > 1 the GPUs belong to vLLM's Ray workers
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=self.bundles[0], placement_group_capture_child_tasks=tp > 1),
        }
        if tp > 1:
            options["runtime_env"] = {"env_vars": {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, self.bundles))}}
        return options

    def engine_options(self) -> dict:
        """VLLMEngineConfig fields for this placement."""
        tp = self.tensor_parallel_size
        return {"tensor_parallel_size": tp, **({"distributed_executor_backend": "ray"} if tp > 1 else {})}


def plan_engines(num_engines: int, tensor_parallel_size: int) -> tuple[list[dict], list[EnginePlacement]]:
    """The placement group's bundles and each engine's share of them (pure)."""
    if num_engines < 1 or tensor_parallel_size < 1:
        raise ValueError(f"need num_engines >= 1 and tensor_parallel_size >= 1 (got {num_engines}, {tensor_parallel_size})")
    bundles = [{"GPU": 1, "CPU": 1} for _ in range(num_engines * tensor_parallel_size)]
    tp = tensor_parallel_size
    return bundles, [EnginePlacement(i, tuple(range(i * tp, (i + 1) * tp))) for i in range(num_engines)]


class RolloutPlacement:
    """Reserves the GPUs of `num_engines` engines; `.engines[i]` says how to start engine i there."""

    def __init__(self, num_engines: int, tensor_parallel_size: int = 1, strategy: str = "PACK",
                 ready_timeout_s: float = 600.0):
        import ray

        bundles, self.engines = plan_engines(num_engines, tensor_parallel_size)
        # PACK keeps an engine's bundles on one node where it can; tensor parallel across nodes is slow.
        self.group = placement_group(bundles, strategy=strategy)
        ready, _ = ray.wait([self.group.ready()], timeout=ready_timeout_s)
        if not ready:
            remove_placement_group(self.group)
            raise TimeoutError(f"could not reserve {len(bundles)} GPUs for {num_engines} rollout engine(s) x "
                               f"tensor_parallel_size {tensor_parallel_size} within {ready_timeout_s}s")

    def actor_options(self, index: int) -> dict:
        return self.engines[index].actor_options(self.group)

    def remove(self) -> None:
        remove_placement_group(self.group)
