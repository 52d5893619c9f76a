"""Does a model use the image? Teacher-forced answers to direct colour, shape and count questions.

    .venv/bin/python benchmarks/vision_probe.py --model MODEL_DIR --tasks TASK_DIR [--prompt demo]

For every direct task of TASK_DIR (envs.tasks generate --category direct) whose kind is colour, shape or
count, the prompt (with the image) plus the direct expert's words up to the answer are fed to the
model, and the next-token probabilities of the candidate answers compared. Prints per kind: how often
the most likely candidate is right, the mean probability of the right one, chance, and how much the
candidates' probabilities vary from image to image (near 0: the answer does not depend on the image).
Measured on the demo's tiny model (docs/training.md "The demo recipe"): spread 0.004-0.03 after SFT,
whatever the data, learning rate or freezing; a linear probe on the vision tower's pooled features
(standardised) separates the colours perfectly, so the information is there and the 2-layer text
model does not learn to read it.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = {"colour": ["red", "green", "blue", "yellow", "orange", "purple"],
              "shape": ["circle", "square", "triangle"], "count": ["1", "2", "3", "4", "5"]}
# The direct expert's words before the answer (envs/tasks/experts/direct.py)
PREFIX = {"colour": "There is a single large circle, and it is ", "shape": "The image contains one large ",
          "count": "The shapes are large and well separated; counting them gives "}


def main(argv: list[str] | None = None) -> int:
    import torch
    from PIL import Image

    from envs.tasks import load_tasks
    from policy.model import load_policy
    from policy.prompts import load_prompt_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--prompt", default="demo")
    args = parser.parse_args(argv)
    model, processor = load_policy(args.model)
    prompt = load_prompt_config(args.prompt)
    probs: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for task in load_tasks(args.tasks):
        kind = task.meta.get("kind")
        if task.category != "direct" or kind not in CANDIDATES:
            continue
        image = Image.open(task.image_paths[0]).convert("RGB")
        ids = processor.chat_prompt_ids(prompt.system, prompt.user_text(task.question, task.image_paths[0], image.width,
                                                                        image.height), [image])
        ids += processor.text_ids("<think>This is easy to see directly. " + PREFIX[kind])
        first = [processor.text_ids(c)[0] for c in CANDIDATES[kind]]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), mm_token_type_ids=(x == processor.image_pad_id).int(),
                           **processor.pixel_inputs([image])).logits[0, -1]
        p = torch.softmax(logits.float(), -1)[first]
        probs[kind].append((CANDIDATES[kind].index(task.answer), p / p.sum()))
    if not probs:
        raise SystemExit(f"no direct colour/shape/count tasks in {args.tasks}")
    print(f"{'kind':<8} {'n':>4} {'argmax right':>12} {'P(right)':>9} {'chance':>7} {'spread':>7}")
    for kind, rows in sorted(probs.items()):
        p = torch.stack([q for _, q in rows])
        y = torch.tensor([a for a, _ in rows])
        print(f"{kind:<8} {len(y):>4} {(p.argmax(1) == y).float().mean().item():>12.2f} "
              f"{p[torch.arange(len(y)), y].mean().item():>9.2f} {1 / p.shape[1]:>7.2f} {p.std(0).mean().item():>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
