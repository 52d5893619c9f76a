"""The main job on the embedded default (CPU, tiny model, local Ray): what `make demo` runs.

    python -m launch.demo [--out outputs/demo] [--skip-train] [--eval-tasks 400]

Every step goes through the command a user would type, so the demo exercises the real entry points:
  1. sandbox: a model-style crop snippet on a generated high-resolution image, in the isolated sandbox;
  2. tasks:   `python -m envs.tasks generate` three times, each from its own seed: SFT tasks with expert
              trajectories (real sandbox), GRPO prompts, and the held-out evaluation tasks (split eval);
  3. train:   `python -m launch.train 'pipeline=[sft_demo,sft_math_demo,grpo_demo]'`: the tiny
              Qwen2.5-VL built from scratch, SFT on image data, computation annealing, then GRPO-ATS
              (rules-only rewards, no judge) on DeepSpeed learners, rollout, sandbox and reward actors
              in a local Ray cluster;
  4. eval:    `python -m launch.eval` of the base model (the tiny model before SFT), the SFT and the GRPO
              model on the same held-out tasks;
  5. report:  `python -m launch.eval_compare` (one table per model, paired bootstrap of the mean reward
              GRPO vs SFT) and `python -m launch.learning_plot` (outputs/demo/learning.png);
  6. chat:    `python -m launch.chat` with the final model on one held-out task, transcript printed.
The demo's recipe (task mix, difficulty, short prompt conf/prompt/demo.yaml, stage settings in
conf/stage/*_demo.yaml) and the measurements that chose it are in docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "demo"
# The demo's task mix and difficulty (docs/training.md "The demo recipe"): categories whose expert code
# is a fixed idiom plus a number or two, computation kept easy (few values to transcribe).
CATEGORIES = "direct,rotation,low_contrast,computation"
DIFFICULTY = "computation=0,rotation=0"
# Generator settings (envs/tasks/config.py): no literal training paths in code (a string the model can
# only recite); direct questions about colour, count and shape (not words: reading needs OCR), answered
# by measuring with code whose printed result the model copies (the tiny model does not learn to see
# colours or shapes in a demo's time: benchmarks/vision_probe.py, docs/training.md).
TASK_SETTINGS = ("literal_path_share=0", "direct.kinds=[colour,count,shape]", "direct.measure_share=1")
# GRPO's prompts: direct, whose accuracy varies with what the model writes (rotation and low contrast
# score 0 for accuracy whatever it does, at this size), and computation, whose format GRPO on direct
# prompts alone lets slip (98% -> 65% well-formed in one run: docs/training.md).
RL_CATEGORIES = "direct,computation"
# Four task sets, four seeds: the held-out tasks are never trained on.
SEEDS = {"sft": 11, "math": 12, "rl": 21, "eval": 999}
PIPELINE = "pipeline=[sft_demo,sft_math_demo,grpo_demo]"
# The tiny model with each Thyme tag one token, taught to restate what a tool printed before SFT
# (policy/tiny_model.py TinyModelConfig says why; docs/training.md "Copying").
MODEL_SETTINGS = ("model.tiny_tag_tokens=true", "model.tiny_copy_pretrain_steps=300")

CROP_SNIPPET = """
<code>
```python
# what a Thyme model writes: crop around the note, enlarge it, save under the reference folder
img = cv2.imread(image_path)
bbox = (1600, 1150, 2700, 1350)           # runs past the right edge: the repair pass clamps it
crop = img[bbox[1]:bbox[3], bbox[0]:bbox[2]]
crop = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
processed_path = "/mnt/data/temp_processed_images/note_zoom.png"
cv2.imwrite(processed_path, crop)
print(processed_path)
```
</code>
"""
TIMES: list[tuple[str, float]] = []


def banner(step: str, text: str) -> None:
    print(f"\n{'=' * 100}\n[demo] {step}: {text}\n{'=' * 100}", flush=True)


def run(cmd: list[str], label: str) -> None:
    """Run one step's command with this interpreter; stop the demo with its exit code if it fails."""
    print("[demo] $ python " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO_ROOT)
    if proc.returncode != 0:
        print(f"[demo] step failed with exit code {proc.returncode}: {' '.join(cmd)}", file=sys.stderr)
        sys.exit(proc.returncode)
    TIMES.append((label, time.perf_counter() - started))
    print(f"[demo] {label} done in {TIMES[-1][1]:.1f} s", flush=True)


