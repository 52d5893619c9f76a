"""Compare evaluations of several models on the same held-out tasks: one table per model (per category:
accuracy, format ok, code use, code that ran, mean reward, turns) and a paired bootstrap of the mean
reward difference between two of them.

    python -m launch.eval_compare random=DIR sft=DIR grpo=DIR [--pair sft,grpo] [--out FILE.json]

Each DIR is a `launch.eval --out` folder (its predictions.jsonl). The comparison is paired: a task
counts only when every model was evaluated on it (matched by task id), and the bootstrap resamples
tasks, so each resample keeps a task's rewards under both models together.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from launch.eval import summarise

METRICS = ("accuracy", "format ok", "code use", "code ran", "reward", "turns")


def load_predictions(folder: str | Path) -> dict[str, dict]:
    """{task id: prediction row} of a launch.eval folder."""
    path = Path(folder) / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def category_table(rows: list[dict]) -> dict[str, dict]:
    """launch.eval's per-category summary (categories, then "all") under the report's column names:
    n, accuracy, format-ok share, code-use share, share of code blocks that ran (None without code),
    mean reward, mean turns."""
    return {name: {"n": s["n"], "accuracy": s["accuracy"], "format ok": s["well_formed_rate"],
                   "code use": s["code_use_rate"], "code ran": s["code_success_rate"], "reward": s["mean_reward"],
                   "turns": s["mean_turns"]}
            for name, s in summarise(rows).items()}


def format_category_table(title: str, table: dict[str, dict]) -> str:
    head = f"{'category':<14} {'n':>4} {'accuracy':>9} {'format ok':>10} {'code use':>9} {'code ran':>9} {'reward':>7} {'turns':>6}"
    lines = [title, head, "-" * len(head)]
    for name, s in table.items():
        ran = "-" if s["code ran"] is None else f"{s['code ran']:.0%}"
        lines.append(f"{name:<14} {s['n']:>4} {s['accuracy']:>9.0%} {s['format ok']:>10.0%} {s['code use']:>9.0%} "
                     f"{ran:>9} {s['reward']:>7.3f} {s['turns']:>6.2f}")
    return "\n".join(lines)


def paired_bootstrap(a: list[float], b: list[float], *, resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of b - a over paired observations and its percentile bootstrap interval (tasks resampled
    with replacement, `resamples` times, seeded)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired bootstrap needs two equally long non-empty lists, got {len(a)} and {len(b)}")
    diffs = [y - x for x, y in zip(a, b)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    low, high = means[int(tail * resamples)], means[min(resamples - 1, int((1.0 - tail) * resamples))]
    return {"n": n, "mean_a": sum(a) / n, "mean_b": sum(b) / n, "mean_diff": sum(diffs) / n,
            "ci_low": low, "ci_high": high, "level": level, "resamples": resamples,
            "excludes_zero": low > 0 or high < 0}


def compare(evals: dict[str, str | Path], pair: tuple[str, str] | None = None, **bootstrap) -> dict:
    """Tables of every model on the tasks all of them were evaluated on, and the paired bootstrap of
    pair[1] - pair[0] on the mean reward (default: the last two models given)."""
    predictions = {name: load_predictions(folder) for name, folder in evals.items()}
    shared = sorted(set.intersection(*(set(p) for p in predictions.values())))
    if not shared:
        raise ValueError(f"the evaluations {list(evals)} share no task id: evaluate them on the same task set")
    tables = {name: category_table([p[i] for i in shared]) for name, p in predictions.items()}
    names = list(evals)
    if pair is None and len(names) >= 2:
        pair = (names[-2], names[-1])
    a, b = pair or (None, None)
    result = {"tasks": len(shared), "tables": tables}
    if a is not None:
        stats = paired_bootstrap([float(predictions[a][i]["reward"]) for i in shared],
                                 [float(predictions[b][i]["reward"]) for i in shared], **bootstrap)
        result["bootstrap"] = {"a": a, "b": b, "metric": "reward", **stats}
    return result


def format_bootstrap(stats: dict) -> str:
    verdict = "excludes 0: the difference is more than the noise" if stats["excludes_zero"] else \
        "includes 0: not distinguishable from the noise"
    return (f"mean reward {stats['b']} {stats['mean_b']:.3f} vs {stats['a']} {stats['mean_a']:.3f} on n={stats['n']} "
            f"held-out tasks: difference {stats['mean_diff']:+.3f}, paired bootstrap {stats['level']:.0%} interval "
            f"[{stats['ci_low']:+.3f}, {stats['ci_high']:+.3f}] ({stats['resamples']} resamples) {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evals", nargs="+", metavar="NAME=DIR", help="a name and a launch.eval --out folder")
    parser.add_argument("--pair", default=None, help="A,B: bootstrap B - A (default: the last two given)")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    evals = {}
    for item in args.evals:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"{item!r}: expected NAME=DIR")
        if not (Path(folder) / "predictions.jsonl").is_file():
            raise SystemExit(f"{folder}: no predictions.jsonl (run python -m launch.eval --out {folder} first)")
        evals[name] = folder
    pair = tuple(args.pair.split(",")) if args.pair else None
    if pair and (len(pair) != 2 or any(p not in evals for p in pair)):
        raise SystemExit(f"--pair {args.pair}: expected two of {list(evals)}")
    try:
        result = compare(evals, pair, resamples=args.resamples)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    for name, table in result["tables"].items():
        print(format_category_table(f"\n[{name}] on {result['tasks']} held-out tasks", table))
    if "bootstrap" in result:
        print("\n" + format_bootstrap(result["bootstrap"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
