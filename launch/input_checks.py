"""Checks of what a user hands the commands (images, task folders, data files), run before any model
loads, each answering with what is wrong and what to change. They return the problem as a string
(None when fine) so each command reports it its own way: launch.train as a refused configuration,
chat and eval as a one-line exit message.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from envs.sandbox.config import SandboxConfig


def image_problem(path: str, sandbox: SandboxConfig, flag: str = "--sandbox") -> str | None:
    """Why the sandbox would refuse this input image, in terms of the user's own file and the setting to raise."""
    from PIL import Image

    p = Path(path)
    if not p.exists():
        return f"--image {path}: no such file"
    if not p.is_file():
        return f"--image {path}: not a file"
    size = p.stat().st_size
    if size > sandbox.max_image_bytes:
        return (f"--image {path} is {size:,} bytes, over the sandbox's limit of {sandbox.max_image_bytes:,} "
                f"(sandbox.max_image_bytes); if you trust the file, raise it: {flag} max_image_bytes={_round_up(size)}")
    try:
        with Image.open(p) as probe:  # reads the header only: the size is known without decoding
            width, height = probe.size
    except Image.DecompressionBombError:
        return (f"--image {path} is larger than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, which no part of the "
                "pipeline decodes (a decompression-bomb guard); downscale it first")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for files that are not images
        return f"--image {path} is not an image PIL can read ({type(exc).__name__}: {exc})"
    pixels = width * height
    if pixels > 2 * Image.MAX_IMAGE_PIXELS:
        return (f"--image {path} is {width}x{height} = {pixels:,} pixels, more than the {2 * Image.MAX_IMAGE_PIXELS:,} "
                "any part of the pipeline decodes (a decompression-bomb guard); downscale it first")
    if pixels > sandbox.max_image_pixels:
        return (f"--image {path} is {width}x{height} = {pixels:,} pixels, over the sandbox's limit of "
                f"{sandbox.max_image_pixels:,} (sandbox.max_image_pixels, a guard against decompression bombs); "
                f"if you trust the file, raise it: {flag} max_image_pixels={_round_up(pixels)}")
    return None


def _round_up(n: int) -> int:
    """A round limit just above n (e.g. 49,000,000 -> 50,000,000) for a suggested setting."""
    step = 10 ** max(0, len(str(n)) - 2)
    return (n // step + 1) * step


def task_dir_problem(path: str) -> str | None:
    """Why --tasks PATH holds no task set (launch.eval), with the command that makes one."""
    p = Path(path)
    make = f"make one with `python -m envs.tasks generate --category all --n 100 --split eval --out {path}`"
    if not p.exists():
        return f"--tasks {path} does not exist; {make}"
    manifest = p if p.is_file() else p / "tasks.jsonl"
    if not manifest.is_file():
        sft = p / "sft.jsonl" if p.is_dir() else None
        hint = " (it holds SFT rows: eval needs the task manifest, tasks.jsonl)" if sft and sft.is_file() else ""
        return f"--tasks {path} has no tasks.jsonl{hint}; {make}"
    if not manifest.read_text(encoding="utf-8", errors="replace").strip():
        return f"--tasks {manifest} is empty; {make}"
    return None


def unrecognised_rows(path: str) -> str | None:
    """What kind of file PATH is when it holds no SFT rows, judged from its first row (None: unknown)."""
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    for file in files:
        if file.suffix not in (".jsonl", ".json"):
            continue
        try:
            with file.open(encoding="utf-8") as f:
                first = json.loads(next((line for line in f if line.strip()), "null"))
        except (OSError, ValueError):
            return None
        if not isinstance(first, dict):
            return None
        if {"image_paths", "category", "answer"} <= set(first):
            return (f"{file} is a task manifest (python -m envs.tasks), not SFT rows: use the sft.jsonl that "
                    "`envs.tasks generate ... --trajectories` writes beside it")
        if "messages" in first or ("answer" in first and "response" not in first):
            return f"{file} holds RL rows (question and answer, no response to learn): SFT needs rows with a response"
    return None


def staged_paths_to_user_paths(text: str, user_paths: list[str]) -> str:
    """Replace the sandbox's staged copies (…/inputs/<hash>/<name>) in a message by the user's own paths."""
    for user in user_paths:
        name = re.escape(Path(user).name)
        text = re.sub(rf"[^\s'\"]*/inputs/[0-9a-f]+/{name}", user, text)
    return text
