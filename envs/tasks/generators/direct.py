"""Direct: easy questions about a small clean picture (big shapes, big text) that need no code."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from envs.tasks.config import TaskGenConfig, lerp
from envs.tasks.drawing import COLOURS, TAG_COLOURS, WORDS, draw_text, pick, text_wh
from envs.tasks.generators.scene import Scene

SHAPES = ("circle", "square", "triangle")


def make(rng: np.random.Generator, difficulty: float, config: TaskGenConfig) -> Scene:
    cfg = config.direct
    side = int(rng.integers(cfg.canvas_min, cfg.canvas_max + 1))
    image = Image.new("RGB", (side, side), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    kind = pick(rng, tuple(cfg.kinds))
    n = int(rng.integers(cfg.objects_easy, int(lerp(cfg.objects_easy, cfg.objects_hard, difficulty)) + 1))
    cell = side // 3
    slots = [int(s) for s in rng.permutation(9)]
    meta: dict = {"kind": kind}
    if kind == "word":
        word = pick(rng, WORDS)
        size = side // 8
        tw, th = text_wh(word, size)
        draw_text(draw, ((side - tw) // 2, (side - th) // 2), word, size, COLOURS["black"])
        question, answer = "What word is written in the image?", word
    elif kind == "colour":
        colour = pick(rng, TAG_COLOURS)
        _shape(draw, "circle", (cell, cell, 2 * cell, 2 * cell), COLOURS[colour])
        question, answer = "What colour is the circle?", colour
    elif kind == "shape":
        shape = pick(rng, SHAPES)
        _shape(draw, shape, (cell, cell, 2 * cell, 2 * cell), COLOURS[pick(rng, TAG_COLOURS)])
        question, answer = "What shape is shown in the image?", shape
    else:
        shape = pick(rng, SHAPES)
        count = max(1, n)
        colour = COLOURS[pick(rng, TAG_COLOURS)]
        for s in slots[:count]:
            r, c = divmod(s, 3)
            inset = cell // 6
            _shape(draw, shape, (c * cell + inset, r * cell + inset, (c + 1) * cell - inset, (r + 1) * cell - inset), colour)
        question, answer = f"How many {shape}s are in the image?", str(count)
        meta["count"] = count
    meta["answer"] = answer
    return Scene(image=image, question=question, answer=answer, meta=meta, image_format="png",
                 difficulty={"level": round(difficulty, 3), "objects": n})


def _shape(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        x1, y1, x2, y2 = box
        draw.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=colour)
