"""launch.eval's results in W&B: one run per evaluation, in the W&B group of the training run whose
checkpoint it evaluated, with the per-category table, the headline figures in the summary, a table
of sample transcripts with the images the model saw (input and last sandbox output), and those
images also as media of their own (eval/images/<task id>/input|sandbox) so they are files of the run.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from learners import wandb_run

CATEGORY_COLUMNS = ("n", "accuracy", "well_formed_rate", "code_use_rate", "code_success_rate", "mean_turns",
                    "undecided", "errors")
TRANSCRIPT_COLUMNS = ("id", "category", "question", "reference", "answer", "correct", "well_formed", "stop_reason",
                      "code_runs", "transcript", "input_image", "last_sandbox_image")


def pick_samples(rows: list[dict], limit: int) -> set[str]:
    """Ids of up to `limit` episodes, taken round-robin over categories so each one shows."""
    by_category = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row["id"])
    picked, queues = [], [list(ids) for _cat, ids in sorted(by_category.items())]
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return set(picked)


def eval_run_name(model: str) -> str:
    """eval-<stage>-<step> for a training checkpoint, else eval-<folder name>."""
    path = Path(model).resolve()
    if path.name == "hf" and path.parent.name.startswith("step_"):
        return f"eval-{path.parents[2].name}-{path.parent.name}"
    return f"eval-{path.name}"


class EvalLogger:
    """Collects transcripts while the eval runs; `finish(summary, rows)` logs everything at once."""

    def __init__(self, mode: str, project: str, model: str, out_dir: Path, config: dict, samples: int):
        self.run = wandb_run.init_run(mode, project, run_id=None, group=wandb_run.training_group_of(model) or "eval",
                                      name=eval_run_name(model), job_type="eval", folder=Path(out_dir), config=config)
        self.samples = samples
        self.transcripts: list[tuple] = []
        self.images: dict = {}

    def add(self, row: dict, record, tokenizer, num_inputs: int) -> None:
        """Keep one episode's transcript and images (record.images: the inputs, then what the sandbox returned)."""
        if self.run is None:
            return
        import wandb

        from policy.agent_transcript import format_transcript

        first_input = record.images[0] if record.images else None
        last_output = record.images[-1] if len(record.images) > num_inputs else None
        # Each image also under its own key: files in the run folder (offline too), one media panel each.
        caption = f"{row['category']}: {row['question'][:80]} -> {row['answer']!r} (ref {row['reference']!r})"
        if first_input is not None:
            self.images[f"eval/images/{row['id']}/input"] = wandb.Image(first_input, caption=caption)
        if last_output is not None:
            self.images[f"eval/images/{row['id']}/sandbox"] = wandb.Image(last_output, caption="last sandbox image")
        self.transcripts.append((
            row["id"], row["category"], row["question"], row["reference"], row["answer"], row["correct"],
            row["well_formed"], row["stop_reason"], f"{row['code_successes']}/{row['code_blocks']}",
            format_transcript(record, tokenizer, colour=False),
            wandb.Image(first_input) if first_input is not None else None,
            wandb.Image(last_output) if last_output is not None else None))

    def finish(self, summary: dict[str, dict]) -> None:
        if self.run is None:
            return
        import wandb

        table = wandb.Table(columns=["category", *CATEGORY_COLUMNS])
        for category, figures in summary.items():
            table.add_data(category, *(figures.get(c) for c in CATEGORY_COLUMNS))
        transcripts = wandb.Table(columns=list(TRANSCRIPT_COLUMNS))
        for values in self.transcripts:
            transcripts.add_data(*values)
        self.run.log({"eval/categories": table, "eval/transcripts": transcripts, **self.images})
        for category, figures in summary.items():
            prefix = "eval" if category == "all" else f"eval/{category}"
            self.run.summary.update({f"{prefix}/{k}": v for k, v in figures.items() if v is not None})
        self.run.finish()
