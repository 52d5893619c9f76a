"""Command line for task sets.

    python -m envs.tasks generate --category all --n 1000 --seed 0 --split train --out DIR [--trajectories]
    python -m envs.tasks show DIR --n 16 --out sheet.png

`generate` writes DIR/tasks.jsonl (+ images/, references/) and DIR/rl.jsonl (released RL format); with
--trajectories it also runs the expert trajectories through the sandbox and writes DIR/sft.jsonl
(released SFT format, only trajectories that pass the filters) and DIR/sft_stats.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from envs.tasks.schema import CATEGORIES

log = logging.getLogger("envs.tasks")


def _categories(value: str) -> str:
    """`all`, one category, or a comma-separated list of distinct categories (as given, validated)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in CATEGORIES and not (n == "all" and len(names) == 1)]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"invalid choice {value!r}: expected all, or distinct categories from {', '.join(CATEGORIES)}")
    return ",".join(names)


def _difficulty(value: str) -> float | dict[str, float]:
    """A level in [0, 1], or CATEGORY=LEVEL pairs separated by commas."""
    def level(text: str) -> float:
        number = float(text)
        if not 0.0 <= number <= 1.0:
            raise ValueError
        return number
    try:
        if "=" not in value:
            return level(value)
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        levels = {name.strip(): level(number) for name, number in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a level in [0, 1] or CATEGORY=LEVEL,...") from None
    unknown = sorted(set(levels) - set(CATEGORIES))
    if unknown or not levels:
        raise argparse.ArgumentTypeError(f"{value!r}: unknown categories {unknown}; expected some of {', '.join(CATEGORIES)}")
    return levels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m envs.tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a task set (and optionally expert SFT trajectories)")
    gen.add_argument("--category", default="all", type=_categories,
                     help=f"all, one of {', '.join(CATEGORIES)}, or a comma-separated list (round-robin)")
    gen.add_argument("--n", type=int, required=True, help="number of tasks (spread over categories for 'all')")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--split", default="train", choices=["train", "eval"])
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--difficulty", type=_difficulty, default=None,
                     help="fixed difficulty in [0, 1] for every task, or per category (computation=0,rotation=0.3; "
                          "the others drawn); default: drawn per task")
    gen.add_argument("--trajectories", action="store_true", help="also write expert SFT trajectories (needs the sandbox)")
    gen.add_argument("--sft-format", default="jsonl", choices=["jsonl", "parquet"], help="file format of the SFT rows")
    gen.add_argument("--prompt", default="thyme", help="conf/prompt/<name>.yaml (or a .yaml file with system and user_template) the SFT and RL rows are written with")
    gen.add_argument("--workers", type=int, default=1, help="processes for drawing, threads for sandbox episodes")
    gen.add_argument("--config", default=None, help="YAML file shaped like envs.tasks.config.TaskGenConfig")
    gen.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="config overrides, e.g. small_object.canvas_max=3000")
    show = sub.add_parser("show", help="write a contact sheet of a task set")
    show.add_argument("dir")
    show.add_argument("--n", type=int, default=16)
    show.add_argument("--columns", type=int, default=4)
    show.add_argument("--out", default="sheet.png")
    return parser


def _generate(args) -> int:
    from envs.data.rl_rows import write_rl_rows
    from envs.data.sft_rows import write_sft_rows
    from envs.data.thyme_prompt import load_prompt_texts
    from envs.tasks.build import generate_tasks
    from envs.tasks.config import load_config
    from envs.tasks.export_rows import rl_row

    if args.n <= 0:
        raise SystemExit("--n must be positive")
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    try:
        config = load_config(args.config, args.set)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(str(exc))
    out = Path(args.out)
    try:
        prompt = load_prompt_texts(args.prompt)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"--prompt {args.prompt}: {exc}")
    if args.trajectories and config.literal_path_share > 0 and not prompt.shows_image_path:
        raise SystemExit(f"--prompt {args.prompt} does not show the image path, so expert code cannot copy it: "
                         f"pass --set literal_path_share=0 (now {config.literal_path_share})")
    tasks = generate_tasks(args.category, args.n, seed=args.seed, split=args.split, out_dir=out,
                           difficulty=args.difficulty, config=config, workers=args.workers)
    write_rl_rows([rl_row(t, prompt) for t in tasks], out / "rl.jsonl")
    print(f"wrote {len(tasks)} tasks to {out / 'tasks.jsonl'} and RL rows to {out / 'rl.jsonl'}")
    if not args.trajectories:
        return 0
    from envs.sandbox import Sandbox
    from envs.tasks.trajectories import build_trajectories

    with Sandbox() as sandbox:
        rows, stats, results = build_trajectories(tasks, sandbox, out_dir=out, prompt=prompt, config=config,
                                                  workers=args.workers)
    sft_path = out / f"sft.{args.sft_format}"
    write_sft_rows(rows, sft_path)
    summary = {"tasks": stats.total, "kept": stats.kept, "pass_rate": round(stats.pass_rate, 4),
               "dropped": dict(stats.dropped), "styles": dict(stats.styles),
               "drop_reasons": [{"task": r.task_id, "filter": r.dropped_by, "reason": r.reason}
                                for r in results if r.row is None][:50]}
    (out / "sft_stats.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {stats.kept} of {stats.total} expert trajectories to {sft_path} "
          f"(pass rate {stats.pass_rate:.1%}; dropped {dict(stats.dropped) or 'none'})")
    return 0


def _show(args) -> int:
    from envs.tasks.contact_sheet import write_sheet

    path = write_sheet(args.dir, args.out, n=args.n, columns=args.columns)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    return _generate(args) if args.command == "generate" else _show(args)


if __name__ == "__main__":
    sys.exit(main())