def sandbox_step(out: Path) -> None:
    """Draw a 2400x1600 image with a small note and run a crop on it in the sandbox."""
    import cv2
    import numpy as np

    from envs.sandbox import Sandbox

    started = time.perf_counter()
    image = np.full((1600, 2400, 3), 235, np.uint8)
    cv2.rectangle(image, (1700, 1200), (1960, 1300), (40, 40, 200), 2)
    cv2.putText(image, "CODE 4172", (1712, 1262), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2)
    path = out / "demo_input.jpg"
    cv2.imwrite(str(path), image)
    with Sandbox() as sandbox, sandbox.episode(images=[str(path)]) as episode:
        server = sandbox.servers[0]
        print(f"[demo] isolation in force: {sandbox.isolation}; per-episode uid: {sandbox.uid_mode}; "
              f"Landlock ABI: {server.landlock_abi or 'off'}; seccomp: {server.seccomp}")
        result = episode.run(CROP_SNIPPET)
        kept = []
        for produced in result.images:  # the episode's folder is removed when it ends: keep copies
            target = out / Path(produced).name
            target.write_bytes(Path(produced).read_bytes())
            kept.append(str(target))
    print(f"[demo] ok={result.ok} timed_out={result.timed_out} in {result.duration_s * 1000:.0f} ms")
    print(f"[demo] stdout: {result.stdout.strip()!r}")
    print(f"[demo] repairs: {result.fixes}")
    print(f"[demo] produced images (copied): {kept}")
    if not result.ok:
        print(f"[demo] sandbox error: {result.error}", file=sys.stderr)
        sys.exit(1)
    TIMES.append(("sandbox", time.perf_counter() - started))


def generate(out: Path, n: int, seed: int, split: str, trajectories: bool, label: str, categories: str = CATEGORIES) -> None:
    product = out / ("sft.jsonl" if trajectories else "tasks.jsonl")
    if product.is_file():
        print(f"[demo] {label}: reusing {product}")
        return
    run(["-m", "envs.tasks", "generate", "--category", categories, "--difficulty", DIFFICULTY, "--n", str(n),
         "--seed", str(seed), "--split", split, "--out", str(out), "--prompt", PROMPT, "--workers", "2",
         "--set", *TASK_SETTINGS] + (["--trajectories"] if trajectories else []), label)


def stage_models(train_out: Path) -> dict[str, str]:
    """{stage name: its final Hugging Face folder} of the pipeline `launch.train` finished."""
    return {r["stage"]: r["hf_dir"] for r in json.loads((train_out / "train_result.json").read_text())}


