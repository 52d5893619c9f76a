"""What an expert trajectory is before it runs: rounds of (thought, code, evidence check) and a
closing step that turns the sandbox results into the final thought and answer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from envs.protocol import REFERENCE_OUTPUT_DIR
from envs.tasks.schema import Task


@dataclass
class RoundOutput:
    """What one round gave back: printed text and produced images (loaded), as the model would see them."""

    stdout: str
    images: list[Image.Image]
    image_paths: list[str]


@dataclass
class Step:
    thought: str                                        # text before the code block
    code: str
    check: Callable[[RoundOutput], str | None]          # None = the result shows what it must


def one_image(check_image: Callable[[Image.Image], str | None]) -> Callable[[RoundOutput], str | None]:
    """A round check for code that must produce exactly one image, which `check_image` then judges."""
    def check(out: RoundOutput) -> str | None:
        if len(out.images) != 1:
            return f"expected one image, got {len(out.images)}"
        return check_image(out.images[0])
    return check


@dataclass
class Plan:
    style: str                                          # e.g. "crop-cv2", "rotate-pil", "direct"
    steps: list[Step]
    # From all round outputs to (closing thought, answer); the answer may come from printed text.
    finish: Callable[[list[RoundOutput]], tuple[str, str]]
    opening: str = ""                                   # thought before everything (direct answers)
    notes: dict = field(default_factory=dict)


@dataclass
class ExpertContext:
    """Everything an expert may use: the task, its image, the metadata, and a random stream for style."""

    task: Task
    rng: np.random.Generator
    legible_font_px: float
    literal_path_share: float = 0.25
    measure_share: float = 0.0          # direct questions answered by measuring with code (direct.py)

    @property
    def task_dir(self) -> Path:
        return Path(self.task.image_paths[0]).parent.parent

    def source(self) -> Image.Image:
        with Image.open(self.task.image_paths[0]) as im:
            return im.convert("RGB")

    def reference(self, name: str) -> Image.Image:
        with Image.open(self.task_dir / self.task.meta["references"][name]) as im:
            im.load()
            return im.copy()

    def choice(self, options):
        return options[int(self.rng.integers(0, len(options)))]

    def output_path(self, suffix: str) -> str:
        """Where the code saves an image: the released models' folder (the sandbox maps it into the
        episode's own folder, so a plain name like `zoom.png` never collides with another episode's).
        No task id in the name: it would be a number the model cannot know and must invent."""
        return f"{REFERENCE_OUTPUT_DIR}{suffix}.png"

    def load_line(self) -> str:
        """How the code refers to the input: the preset variable, or the path copied from the prompt."""
        if self.rng.random() >= self.literal_path_share:
            return ""
        return f'image_path = "{self.task.image_paths[0]}"\n'
