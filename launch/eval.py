"""Evaluate a policy on a task set: greedy decoding (temperature 0, ATS off), the full agent loop.

    python -m launch.eval --model DIR --tasks DIR [--out DIR] [--limit N] [--device cuda --dtype bfloat16]

Prints a table per category (accuracy, code-use rate, code-success rate, mean turns) and writes
OUT/summary.json and OUT/predictions.jsonl, and logs a W&B run (conf/eval wandb_mode: offline by
default, into OUT/wandb) in the group of the training run that wrote the checkpoint: the table per
category and sample transcripts with their images. Settings come from conf/eval/default.yaml,
conf/rollout/default.yaml and conf/sandbox/default.yaml; the flags above are this command's fixed
interface, `--set key=value` changes an eval setting, `--rollout key=value` a rollout one and
`--sandbox key=value` a sandbox one.

Accuracy uses the rewards rule checker (rewards/rules.py: exact text, choices, yes/no, numbers,
math-verify); answers the rules cannot decide count as wrong and are reported as "undecided" (the
judge model is the trainer's business, not this offline eval's).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from policy.agent_config import load_eval_config, load_rollout_config
from policy.episode_record import EpisodeRecord
from rewards.format import check_format
from rewards.rules import Verdict, check_answer
from rewards.score import gate


def answer_checker():
    """(name, check(answer, reference, question) -> (correct, undecided, reason)) from the reward rules."""
    def rules(answer, reference, question):
        decision = check_answer(answer, reference, question)
        return decision.verdict == Verdict.CORRECT, decision.verdict == Verdict.UNDECIDED, decision.reason
    return "rewards.rules.check_answer (undecided = wrong)", rules


def prediction_row(record: EpisodeRecord, task, check) -> dict:
    correct, undecided, reason = check(record.answer, task.answer, task.question)
    well_formed, format_reason = check_format(record.response_text)
    # The rules-only training reward (rewards.score.gate, no judge): what GRPO maximises, per task.
    reward = gate(float(correct), 0.0, float(well_formed))
    return {
        "id": task.id, "category": task.category, "question": task.question, "reference": task.answer,
        "answer": record.answer, "correct": bool(correct), "undecided": bool(undecided), "reason": reason,
        "well_formed": bool(well_formed), "format_reason": format_reason, "reward": reward,
        "stop_reason": record.stop_reason, "turns": record.turns, "code_blocks": record.code_blocks,
        "code_successes": record.code_successes, "repairs": record.repairs, "timeouts": record.timeouts,
        "model_tokens": record.model_tokens, "error": record.error, "response": record.response_text,
    }


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per category and overall ("all"): n, accuracy, well-formed share (the reward's tag contract),
    code-use rate, code-success rate, mean turns."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["category"]].append(row)
        groups["all"].append(row)
    summary = {}
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        group = groups[name]
        runs = sum(r["code_blocks"] for r in group)
        summary[name] = {
            "n": len(group),
            "accuracy": sum(r["correct"] for r in group) / len(group),
            "well_formed_rate": sum(r["well_formed"] for r in group) / len(group),
            "code_use_rate": sum(r["code_blocks"] > 0 for r in group) / len(group),
            "code_success_rate": (sum(r["code_successes"] for r in group) / runs) if runs else None,
            "mean_turns": sum(r["turns"] for r in group) / len(group),
            "mean_reward": sum(r.get("reward", 0.0) for r in group) / len(group),
            "undecided": sum(r["undecided"] for r in group),
            "errors": sum(r["error"] is not None for r in group),
        }
    return summary


def format_table(summary: dict[str, dict]) -> str:
    head = f"{'category':<14} {'n':>5} {'accuracy':>9} {'format ok':>9} {'code use':>9} {'code ok':>8} {'reward':>7} {'turns':>6} {'undecided':>9}"
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        ok = "-" if s["code_success_rate"] is None else f"{s['code_success_rate']:.1%}"
        lines.append(f"{name:<14} {s['n']:>5} {s['accuracy']:>9.1%} {s['well_formed_rate']:>9.1%} {s['code_use_rate']:>9.1%} {ok:>8} "
                     f"{s.get('mean_reward', 0.0):>7.3f} {s['mean_turns']:>6.2f} {s['undecided']:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from launch.chat import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local model folder (tiny or a Qwen2.5-VL checkpoint)")
    parser.add_argument("--tasks", required=True, help="task folder holding tasks.jsonl (python -m envs.tasks generate)")
    parser.add_argument("--out", default=None, help="output folder (default: conf/eval out_dir)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--prompt", default="thyme", help="conf/prompt/<name>.yaml: the prompt contract the model was trained with")
    parser.add_argument("--set", dest="eval_overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rollout", dest="rollout_overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sandbox", dest="sandbox_overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    # Settings and inputs are checked before the model loads.
    from launch.chat import sandbox_settings
    from launch.input_checks import task_dir_problem
    from policy.model_dir import model_dir_problem

    overrides = parse_overrides(args.eval_overrides)
    for key in ("out", "limit", "device", "dtype"):
        value = getattr(args, key)
        if value is not None:
            overrides["out_dir" if key == "out" else key] = value
    rollout = parse_overrides(args.rollout_overrides)
    try:
        cfg = load_eval_config(overrides=overrides)
        rollout.setdefault("max_new_tokens_per_round", cfg.max_new_tokens_per_round)
        rollout.setdefault("max_turns", cfg.max_turns)
        rollout_cfg = load_rollout_config(overrides=rollout)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"bad --set / --rollout value: {exc}") from None
    sandbox_config = sandbox_settings(args.sandbox_overrides)
    from policy.prompts import load_prompt_config

    try:
        prompt = load_prompt_config(args.prompt)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"--prompt {args.prompt}: {exc}") from None
    problem = task_dir_problem(args.tasks) or model_dir_problem(args.model, "--model")
    if problem:
        raise SystemExit(problem)

    from tqdm import tqdm

    from envs.sandbox import Sandbox
    from envs.tasks import load_tasks
    from policy.agent_engine import make_engine
    from policy.agent_loop import AgentLoop, EpisodeInput
    from policy.engine import SamplingSettings

    try:
        tasks = load_tasks(args.tasks)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--tasks {args.tasks}: {exc}") from None
    if cfg.split is not None:
        tasks = [t for t in tasks if t.split == cfg.split]
    tasks = tasks[:cfg.limit] if cfg.limit else tasks
    if not tasks:
        raise SystemExit(f"no tasks to evaluate in {args.tasks} (split={cfg.split}, limit={cfg.limit})")
    checker_name, check = answer_checker()
    engine = make_engine(args.model, rollout_cfg.engine, device=cfg.device, dtype=cfg.dtype,
                         options=rollout_cfg.engine_options)
    greedy = SamplingSettings.greedy(repetition_stop=rollout_cfg.sampling.repetition_stop)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from launch.eval_wandb import EvalLogger, pick_samples

    wandb_log = EvalLogger(cfg.wandb_mode, cfg.wandb_project, str(args.model), out_dir,
                           {"model": str(args.model), "tasks": str(args.tasks), "eval": asdict(cfg),
                            "rollout": asdict(rollout_cfg)}, cfg.wandb_samples)
    samples = pick_samples([{"id": t.id, "category": t.category} for t in tasks], cfg.wandb_samples)
    rows, stats = [], defaultdict(float)
    with Sandbox(sandbox_config) as sandbox, AgentLoop(engine, sandbox, rollout_cfg, prompt) as loop, \
            tqdm(total=len(tasks), desc="eval", unit="task") as bar, \
            open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as predictions:
        for start in range(0, len(tasks), cfg.batch_size):
            batch = tasks[start:start + cfg.batch_size]
            inputs = [EpisodeInput(question=t.question, image_paths=t.image_paths, id=t.id, reference=t.answer,
                                   meta={"category": t.category}) for t in batch]
            records = loop.run(inputs, sampling=greedy, on_progress=bar.update)
            for key in ("wall_s", "engine_s", "sandbox_s", "other_s"):
                stats[key] += loop.last_stats.get(key, 0.0)
            for task, record in zip(batch, records):
                row = prediction_row(record, task, check)
                rows.append(row)
                predictions.write(json.dumps(row, ensure_ascii=False) + "\n")
                if task.id in samples:
                    wandb_log.add(row, record, engine.tokenizer, num_inputs=len(task.image_paths))
    summary = summarise(rows)
    wandb_log.finish(summary)
    report = {"model": str(args.model), "tasks": str(args.tasks), "checker": checker_name,
              "decoding": "greedy (temperature 0, ATS off)", "prompt": args.prompt, "categories": summary, "timing_s": dict(stats),
              "eval_config": asdict(cfg)}
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2))
    print(format_table(summary))
    print(f"accuracy by {checker_name}; {len(rows)} tasks in {stats['wall_s']:.1f} s "
          f"(engine {stats['engine_s']:.1f} s, sandbox {stats['sandbox_s']:.1f} s)")
    print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'predictions.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
