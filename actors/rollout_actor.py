"""RolloutActor: a Ray actor holding a generation engine and a sandbox, running the agent loop.

Thin on purpose: policy/agent_loop.py does the work. The sandbox is either the actor's own
`envs.sandbox.Sandbox` (default) or a shared `actors.sandbox_pool.SandboxPool` handle, adapted here
to the loop's `episode(images) -> run / close` interface.

    actor = RolloutActor.options(num_gpus=1).remote(model_dir, rollout={"max_turns": 4})
    records = ray.get(actor.rollout.remote(prompts, n_samples=4))   # list of EpisodeRecord.to_dict()
    ray.get(actor.load_weights.remote(state_dict))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from policy.agent_config import load_rollout_config
from policy.agent_engine import make_engine
from policy.agent_loop import AgentLoop, EpisodeInput
from policy.engine import SamplingSettings


class _PoolEpisode:
    """One episode of a SandboxPool, shaped like envs.sandbox.Episode for the loop."""

    def __init__(self, pool, images: list[str]):
        self.pool = pool
        self.id = pool.start_episode(images)
        self.images = None  # staged paths live on the sandbox actor; the prompt shows the given paths anyway

    def run(self, code: str):
        from envs.sandbox import RunResult

        result = self.pool.run(self.id, code)
        if result.pop("lost", False):  # the sandbox actor restarted under this episode: not the model's fault
            raise RuntimeError(result["error"])
        return RunResult(**result)

    def close(self) -> None:
        self.pool.end_episode(self.id)


class PoolSandbox:
    """Adapter: a SandboxPool handle as the loop's sandbox (every round of an episode goes to its actor)."""

    def __init__(self, pool):
        self.pool = pool

    def episode(self, images: list[str]) -> _PoolEpisode:
        return _PoolEpisode(self.pool, images)


def episode_inputs(prompts: list[dict], n_samples: int) -> list[EpisodeInput]:
    """n_samples episodes per prompt dict (a Task dict works: id, question, image_paths, answer, meta).

    Sample k of prompt `id` gets the episode id `id#k`; prompt["seed"], when given, seeds sample k
    with seed + k so the group stays diverse and reproducible.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1 (got {n_samples})")
    inputs = []
    for i, p in enumerate(prompts):
        missing = [k for k in ("question",) if k not in p] + ([] if ("image_paths" in p or "image_path" in p) else ["image_paths"])
        if missing:
            raise ValueError(f"prompt {i} lacks {missing}; a prompt needs question and image_paths (got keys {sorted(p)})")
        paths = p.get("image_paths") or [p["image_path"]]
        base_id = str(p.get("id", i))
        meta = dict(p.get("meta") or {})
        if "category" in p:
            meta.setdefault("category", p["category"])
        for k in range(n_samples):
            seed = None if p.get("seed") is None else int(p["seed"]) + k
            inputs.append(EpisodeInput(
                question=str(p["question"]), image_paths=list(paths), id=f"{base_id}#{k}",
                assistant_prefix=str(p.get("assistant_prefix", "")), reference=p.get("answer", p.get("reference")),
                seed=seed, meta=meta))
    return inputs


class RolloutActorImpl:
    def __init__(self, model_dir: str | Path, rollout: dict | None = None, sandbox_pool=None,
                 sandbox: dict | None = None, device: str | None = None, dtype: str | None = None,
                 prompt: dict | None = None):
        """model_dir: the policy checkpoint. rollout: overrides of conf/rollout/default.yaml.
        sandbox_pool: a SandboxPool handle to share; without one the actor starts its own Sandbox
        (sandbox: overrides of conf/sandbox/default.yaml). device/dtype: for the HF engine, default
        cuda when the actor has a GPU. prompt: the prompt contract's fields (system, user_template),
        as the run's SFT stages used them; default conf/prompt/thyme.yaml."""
        self.config = load_rollout_config(overrides=rollout)
        if device is None and self.config.engine == "hf":
            import torch

            # A GPU actor (num_gpus=1) sees its GPU as cuda:0; elsewhere the engine config's device.
            device = "cuda" if torch.cuda.is_available() else None
        if dtype is None and device == "cuda" and self.config.engine == "hf" and "dtype" not in self.config.engine_options:
            dtype = "bfloat16"  # the learners' dtype on GPU (precision auto): sampling and training log-probs agree
        self.engine = make_engine(model_dir, self.config.engine, device=device, dtype=dtype,
                                  options=self.config.engine_options)
        if sandbox_pool is not None:
            self.sandbox, self._own_sandbox = PoolSandbox(sandbox_pool), None
        else:
            from envs.sandbox import Sandbox

            self._own_sandbox = Sandbox(sandbox or {}).start()
            self.sandbox = self._own_sandbox
        from policy.prompts import PromptConfig

        self.loop = AgentLoop(self.engine, self.sandbox, self.config, prompt=PromptConfig(**prompt) if prompt else None)
        self.weight_version = 0  # how many training steps made the engine's weights (GRPO's staleness check)
        self._episodes_done = 0

    def rollout(self, prompts: list[dict], n_samples: int = 1, sampling: dict | None = None) -> list[dict]:
        """Run n_samples episodes per prompt, all batched together; records (as plain dicts) in
        prompt-major order: prompt 0 samples 0..n-1, prompt 1 ... sampling: SamplingSettings fields
        overriding the config's (e.g. {"temperature": 0, "ats": False})."""
        settings = self.config.sampling
        if sampling:
            settings = SamplingSettings(**{**vars(self.config.sampling), **sampling})
        self._episodes_done = 0
        records = self.loop.run(episode_inputs(prompts, n_samples), sampling=settings, on_progress=self._count_done)
        return [{**r.to_dict(), "weight_version": self.weight_version} for r in records]

    def load_weights(self, weights, version: int | None = None) -> None:
        """New policy weights (a state_dict or (name, tensor) pairs, e.g. through the object store),
        and the weight version they are (the trainer's step count)."""
        self.engine.load_weights(weights)
        if version is not None:
            self.weight_version = version

    def set_weight_version(self, version: int) -> None:
        self.weight_version = version

    # NCCL weight transfer from the learners (vLLM engines; learners/weight_sync.NcclWeightSync).
    def start_weight_receiver(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        self.engine.start_weight_receiver(master_address, master_port, rank_offset, world_size)

    def receive_weights(self, buckets: list, version: int | None = None) -> None:
        self.engine.receive_weights(buckets)
        if version is not None:
            self.weight_version = version

    def _count_done(self, n: int) -> None:
        self._episodes_done += n

    @ray.method(concurrency_group="progress")
    def progress(self) -> int:
        """Episodes finished in the rollout call now running (answered while it runs: a progress bar)."""
        return self._episodes_done

    def engine_weights(self) -> dict:
        """The HF engine's weights as CPU tensors (equality checks in tests and benchmarks)."""
        return {k: v.detach().cpu().clone() for k, v in self.engine.model.state_dict().items()}

    def stats(self) -> dict[str, Any]:
        """Timing and batching figures of the last rollout call (see AgentLoop.run)."""
        return dict(self.loop.last_stats)

    def shutdown(self) -> None:
        self.loop.close()
        if self._own_sandbox is not None:
            self._own_sandbox.close()


# Plain class for tests without Ray and for composing; the Ray actor runs the same code. Its calls run
# one at a time (a weight update never lands in the middle of a rollout), except `progress`.
RolloutActor = ray.remote(concurrency_groups={"progress": 1})(RolloutActorImpl)
