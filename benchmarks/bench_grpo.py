"""GRPO step time on CPU, by phase: the tiny warm-started policy, every actor real (rollout actor with
the HF engine, sandbox pool, reward actor, learners, colocated reference) on a local Ray cluster.

Runs STEPS training steps with overlap off, then the same with overlap on (step k+1 generated while
step k trains, staleness 1), on fresh actors each time; the first step of each run is warm-up and
left out. Prints the mean time of every phase and the targets (issue 10):
  - time outside the phases (driver, collation, bookkeeping) <= 5% of a step;
  - weight sync <= 10% of a step for the tiny model;
  - overlap on vs off: step-time ratio, measured in this one run.

    .venv/bin/python benchmarks/bench_grpo.py [--steps 5] [--prompts-per-step 4] [--learners 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHASES = ("generate_s", "reward_s", "logprob_s", "update_s", "sync_s", "other_s")


def run_once(model_dir: str, images: dict, out: Path, steps: int, per_step: int, learners: int, overlap: bool) -> list[dict]:
    from learners.grpo_trainer import GRPOTrainer
    from learners.train_config import from_dict
    from learners.warm_start import CODE_REPLY, QUESTION, TEST_PROMPT

    colours = sorted(images)
    prompts = [{"id": f"p{i}", "question": QUESTION, "image_paths": [images[colours[i % 3]]], "answer": colours[i % 3],
                "assistant_prefix": "<answer>" if i % 2 else CODE_REPLY} for i in range(steps * per_step)]
    config = from_dict({
        "output_dir": str(out), "seed": 0,
        "stage": {"name": "grpo", "trainer": "grpo", "loss": "grpo", "data": "rl", "lr": 1e-4, "warmup_ratio": 0.0,
                  "min_lr_ratio": 1.0, "epochs": 1, "global_batch": per_step * 4, "micro_batch": 4, "zero_stage": 2,
                  "precision": "fp32",
                  "grpo": {"group_size": 4, "kl_beta": 0.01, "overlap": overlap, "max_staleness": int(overlap)}},
        "cluster": {"num_learners": learners, "cpus_per_learner": 1, "reference": "colocated"},
        "logging": {"wandb_mode": "disabled"}, "checkpoint": {"every_steps": 0, "keep_last": 1},
    })
    rollout = {"max_new_tokens_per_round": 48, "max_turns": 3, "engine_options": {"torch_threads": 1}}
    trainer = GRPOTrainer(config, model_dir, prompts, rollout=rollout, sandbox={}, prompt=TEST_PROMPT, show_progress=False)
    started = time.perf_counter()
    result = trainer.run()
    print(f"  overlap={'on' if overlap else 'off'}: {result.steps} steps in {time.perf_counter() - started:.1f} s "
          "(actor start-up included)", flush=True)
    import json

    return [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--learners", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

    import ray

    from learners.warm_start import ensure_warm_started
    from policy.tiny_model import ensure_tiny_model

    model_dir, images = ensure_warm_started(ensure_tiny_model(REPO / ".cache"), REPO / ".cache")
    ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
            runs = {mode: run_once(str(model_dir), images, Path(tmp) / mode, args.steps, args.prompts_per_step,
                                   args.learners, mode == "on") for mode in ("off", "on")}
    finally:
        ray.shutdown()

    def mean(rows, key):
        return statistics.fmean(r[key] for r in rows[1:])  # step 1 is warm-up
    print(f"\nmean per step over steps 2..{args.steps} ({args.prompts_per_step} prompts x 4 rollouts, "
          f"{args.learners} learner(s), tiny model, CPU)")
    print(f"{'phase':<12} {'overlap off':>12} {'share':>7} {'overlap on':>12} {'share':>7}")
    for phase in PHASES + ("step_s",):
        off, on = mean(runs["off"], phase), mean(runs["on"], phase)
        print(f"{phase:<12} {off:>11.3f}s {off / mean(runs['off'], 'step_s'):>7.1%} {on:>11.3f}s "
              f"{on / mean(runs['on'], 'step_s'):>7.1%}")
    print(f"sandbox (inside generate): {mean(runs['off'], 'sandbox_s'):.3f}s; generated tokens/s "
          f"{mean(runs['off'], 'tokens_per_s'):.0f}")
    step = mean(runs["off"], "step_s")
    other, sync = mean(runs["off"], "other_s") / step, mean(runs["off"], "sync_s") / step
    ratio = step / mean(runs["on"], "step_s")
    print(f"outside the phases: {other:.1%} of a step (target <= 5%): {'PASS' if other <= 0.05 else 'MISS'}")
    print(f"weight sync: {sync:.1%} of a step (target <= 10%): {'PASS' if sync <= 0.10 else 'MISS'}")
    print(f"overlap on vs off: {ratio:.2f}x steps/s (on a 2-core machine generation and training share the cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
