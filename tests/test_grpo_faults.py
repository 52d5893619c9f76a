"""Faults injected into a GRPO run on local Ray (every actor real), each checked for what it must not do:
lose or double-count episodes, crash the run.

- a sandbox actor killed while episodes' code runs in it: Ray restarts it, the groups it failed
  under run again (same seeds), the step completes with every episode counted once;
- a rollout actor killed mid-rollout, and the judge going down at the same moment: the engine is
  restarted and given the current weights, its prompts run again; rewards fall back to rules for
  what needed the judge (counted), the run goes on;
- a corrupt image in the RL prompts: its episodes are set apart and counted, the step trains on the rest.
"""
from __future__ import annotations

import time

import pytest
import ray

from learners.grpo_trainer import GRPOTrainer
from learners.rl_data import step_prompts
from learners.train_config import from_dict
from learners.warm_start import QUESTION, TEST_PROMPT, ensure_warm_started
from rewards.loopback_judge import LoopbackJudgeServer

pytestmark = pytest.mark.slow
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SLOW_CODE = "<code>\n```python\nimport time\ntime.sleep(2)\nprint(2 + 3)\n```\n</code>"


def _prompts(images, corrupt: str) -> list[dict]:
    """p0, p2, p4 run 2 s of code first; p1, p3 start the answer; p5's image is not an image. The
    references are phrased so the rules cannot decide them: every answer goes to the judge."""
    colours = sorted(images)
    out = []
    for i in range(6):
        colour = colours[i % 3]
        out.append({"id": f"p{i}", "question": QUESTION, "image_paths": [corrupt if i == 5 else images[colour]],
                    "answer": f"the colour {colour}", "assistant_prefix": SLOW_CODE if i % 2 == 0 else "<answer>"})
    return out


def _plan(seed: int) -> tuple[int, int] | None:
    """Steps (0-based, after the first) for the sandbox kill (it has a 2 s code prompt) and for the
    engine kill + judge stop (an answer prompt, and a code prompt so the rollout is still running when
    the engine dies), if this seed's shuffle allows both."""
    steps = [set(step_prompts(6, 2, seed=seed, step=k)) for k in range(3)]
    code, answer = {0, 2, 4}, {1, 3}
    for a in (1, 2):
        b = 3 - a
        if steps[a] & code and steps[b] & code and steps[b] & answer:
            return a, b
    return None


class FaultyTrainer(GRPOTrainer):
    """Injects the faults right after a step's rollouts were submitted, while they run."""

    def setup_faults(self, sandbox_step: int, engine_step: int, judge: LoopbackJudgeServer):
        self.faults = {f"step {sandbox_step + 1} rollouts": "sandbox", f"step {engine_step + 1} rollouts": "engine"}
        self.judge = judge
        self.injected = []
        return self

    def _collect(self, workers, pending):
        fault = self.faults.pop(pending.label, None)
        if fault == "sandbox":
            time.sleep(1.0)  # the 2 s code runs are inside the sandbox actor now
            ray.kill(workers.sandbox_pool.actors[0], no_restart=False)
        elif fault == "engine":
            time.sleep(0.5)
            ray.kill(workers.engines[0], no_restart=False)
            self.judge.stop()
        if fault:
            self.injected.append(fault)
        return super()._collect(workers, pending)


def test_grpo_survives_dead_actors_a_dead_judge_and_a_corrupt_image(ray_cluster, tiny_model_dir, scratch_dir):
    model_dir, images = ensure_warm_started(tiny_model_dir, REPO / ".cache")
    corrupt = scratch_dir / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    seed = next(s for s in range(50) if _plan(s))
    sandbox_step, engine_step = _plan(seed)
    config = from_dict({
        "output_dir": str(scratch_dir / "grpo-faults"), "seed": seed,
        "stage": {"name": "grpo", "trainer": "grpo", "loss": "grpo", "data": "rl", "lr": 1e-4, "warmup_ratio": 0.0,
                  "min_lr_ratio": 1.0, "epochs": 1, "global_batch": 8, "micro_batch": 4, "zero_stage": 2,
                  "precision": "fp32", "grpo": {"group_size": 4, "kl_beta": 0.01}},
        "cluster": {"num_learners": 1, "cpus_per_learner": 1, "reference": "colocated"},
        "logging": {"wandb_mode": "disabled"}, "checkpoint": {"every_steps": 0, "keep_last": 1},
    })
    with LoopbackJudgeServer(mode="json", verdict=True) as judge:
        judge_cfg = {"backend": "openai", "consistency": True, "circuit_failures": 2,
                     "openai": {"url": judge.url, "api_key_env": None, "timeout_s": 2, "max_retries": 0}}
        trainer = FaultyTrainer(config, str(model_dir), _prompts(images, str(corrupt)),
                                rollout={"max_new_tokens_per_round": 12, "max_turns": 2,
                                         "engine_options": {"torch_threads": 1}},
                                sandbox={}, judge=judge_cfg, prompt=TEST_PROMPT, show_progress=False).setup_faults(sandbox_step, engine_step, judge)
        result = trainer.run()
        judged_before_stop = judge.requests

    import json

    history = json.loads(open(f"{result.checkpoint}/trainer_state.json").read())["history"]
    assert result.steps == 3 and sorted(trainer.injected) == ["engine", "sandbox"]
    for h in history:  # every step counts each of its 2 x 4 episodes exactly once
        assert h["episodes"] == 8 and h["groups"] == 2
        assert h["trajectories"] + h["untrainable"] == 8
    assert history[sandbox_step]["sandbox_retried_groups"] >= 1  # the groups it failed under ran again
    assert history[sandbox_step].get("untrainable/sandbox_failed", 0) == 0  # ... and then succeeded
    assert history[engine_step]["engine_restarts"] == 1
    assert judged_before_stop > 0 and history[0]["judge_failures"] == 0
    assert history[engine_step]["judge_failures"] > 0  # rules only for what needed the judge, counted
    assert sum(h.get("untrainable/no_model_tokens", 0) for h in history) == 4  # the corrupt image's group
    assert all(h["update_s"] > 0 for h in history)  # every step trained
