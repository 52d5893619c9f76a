"""The main job on the embedded default (CPU, tiny model, local Ray): what `make demo` runs.

    python -m launch.demo [--out outputs/demo] [--skip-train]

Four steps, each through the same command a user would type, so the demo exercises the real entry
points rather than a special path:
  1. sandbox: a model-style crop snippet on a generated high-resolution image, in the isolated sandbox;
  2. train:   `python -m launch.train` (builds the tiny Qwen2.5-VL and a task set with expert
              trajectories on the fly, then the two SFT stages, image data then math annealing, on
              DeepSpeed learners in a local Ray cluster);
  3. eval:    `python -m launch.eval` of the trained model on held-out tasks (accuracy, code use);
  4. chat:    `python -m launch.chat` on one held-out image, transcript printed.
A randomly initialised tiny model trained for a few CPU steps is not expected to answer well: the
demo shows the system working end to end; real accuracy needs a real checkpoint and a GPU.
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


def banner(step: str, text: str) -> None:
    print(f"\n{'=' * 100}\n[demo] {step}: {text}\n{'=' * 100}", flush=True)


def run(cmd: list[str]) -> None:
    """Run one step's command with this interpreter; stop the demo with its exit code if it fails."""
    print("[demo] $ " + " ".join(cmd), flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO_ROOT)
    if proc.returncode != 0:
        print(f"[demo] step failed with exit code {proc.returncode}: {' '.join(cmd)}", file=sys.stderr)
        sys.exit(proc.returncode)
    print(f"[demo] done in {time.perf_counter() - started:.1f} s", flush=True)


def sandbox_step(out: Path) -> None:
    """Draw a 2400x1600 image with a small note and run a crop on it in the sandbox."""
    import cv2
    import numpy as np

    from envs.sandbox import Sandbox

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


def trained_model(train_out: Path) -> Path:
    """The Hugging Face folder of the last stage `launch.train` finished."""
    results = json.loads((train_out / "train_result.json").read_text())
    return Path(results[-1]["hf_dir"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="folder for everything the demo writes")
    parser.add_argument("--skip-train", action="store_true", help="reuse the model a previous demo trained")
    parser.add_argument("--eval-tasks", type=int, default=12, help="held-out tasks to evaluate (spread over categories)")
    args = parser.parse_args(argv)
    out = (REPO_ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    banner("1/4 sandbox", "a model-written crop runs in the isolated sandbox, its repairs listed")
    sandbox_step(out)

    train_out = out / "train"
    banner("2/4 train", "SFT cold start of the tiny Qwen2.5-VL on generated tasks, DeepSpeed learners on local Ray")
    if not (args.skip_train and (train_out / "train_result.json").exists()):
        # Both SFT stages: image data, then math annealing starting from its checkpoint. A demo run trains
        # afresh (resume=false); `--skip-train` reuses the last model instead.
        run(["-m", "launch.train", "pipeline=[sft_small,sft_math_small]", f"output_dir={train_out}",
             f"data.generate_dir={out / 'sft_data'}", "checkpoint.resume=false"])
    model = trained_model(train_out)

    banner("3/4 eval", "greedy agent loop over held-out tasks: accuracy, code use, code success, turns")
    tasks = out / "eval_tasks"
    if not (tasks / "tasks.jsonl").exists():
        run(["-m", "envs.tasks", "generate", "--category", "all", "--n", str(args.eval_tasks), "--seed", "1",
             "--split", "eval", "--out", str(tasks)])
    run(["-m", "launch.eval", "--model", str(model), "--tasks", str(tasks), "--out", str(out / "eval")])

    banner("4/4 chat", "one conversation with the trained model, transcript and produced images")
    run(["-m", "launch.chat", "--model", str(model), "--image", str(out / "demo_input.jpg"), "--out",
         str(out / "chat"), "--seed", "0", "What is the code written on the small note?"])

    print(f"\n[demo] finished in {time.perf_counter() - started:.0f} s; everything is under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
