"""Sandboxes as Ray actors: SandboxActor holds one Sandbox (its warm servers) and serves many
concurrent episodes; SandboxPool spreads episodes over actors and keeps every round of an episode on
the actor that holds its process.

Episode ids carry their actor's index ("<actor>:<id>"), so any copy of the pool (e.g. one per
RolloutActor) routes a round correctly without shared state.
"""
from __future__ import annotations

import itertools
import threading
import uuid
from dataclasses import asdict

import ray

from envs.sandbox.config import SandboxConfig


class SandboxActorImpl:
    """Thin: the Sandbox does the work; this maps episode ids to open episodes."""

    def __init__(self, config: dict | None = None):
        from envs.sandbox import Sandbox

        self.sandbox = Sandbox(config or {}).start()
        self.episodes: dict = {}
        self.lock = threading.Lock()

    def start_episode(self, images: list[str] | None = None) -> str:
        """Returns the episode's id; raises InputImageError (as a RayTaskError) for bad input images."""
        episode = self.sandbox.episode(images=images or [])
        episode_id = uuid.uuid4().hex
        with self.lock:
            self.episodes[episode_id] = episode
        return episode_id

    def run(self, episode_id: str, code: str, timeout_s: float | None = None) -> dict:
        episode = self.episodes.get(episode_id)
        if episode is None:
            # "lost": the episode is not on this actor (ended, or the actor restarted and its processes died).
            return {"ok": False, "stdout": "", "error": f"unknown or ended episode {episode_id!r}", "images": [],
                    "timed_out": False, "fixes": [], "duration_s": 0.0, "lost": True}
        return episode.run(code, timeout_s=timeout_s).to_dict()

    def end_episode(self, episode_id: str) -> None:
        with self.lock:
            episode = self.episodes.pop(episode_id, None)
        if episode is not None:
            episode.close()

    def live_episodes(self) -> int:
        return len(self.episodes)

    def stats(self) -> list[dict]:
        return self.sandbox.stats()

    def shutdown(self) -> None:
        for episode_id in list(self.episodes):
            self.end_episode(episode_id)
        self.sandbox.close()


MAX_RESTARTS = 4  # per actor: a crash is survived, a crash loop is not

# Threaded actor: episodes run side by side (the Sandbox is thread-safe, the servers do the work).
SandboxActor = ray.remote(max_concurrency=256)(SandboxActorImpl)


class SandboxPool:
    """Driver-side handle over n SandboxActors (picklable: pass it to other actors)."""

    def __init__(self, n_actors: int = 1, config: SandboxConfig | dict | None = None, num_cpus: float = 1.0,
                 actors: list | None = None):
        if actors is None:
            if n_actors < 1:
                raise ValueError(f"SandboxPool needs at least one actor, got n_actors={n_actors}")
            cfg = asdict(config) if isinstance(config, SandboxConfig) else dict(config or {})
            # A dead actor comes back (its episodes are lost: their next round fails, the trainer retries them).
            actors = [SandboxActor.options(num_cpus=num_cpus, max_restarts=MAX_RESTARTS).remote(cfg)
                      for _ in range(n_actors)]
        self.actors = list(actors)
        self._next = itertools.count()
        self._live = [0] * len(self.actors)

    def __reduce__(self):
        return (SandboxPool, (len(self.actors), None, 1.0, self.actors))

    def _actor(self, episode_id: str):
        index, _, _ = episode_id.partition(":")
        if not index.isdigit() or int(index) >= len(self.actors):
            raise ValueError(f"{episode_id!r} is not an episode id of this pool")
        return int(index), self.actors[int(index)]

    def start_episode(self, images: list[str] | None = None) -> str:
        """Start on the actor with the fewest episodes this handle has started (ties: round robin)."""
        turn = next(self._next)
        index = min(range(len(self.actors)), key=lambda i: (self._live[i], (i - turn) % len(self.actors)))
        inner = ray.get(self.actors[index].start_episode.remote(images))
        self._live[index] += 1
        return f"{index}:{inner}"

    def run_async(self, episode_id: str, code: str, timeout_s: float | None = None):
        """An ObjectRef of the result dict (ok, stdout, error, images, timed_out, fixes, duration_s)."""
        _, actor = self._actor(episode_id)
        return actor.run.remote(episode_id.partition(":")[2], code, timeout_s)

    def run(self, episode_id: str, code: str, timeout_s: float | None = None) -> dict:
        return ray.get(self.run_async(episode_id, code, timeout_s))

    def end_episode(self, episode_id: str) -> None:
        index, actor = self._actor(episode_id)
        ray.get(actor.end_episode.remote(episode_id.partition(":")[2]))
        self._live[index] = max(0, self._live[index] - 1)

    def shutdown(self) -> None:
        ray.get([a.shutdown.remote() for a in self.actors])
        for actor in self.actors:
            ray.kill(actor)
