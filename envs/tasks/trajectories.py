"""Expert SFT trajectories: run each expert plan through the real sandbox, keep only those that pass
the paper's filters, and write them as released-format SFT rows.

Filters, in order (the first failure drops the trajectory and is counted under its name):
  execution  - every round ran without error in the sandbox;
  evidence   - each round's result shows what it must (crop holds the legible target, image upright,
               text enhanced, program printed a result): the consistency check, exact here;
  answer     - the final answer matches the task's reference;
  format     - the response passes the tag checker the SFT loader uses.

Text shape (released SFT data): `<think>thought <code>```python ...```</code><sandbox_output>...</sandbox_output>
more thought ...</think>\n<answer>...</answer>`. A round that produced images is rendered as one `<image>`
placeholder per image inside <sandbox_output>; the row's image list is [input] + those images, in order.
A round without images is rendered as its printed text.
"""
from __future__ import annotations

import hashlib
import io
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from envs.data.image_codec import encode_image_file
from envs.data.response_tags import IMAGE_PLACEHOLDER, check_response
from envs.data.sft_rows import SftRow
from envs.data.thyme_prompt import PromptTexts, load_prompt_texts
from envs.sandbox.errors import SandboxError
from envs.protocol import (
    ANSWER_CLOSE, ANSWER_OPEN, CODE_CLOSE, CODE_OPEN, THINK_CLOSE, THINK_OPEN, render_sandbox_output,
)
from envs.tasks.answer_match import answers_match
from envs.tasks.config import TaskGenConfig
from envs.tasks.experts import PLANNERS, ExpertContext, RoundOutput
from envs.tasks.schema import Task

PRODUCED_DIR = "produced"
FILTERS = ("execution", "evidence", "answer", "format")


@dataclass
class TrajectoryResult:
    task_id: str
    style: str
    row: SftRow | None = None
    dropped_by: str | None = None      # one of FILTERS, or None when kept
    reason: str = ""


@dataclass
class FilterStats:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    styles: Counter = field(default_factory=Counter)

    def add(self, result: TrajectoryResult) -> None:
        if result.row is not None:
            self.kept += 1
            self.styles[result.style] += 1
        else:
            self.dropped[result.dropped_by] += 1

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())

    @property
    def pass_rate(self) -> float:
        return self.kept / self.total if self.total else 0.0


def render_round(stdout: str, n_images: int) -> str:
    """The body of <sandbox_output> for one round (see the module docstring)."""
    if n_images:
        return "\n".join([IMAGE_PLACEHOLDER] * n_images)
    return stdout.strip()


def code_block(code: str) -> str:
    return f"{CODE_OPEN}\n```python\n{code}\n```\n{CODE_CLOSE}"


def expert_rng(task: Task) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"expert/{task.id}".encode()).digest()[:8], "little"))


def _load_images(paths: list[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as im:
            im.load()
            images.append(im.copy())
    return images


def run_expert(task: Task, sandbox, *, produced_dir: str | Path, prompt: PromptTexts,
               config: TaskGenConfig | None = None, planner=None) -> TrajectoryResult:
    """Plan, execute and filter the expert trajectory of one task. Never raises for a failing plan.

    planner: replaces the category's expert (a function ExpertContext -> Plan), e.g. to try a new style.
    """
    config = config or TaskGenConfig()
    ctx = ExpertContext(task=task, rng=expert_rng(task), legible_font_px=config.legible_font_px,
                        literal_path_share=config.literal_path_share, measure_share=config.direct.measure_share)
    plan = (planner or PLANNERS[task.category])(ctx)
    result = TrajectoryResult(task_id=task.id, style=plan.style)
    parts: list[str] = [plan.opening] if plan.opening else []
    outputs: list[RoundOutput] = []
    produced: list[str] = []
    if plan.steps:
        try:
            with sandbox.episode(images=[task.image_paths[0]]) as episode:
                for number, step in enumerate(plan.steps, 1):
                    run = episode.run(step.code)
                    if not run.ok:
                        result.dropped_by, result.reason = "execution", f"round {number}: {run.error}"
                        return result
                    # Copy results out before the episode ends and removes its files.
                    kept_paths = []
                    for k, path in enumerate(run.images):
                        dest = Path(produced_dir) / f"{task.id}.r{number}.{k}{Path(path).suffix or '.png'}"
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, dest)
                        kept_paths.append(str(dest))
                    out = RoundOutput(stdout=run.stdout, images=_load_images(kept_paths), image_paths=kept_paths)
                    problem = step.check(out)
                    if problem:
                        result.dropped_by, result.reason = "evidence", f"round {number}: {problem}"
                        return result
                    outputs.append(out)
                    produced += kept_paths
                    # the reply follows `</code>` directly, as the agent loop appends it at inference
                    parts.append(f"{step.thought}\n{code_block(step.code)}"
                                 f"{render_sandbox_output(render_round(run.stdout, len(kept_paths)))}")
        except SandboxError as exc:  # e.g. an unreadable input image: drop this one, keep the job going
            result.dropped_by, result.reason = "execution", f"sandbox: {exc}"
            return result
    closing, answer = plan.finish(outputs)
    if not answers_match(answer, task.answer):
        result.dropped_by, result.reason = "answer", f"expert answered {answer!r}, reference {task.answer!r}"
        return result
    if closing:
        parts.append(closing)
    response = f"{THINK_OPEN}{chr(10).join(parts)}{THINK_CLOSE}\n{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"
    problem = check_response(response)
    if problem:
        result.dropped_by, result.reason = "format", problem
        return result
    width, height = task.meta["image_size"]
    result.row = SftRow(
        images=[encode_image_file(task.image_paths[0])] + [encode_image_file(p) for p in produced],
        question=prompt.sft_question(task.question, task.image_paths[0], width, height),
        response=response, id=task.id, category=task.category,
        meta={"task_id": task.id, "reference": task.answer, "style": plan.style, "rounds": len(plan.steps),
              "split": task.split, "produced_files": [str(Path(p).name) for p in produced]},
    )
    return result


def build_trajectories(tasks: list[Task], sandbox, *, out_dir: str | Path, config: TaskGenConfig | None = None,
                       progress: bool = True, prompt: PromptTexts | None = None,
                       workers: int = 1) -> tuple[list[SftRow], FilterStats, list[TrajectoryResult]]:
    """Expert trajectories for `tasks` (produced images kept under OUT_DIR/produced/), in task order.

    workers > 1 runs that many episodes at once from threads (the sandbox is thread-safe and the
    code runs in its processes, so threads suffice).
    """
    prompt = prompt or load_prompt_texts()
    stats, rows, results = FilterStats(), [], []

    def one(task: Task) -> TrajectoryResult:
        return run_expert(task, sandbox, produced_dir=Path(out_dir) / PRODUCED_DIR, prompt=prompt, config=config)

    bar = dict(total=len(tasks), desc="expert trajectories", unit="traj", disable=not progress)
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            finished = list(tqdm(pool.map(one, tasks), **bar))
    else:
        finished = [one(task) for task in tqdm(tasks, **bar)]
    for result in finished:
        stats.add(result)
        results.append(result)
        if result.row is not None:
            rows.append(result.row)
    return rows, stats, results


def pixels_equal(a: bytes | str, b: bytes | str) -> bool:
    """Two encoded images hold the same pixels (encodings may differ byte for byte)."""
    from envs.data.image_codec import image_bytes

    with Image.open(io.BytesIO(image_bytes(a))) as x, Image.open(io.BytesIO(image_bytes(b))) as y:
        return x.size == y.size and np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))
