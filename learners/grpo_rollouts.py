"""The rollout half of a GRPO step (driver side): prompts -> G episodes each on the engines -> rewards.

`PendingRollouts` starts the episodes of a step on every engine at once (returning at once, so a
step's rollouts can be generated while the previous step trains); `collect` waits for them with a
progress bar over episodes and has the reward actor score them.

Faults: an engine that dies mid-rollout is restarted by Ray; `collect` waits for it, has the trainer
give it the current weights (`recover(engine)`), and submits that engine's prompts again with the
same seeds, so no episode is lost or counted twice. A reward actor that dies is asked again once
restarted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from tqdm import tqdm

from learners.grpo_batch import reward_sample
from learners.rl_data import episode_seed

log = logging.getLogger(__name__)
RETRIES = 3  # per call: a restarted actor is asked again this many times


@dataclass
class StepRollouts:
    records: list[dict]
    rewards: list[dict]
    reward_stats: dict
    generate_s: float = 0.0  # waiting for the engines (the agent loop's sandbox time included)
    sandbox_s: float = 0.0  # the engines' time blocked on sandboxes (part of generate_s)
    reward_s: float = 0.0
    versions: list[int] = field(default_factory=list)
    engine_restarts: int = 0
    prompts: dict = field(default_factory=dict)  # group id -> the prompt dict its episodes ran (for retries)

    def replace_groups(self, other: "StepRollouts") -> None:
        """Put `other`'s groups in place of the groups with the same ids (their order kept)."""
        from learners.grpo_batch import prompt_id

        fresh: dict[str, list] = {}
        for record, reward in zip(other.records, other.rewards):
            fresh.setdefault(prompt_id(record["id"]), []).append((record, reward))
        taken: dict[str, int] = {}
        for i, record in enumerate(self.records):
            gid = prompt_id(record["id"])
            if gid in fresh:
                k = taken.get(gid, 0)
                self.records[i], self.rewards[i] = fresh[gid][k]
                taken[gid] = k + 1
        self.versions = [r["weight_version"] for r in self.records]
        self.generate_s += other.generate_s
        self.reward_s += other.reward_s
        self.engine_restarts += other.engine_restarts


class _Call:
    """One engine's share of the prompts, and its rollout in flight."""

    def __init__(self, engine, prompts: list[dict], group_size: int, sampling: dict):
        self.engine, self.prompts, self.group_size, self.sampling = engine, prompts, group_size, sampling
        self.episodes = len(prompts) * group_size
        self.submit()

    def submit(self) -> None:
        self.rollout = self.engine.rollout.remote(self.prompts, self.group_size, self.sampling)
        # Calls on an engine run in order: this answers with the stats of the rollout above.
        self.stats = self.engine.stats.remote()


class PendingRollouts:
    """Episodes in flight on the engines for one step (or one refill round)."""

    def __init__(self, engines: list, prompts: list[dict], group_size: int, sampling: dict, label: str):
        self.label, self.group_size, self.sampling = label, group_size, sampling
        self.prompts = {p["id"]: p for p in prompts}
        chunks = [prompts[i::len(engines)] for i in range(len(engines))]
        self.calls = [_Call(engine, chunk, group_size, sampling) for engine, chunk in zip(engines, chunks) if chunk]
        self.episodes = len(prompts) * group_size
        self.restarts = 0

    def _wait(self, recover, show_progress: bool) -> None:
        """Until every call has its result; a call whose engine died is submitted again after recovery."""
        with tqdm(total=self.episodes, desc=self.label, unit="episode", leave=False, disable=not show_progress) as bar:
            while True:
                refs = [c.rollout for c in self.calls]
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
                done = 0
                for call in self.calls:
                    if call.rollout in ready:
                        try:
                            ray.get(call.rollout)
                            done += call.episodes
                        except (RayActorError, ActorUnavailableError) as exc:
                            self._resubmit(call, recover, exc)
                            ready = [r for r in ready if r != call.rollout]
                    else:
                        try:
                            done += ray.get(call.engine.progress.remote(), timeout=5)
                        except Exception:  # noqa: BLE001  (a dying engine: its rollout ref will say)
                            pass
                bar.update(max(0, done - bar.n))
                if len(ready) == len(self.calls):
                    return

    def _resubmit(self, call: _Call, recover, exc: Exception) -> None:
        self.restarts += 1
        if self.restarts > RETRIES * len(self.calls):
            raise RuntimeError(f"rollout engines keep dying ({self.restarts} restarts in one step); last: {exc}") from exc
        log.warning("%s: a rollout engine died (%s); waiting for its restart, then its %d prompts run again",
                    self.label, type(exc).__name__, len(call.prompts))
        recover(call.engine)
        call.submit()

    def collect(self, reward_actor, show_progress: bool = True, recover=None) -> StepRollouts:
        """Wait, then score. recover(engine): make a restarted engine ready (the current weights)."""
        started = time.perf_counter()
        self._wait(recover or (lambda engine: None), show_progress)
        per_engine = [ray.get(c.rollout) for c in self.calls]
        stats = ray.get([c.stats for c in self.calls])
        generate_s = time.perf_counter() - started
        # Interleave back to prompt order: engine i got prompts i, i+E, ...; each returns G per prompt.
        groups = [[chunk[k:k + self.group_size] for k in range(0, len(chunk), self.group_size)] for chunk in per_engine]
        records = [rec for slot in range(max(len(g) for g in groups)) for g in groups if slot < len(g) for rec in g[slot]]
        started = time.perf_counter()
        scored = score(reward_actor, records)
        return StepRollouts(records=records, rewards=scored["rewards"], reward_stats=scored["stats"],
                            generate_s=generate_s, sandbox_s=max((s.get("sandbox_s", 0.0) for s in stats), default=0.0),
                            reward_s=time.perf_counter() - started, versions=[r["weight_version"] for r in records],
                            engine_restarts=self.restarts, prompts=self.prompts)


def score(reward_actor, records: list[dict]) -> dict:
    """The reward actor's scores for these records; asked again if it died (Ray restarts it)."""
    samples = [reward_sample(r) for r in records]
    for attempt in range(RETRIES + 1):
        try:
            return ray.get(reward_actor.score_batch.remote(samples))
        except (RayActorError, ActorUnavailableError) as exc:
            if attempt == RETRIES:
                raise
            log.warning("the reward actor died (%s); asking its restarted copy again", type(exc).__name__)
            time.sleep(1.0)


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
