"""The rollout half of a GRPO step (driver side): prompts -> G episodes each on the engines -> rewards.

`submit` starts the episodes of a step on every engine at once (returning at once, so a step's
rollouts can be generated while the previous step trains); `collect` waits for them with a progress
bar over episodes and has the reward actor score them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from tqdm import tqdm

from learners.grpo_batch import reward_sample
from learners.rl_data import episode_seed


@dataclass
class StepRollouts:
    records: list[dict]
    rewards: list[dict]
    reward_stats: dict
    generate_s: float = 0.0  # waiting for the engines (the agent loop's sandbox time included)
    sandbox_s: float = 0.0  # the engines' time blocked on sandboxes (part of generate_s)
    reward_s: float = 0.0
    versions: list[int] = field(default_factory=list)


class PendingRollouts:
    """Episodes in flight on the engines for one step (or one refill round)."""

    def __init__(self, engines: list, prompts: list[dict], group_size: int, sampling: dict, label: str):
        self.engines, self.label, self.group_size = engines, label, group_size
        self.started = time.perf_counter()
        chunks = [prompts[i::len(engines)] for i in range(len(engines))]
        self.calls = []  # (engine, rollout ref, stats ref, episodes), only for engines that got prompts
        for engine, chunk in zip(engines, chunks):
            if chunk:
                rollout = engine.rollout.remote(chunk, group_size, sampling)
                # Calls on an engine run in order: this answers with the stats of the rollout above.
                self.calls.append((engine, rollout, engine.stats.remote(), len(chunk) * group_size))
        self.episodes = len(prompts) * group_size

    def collect(self, reward_actor, show_progress: bool = True) -> StepRollouts:
        waited = time.perf_counter()
        refs = [rollout for _e, rollout, _s, _n in self.calls]
        with tqdm(total=self.episodes, desc=self.label, unit="episode", leave=False, disable=not show_progress) as bar:
            while True:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
                running = [e.progress.remote() for e, r, _s, _n in self.calls if r not in ready]
                done = sum(n for _e, r, _s, n in self.calls if r in ready) + sum(ray.get(running))
                bar.update(max(0, done - bar.n))
                if len(ready) == len(refs):
                    break
        per_engine = ray.get(refs)
        stats = ray.get([s for _e, _r, s, _n in self.calls])
        generate_s = time.perf_counter() - waited
        # Interleave back to prompt order: engine i got prompts i, i+E, ...; each returns G per prompt.
        groups = [[chunk[k:k + self.group_size] for k in range(0, len(chunk), self.group_size)] for chunk in per_engine]
        records = [rec for slot in range(max(len(g) for g in groups)) for g in groups if slot < len(g) for rec in g[slot]]
        started = time.perf_counter()
        scored = ray.get(reward_actor.score_batch.remote([reward_sample(r) for r in records]))
        return StepRollouts(records=records, rewards=scored["rewards"], reward_stats=scored["stats"],
                            generate_s=generate_s, sandbox_s=max((s.get("sandbox_s", 0.0) for s in stats), default=0.0),
                            reward_s=time.perf_counter() - started, versions=[r["weight_version"] for r in records])


def step_prompt_dicts(prompts: list[dict], indices: list[int], *, seed: int, step: int, salt: int = 0) -> list[dict]:
    """The prompt dicts of a step, each with the seed its group samples from (sample k: seed + k) and a
    unique id per slot (the same prompt may come twice in a refill)."""
    out = []
    for slot, index in enumerate(indices):
        p = dict(prompts[index])
        p["seed"] = episode_seed(seed, step, slot + 1000 * salt)
        p["id"] = f"{p['id']}@{step}.{salt}.{slot}"
        out.append(p)
    return out