def print_times(total: float) -> None:
    print("\n[demo] time per step")
    for label, seconds in TIMES:
        print(f"[demo]   {label:<28} {seconds:>7.1f} s")
    print(f"[demo]   {'total':<28} {total:>7.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="folder for everything the demo writes")
    parser.add_argument("--skip-train", action="store_true", help="reuse the models a previous demo trained")
    parser.add_argument("--sft-tasks", type=int, default=800, help="SFT tasks (with expert trajectories)")
    parser.add_argument("--math-tasks", type=int, default=100, help="computation tasks of the annealing stage")
    parser.add_argument("--rl-tasks", type=int, default=400, help="GRPO prompts")
    parser.add_argument("--eval-tasks", type=int, default=400, help="held-out tasks (spread over the categories)")
    parser.add_argument("--train", action="append", default=[], metavar="OVERRIDE",
                        help="extra launch.train override (e.g. stage.max_steps=5 for a quick look)")
    args = parser.parse_args(argv)
    out = (REPO_ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name, value in (("RAY_AUTH_MODE", "disabled"), ("WANDB_MODE", "offline"), ("HF_HUB_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    started = time.perf_counter()

    banner("1/6 sandbox", "a model-written crop runs in the isolated sandbox, its repairs listed")
    sandbox_step(out)

    banner("2/6 tasks", f"generated tasks ({CATEGORIES}; {DIFFICULTY}), own seeds: SFT, annealing, GRPO, held-out eval")
    data = out / "data"
    generate(data / "sft", args.sft_tasks, SEEDS["sft"], "train", True, "SFT tasks + expert trajectories")
    generate(data / "math", args.math_tasks, SEEDS["math"], "train", True, "computation tasks + trajectories",
             categories="computation")
    generate(data / "rl", args.rl_tasks, SEEDS["rl"], "train", False, "GRPO prompts", categories=RL_CATEGORIES)
    generate(data / "eval", args.eval_tasks, SEEDS["eval"], "eval", False, "held-out tasks")

    train_out, tiny = out / "train", out / "tiny_model"
    banner("3/6 train", "the tiny Qwen2.5-VL from scratch: SFT (image data), SFT (computation), GRPO-ATS; local Ray")
    if not (args.skip_train and (train_out / "train_result.json").exists()):
        run(["-m", "launch.train", PIPELINE, f"prompt={PROMPT}", f"output_dir={train_out}", f"model.tiny_dir={tiny}",
             *MODEL_SETTINGS,
             # the image stage trains every SFT row (computation included), the annealing its own set
             f"data.sft_path={data / 'sft' / 'sft.jsonl'}", "data.math_categories=[]",
             f"data.math_path={data / 'math' / 'sft.jsonl'}", f"data.rl_path={data / 'rl' / 'rl.jsonl'}",
             "checkpoint.resume=false", *args.train], "train (SFT, SFT math, GRPO)")
    stages = stage_models(train_out)
    # base: the tiny model SFT starts from (random weights + the copy pre-training on synthetic text)
    models = {"base": str(tiny), "sft": stages["sft_math"], "grpo": stages["grpo"]}

    banner("4/6 eval", "greedy agent loop on the same held-out tasks: the base (before SFT), SFT and GRPO models")
    for name, model in models.items():
        # batches of 32: 11% faster than 16 on 2 cores, same answers (greedy)
        run(["-m", "launch.eval", "--model", model, "--tasks", str(data / "eval"), "--out", str(out / "eval" / name),
             "--prompt", PROMPT, "--set", "wandb_mode=disabled", "--set", "batch_size=32"], f"eval {name}")

    banner("5/6 report", "one table per model, GRPO vs SFT with a paired bootstrap, outputs/demo/learning.png")
    compare = out / "compare.json"
    run(["-m", "launch.eval_compare", *(f"{name}={out / 'eval' / name}" for name in models), "--pair", "sft,grpo",
         "--out", str(compare)], "compare")
    run(["-m", "launch.learning_plot", "--metrics", str(train_out / "grpo" / "metrics.jsonl"), "--compare",
         str(compare), "--out", str(out / "learning.png")], "plot")

    banner("6/6 chat", "one conversation with the final model on a held-out task")
    from envs.tasks import load_tasks

    # the first held-out direct question: the category this model can answer (it measures with code and
    # restates the printout); faint or rotated words it cannot read at this size
    task = next(t for t in load_tasks(data / "eval") if t.category == "direct")
    print(f"[demo] question: {task.question!r}; reference answer: {task.answer!r}")
    run(["-m", "launch.chat", "--model", models["grpo"], "--image", str(Path(task.image_paths[0]).resolve()),
         "--out", str(out / "chat"), "--prompt", PROMPT, "--greedy", task.question], "chat")

    print_times(time.perf_counter() - started)
    print(f"[demo] everything is under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
