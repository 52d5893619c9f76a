"""SFT throughput and padding waste on this machine (CPU: the tiny model, one learner, fp32).

    .venv/bin/python benchmarks/bench_sft.py [--steps 6] [--rows N] [--data sft.jsonl]

Measures, in one run:
- padding waste of the length-grouped batch plan vs. random micro batches, over the encoded data
  (target: grouped <= 10%), with the ratio between them;
- training tokens/s (real tokens, padding excluded) of one DeepSpeed learner (ZeRO-2, fp32, gloo) on
  the tiny Qwen2.5-VL, steps after the first (warm-up) one, with grouped vs. random batches.
(Whether the trained tiny model then writes well-formed trajectories: benchmarks/sft_format_check.py.)
Data: the given SFT rows, else a generated task set with expert trajectories (built once under
.cache/bench_sft_data by envs.tasks; needs the sandbox), else hand-built rows.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


def load_rows(args):
    from envs.data import load_sft_rows
    from learners.synthetic_rows import synthetic_rows

    path = Path(args.data) if args.data else REPO / ".cache" / "bench_sft_data" / "sft.jsonl"
    if not path.is_file() and not args.data:
        cmd = [sys.executable, "-m", "envs.tasks", "generate", "--category", "all", "--n", str(args.rows),
               "--seed", "7", "--out", str(path.parent), "--trajectories", "--workers", "2"]
        if subprocess.run(cmd, cwd=REPO, capture_output=True).returncode != 0:
            print("task generation failed; using hand-built rows")
            return synthetic_rows(args.rows, seed=7), "hand-built rows"
    rows, _ = load_sft_rows(path)
    return rows, str(path)


def random_plan(lengths, geometry, seed):
    """Micro batches of random samples: what the plan would be without length grouping."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    steps = []
    for start in range(0, len(order) - geometry.global_batch + 1, geometry.global_batch):
        batch = order[start:start + geometry.global_batch]
        micro = [batch[k:k + geometry.micro_batch] for k in range(0, len(batch), geometry.micro_batch)]
        steps.append([micro[r::geometry.num_learners] for r in range(geometry.num_learners)])
    return steps


def train_tokens_per_s(learner, examples, plan, pad_id, image_pad_id, steps):
    from learners.batching import collate

    rates = []
    for step in plan[:steps]:
        micro = [collate([examples[i] for i in m], pad_id, image_pad_id) for m in step[0]]
        tokens = sum(sum(len(examples[i]["labels"]) for i in m) for m in step[0])
        trained = float(sum(sum(label != -100 for label in examples[i]["labels"][1:]) for m in step[0] for i in m))
        start = time.perf_counter()
        learner.train_step(micro, trained)
        rates.append(tokens / (time.perf_counter() - start))
    return sum(rates[1:]) / max(1, len(rates) - 1)  # the first step pays one-off allocation costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=96, help="tasks to generate when no data is given")
    parser.add_argument("--data", default=None, help="SFT rows (JSONL/Parquet) to benchmark on")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    args = parser.parse_args()

    from learners.batching import BatchGeometry, LengthFilter, padding_waste, plan_epoch
    from learners.learner import Learner, LearnerSettings
    from learners.sft_data import encode_rows
    from learners.sft_masking import MaskRules
    from policy.multimodal import PolicyProcessor
    from policy.prompts import load_prompt_config
    from policy.tiny_model import ensure_tiny_model

    model_dir = ensure_tiny_model(REPO / ".cache")
    processor = PolicyProcessor.from_pretrained(model_dir)
    rows, source = load_rows(args)
    examples, report = encode_rows(rows, processor, load_prompt_config().system, MaskRules(True),
                                   LengthFilter(4096, "truncate", processor.image_pad_id))
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"data: {source}: {report.summary()}; lengths {min(lengths)}..{max(lengths)}")

    geometry = BatchGeometry(args.global_batch, args.micro_batch, 1)
    grouped = plan_epoch(lengths, geometry, seed=0, epoch=0, group_window=8)
    unsorted = random_plan(lengths, geometry, seed=0)
    waste_grouped, waste_random = padding_waste(lengths, grouped), padding_waste(lengths, unsorted)
    print(f"padding waste: grouped {waste_grouped:.1%} (target <= 10%), random {waste_random:.1%}, "
          f"ratio random/grouped {waste_random / max(waste_grouped, 1e-9):.1f}x")

    settings = LearnerSettings(model_path=str(model_dir), total_steps=100, accumulation_steps=geometry.accumulation_steps,
                               micro_batch=args.micro_batch, lr=1e-3, warmup_ratio=0.0, min_lr_ratio=0.0,
                               weight_decay=0.0, adam_betas=(0.9, 0.999), adam_eps=1e-8, grad_clip=1.0,
                               zero_stage=2, precision="fp32")
    learner = Learner(0, 1, 0, vars(settings))
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    learner.setup("127.0.0.1", port)
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rate_grouped = train_tokens_per_s(learner, examples, grouped, pad_id, processor.image_pad_id, args.steps)
    rate_random = train_tokens_per_s(learner, examples, unsorted, pad_id, processor.image_pad_id, args.steps)
    print(f"training (1 CPU learner, ZeRO-2 fp32, tiny model, global batch {args.global_batch}, micro {args.micro_batch}): "
          f"{rate_grouped:.0f} tokens/s grouped, {rate_random:.0f} tokens/s random, "
          f"ratio grouped/random {rate_grouped / rate_random:.2f}x")
    learner.shutdown()


if __name__ == "__main__":
    main()
