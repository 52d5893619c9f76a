"""RL prompts for GRPO: released Thyme RL rows or envs.tasks' rl.jsonl, read with counted skips, and
the prompts of each training step (a pure function of seed and step, so a resumed run sees the same).

A prompt is the dict the rollout actors take (actors/rollout_actor.episode_inputs): id, question,
image_paths, answer, category, and a seed its G samples derive theirs from. Images given inline
(base64, as in the released parquet files) are written once to a cache folder: the sandbox reads
files. A row whose image does not decode is skipped and counted at load; one that breaks later
(deleted file) ends only its own episodes, which the trainer counts as untrainable.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from envs.data import load_rl_rows
from envs.data.image_codec import image_bytes
from envs.data.response_tags import IMAGE_PLACEHOLDER


def _question(row) -> str:
    """The bare question; released rows without one fall back to the user message minus the image
    placeholder (the agent loop adds the path and size lines itself)."""
    if row.question.strip():
        return row.question.strip()
    user = next(m["content"] for m in row.messages if m["role"] == "user")
    return user.replace(IMAGE_PLACEHOLDER, "").strip()


def _image_file(entry: str, cache_dir: Path) -> str:
    """A path for an image entry: the path itself, or the decoded bytes written under cache_dir."""
    if isinstance(entry, str) and len(entry) < 4096 and Path(entry).is_file():
        return entry
    data = image_bytes(entry)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{hashlib.sha256(data).hexdigest()[:24]}.img"
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.rename(target)
    return str(target)


def load_rl_prompts(path: str | Path, image_cache_dir: str | Path) -> tuple[list[dict], object]:
    """(prompts, SkipCounts) from RL rows at PATH (JSONL/Parquet file or folder)."""
    rows, counts = load_rl_rows(path, verify_images=True)
    prompts = []
    for i, row in enumerate(rows):
        prompts.append({"id": row.id or f"rl{i:07d}", "question": _question(row),
                        "image_paths": [_image_file(e, Path(image_cache_dir)) for e in row.images],
                        "answer": row.solution, "category": row.category or "unknown"})
    return prompts, counts


def step_prompts(num_prompts: int, per_step: int, *, seed: int, step: int) -> list[int]:
    """Indices of the prompts of training step `step` (0-based): each epoch is a seeded shuffle cut into
    steps; a last partial step is dropped, as SFT does."""
    steps_per_epoch = num_prompts // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{num_prompts} prompts make no step of {per_step}")
    epoch, index = divmod(step, steps_per_epoch)
    order = list(range(num_prompts))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[index * per_step:(index + 1) * per_step]


def refill_prompts(num_prompts: int, count: int, *, seed: int, step: int, round_: int) -> list[int]:
    """Extra prompts for dynamic sampling (zero-variance groups dropped), drawn from their own stream."""
    rng = random.Random(f"refill-{seed}-{step}-{round_}")
    return [rng.randrange(num_prompts) for _ in range(count)]


def episode_seed(seed: int, step: int, slot: int) -> int:
    """Seed of a prompt's group in a step; sample k uses seed + k (actors/rollout_actor.episode_inputs)."""
    return (seed * 1_000_003 + step * 10_007 + slot * 101) % (2**31 - 1)
