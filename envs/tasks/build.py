"""Generate a task set: images under DIR/images/, expert reference views under DIR/references/,
and the manifest DIR/tasks.jsonl."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from envs.tasks.config import TaskGenConfig
from envs.tasks.generators import GENERATORS
from envs.tasks.schema import CATEGORIES, Task, write_tasks
from envs.tasks.seeds import task_id, task_rng

IMAGE_DIR, REFERENCE_DIR = "images", "references"


def generate_task(category: str, index: int, *, seed: int, split: str, out_dir: str | Path,
                  difficulty: float | dict | None = None, config: TaskGenConfig | None = None) -> Task:
    """Task number `index` of `category`: the same arguments always give the same pixels and text.

    difficulty=None draws one per task uniformly from [0, 1) (a mixed-difficulty set); a dict
    {category: level} fixes it for the categories it names and draws it for the others.
    """
    if isinstance(difficulty, dict):
        difficulty = difficulty.get(category)
    if category not in GENERATORS:
        raise ValueError(f"unknown category {category!r}; expected one of {sorted(GENERATORS)} or 'all'")
    config = config or TaskGenConfig()
    rng = task_rng(seed, split, category, index)
    level = float(rng.random()) if difficulty is None else float(difficulty)
    scene = GENERATORS[category](rng, level, config)
    tid = task_id(seed, split, category, index)
    root = Path(out_dir)
    image_path = root / IMAGE_DIR / f"{tid}.{scene.image_format}"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    if scene.image_format == "jpg":
        scene.image.convert("RGB").save(image_path, quality=scene.jpeg_quality)
    else:
        scene.image.save(image_path, compress_level=1)  # fast: big PNGs at level 6+ dominate the run time
    meta = dict(scene.meta)
    if scene.references:
        meta["references"] = {}
        for name, ref in scene.references.items():
            ref_path = root / REFERENCE_DIR / f"{tid}.{name}.png"
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            ref.save(ref_path, compress_level=1)
            meta["references"][name] = str(ref_path.relative_to(root))
    meta["image_size"] = list(scene.image.size)
    return Task(id=tid, category=category, split=split, image_paths=[str(image_path.resolve())],
                question=scene.question, answer=scene.answer, meta=meta, difficulty=scene.difficulty)


def plan(category: str, n: int) -> list[tuple[str, int]]:
    """(category, index) pairs for `n` tasks; 'all' spreads them round-robin over the categories, a
    comma-separated list ("direct,rotation") round-robin over those (task k of a category is the same
    task whichever list it is drawn in: same seed, same pixels)."""
    names = list(CATEGORIES) if category == "all" else [c.strip() for c in category.split(",") if c.strip()]
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise ValueError(f"unknown category {category!r}; expected one of {list(CATEGORIES)}, 'all' or a comma-separated list")
    return [(names[i % len(names)], i // len(names)) for i in range(n)]


def _generate_job(job: tuple) -> Task:
    category, index, kwargs = job
    return generate_task(category, index, **kwargs)


def generate_tasks(category: str, n: int, *, seed: int, split: str, out_dir: str | Path,
                   difficulty: float | dict | None = None, config: TaskGenConfig | None = None,
                   progress: bool = True, workers: int = 1) -> list[Task]:
    """Generate `n` tasks into OUT_DIR and write OUT_DIR/tasks.jsonl (replacing an existing manifest).

    workers > 1 draws in that many processes; the result is identical (each task has its own seed).
    """
    kwargs = dict(seed=seed, split=split, out_dir=out_dir, difficulty=difficulty, config=config)
    jobs = [(cat, idx, kwargs) for cat, idx in plan(category, n)]
    bar = dict(total=len(jobs), desc=f"tasks {split}", unit="task", disable=not progress)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            tasks = list(tqdm(pool.map(_generate_job, jobs, chunksize=4), **bar))
    else:
        tasks = [_generate_job(job) for job in tqdm(jobs, **bar)]
    write_tasks(tasks, out_dir)
    return tasks
