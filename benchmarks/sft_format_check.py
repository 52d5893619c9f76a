"""After SFT, does the tiny model write well-formed trajectories with code that runs?

    .venv/bin/python benchmarks/sft_format_check.py [--train-tasks 1200 --epochs 6 --work-dir DIR]

Every step goes through the project's own commands, so this is the path a user takes:
1. `envs.tasks generate --trajectories`: training tasks with expert trajectories (real sandbox);
2. `envs.tasks generate --split eval`: held-out tasks (another seed, another folder);
3. `launch.train stage=sft_small`: the tiny Qwen2.5-VL built on the fly, SFT on DeepSpeed in local Ray
   (computation rows trained in the same stage: `data.math_categories=[]`);
4. `launch.eval`: greedy decoding, the full agent loop and the real sandbox on the held-out tasks.
Prints launch.eval's table and one line: share of well-formed responses (the reward's format check),
code use, share of code blocks that ran, accuracy. Each step is skipped when its product exists in the
work folder, so a second run only re-evaluates. Takes about 25 min on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
for name, value in (("RAY_AUTH_MODE", "disabled"), ("WANDB_MODE", "disabled"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-tasks", type=int, default=1200)
    parser.add_argument("--eval-tasks", type=int, default=36)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--work-dir", default=str(REPO / ".cache" / "sft_format_check"))
    args = parser.parse_args()

    work = Path(args.work_dir).resolve()
    train, held_out, run = work / "train_tasks", work / "eval_tasks", work / "run"
    python = sys.executable
    steps = [
        ([python, "-m", "envs.tasks", "generate", "--category", "all", "--n", str(args.train_tasks), "--seed", "11",
          "--split", "train", "--out", str(train), "--trajectories", "--workers", "2"], train / "sft.jsonl"),
        ([python, "-m", "envs.tasks", "generate", "--category", "all", "--n", str(args.eval_tasks), "--seed", "999",
          "--split", "eval", "--out", str(held_out)], held_out / "tasks.jsonl"),
        ([python, "-m", "launch.train", "stage=sft_small", f"stage.epochs={args.epochs}", f"output_dir={run}",
          f"model.tiny_dir={work / 'tiny_model'}", f"data.sft_path={train / 'sft.jsonl'}", "data.math_categories=[]",
          "logging=disabled", "checkpoint.keep_last=1"], run / "train_result.json"),
    ]
    for cmd, product in steps:
        if not product.exists():
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
    result = json.loads((run / "train_result.json").read_text())[-1]
    eval_out = work / "eval"
    cmd = [python, "-m", "launch.eval", "--model", result["hf_dir"], "--tasks", str(held_out), "--out", str(eval_out)]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)

    summary = json.loads((eval_out / "summary.json").read_text())["categories"]["all"]
    rows = [json.loads(line) for line in (eval_out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    blocks, ran = sum(r["code_blocks"] for r in rows), sum(r["code_successes"] for r in rows)
    print(f"after SFT ({result['steps']} steps, loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}) on "
          f"{summary['n']} held-out tasks: well-formed {summary['well_formed_rate']:.1%}, "
          f"wrote code {summary['code_use_rate']:.1%}, code that ran {ran}/{blocks} = {ran / max(1, blocks):.1%}, "
          f"accuracy {summary['accuracy']:.1%}")


if __name__ == "__main__":
    main()
