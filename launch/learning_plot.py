"""The demo's learning figure, drawn with PIL (no plotting library needed): reward, format-ok and
code-ran rate over the GRPO steps (from <grpo stage>/metrics.jsonl), and the evaluations of the
random, SFT and GRPO models side by side (from launch.eval_compare's tables).

    python -m launch.learning_plot --metrics DIR/grpo/metrics.jsonl --compare compare.json --out learning.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CURVES = (("reward", "reward", (200, 60, 40)), ("format_rate", "format ok", (40, 120, 200)),
          ("code_success_rate", "code ran", (40, 160, 70)))
BARS = (("accuracy", "accuracy"), ("format ok", "format ok"), ("code ran", "code ran"), ("reward", "reward"))
MODEL_COLOURS = ((150, 150, 150), (70, 130, 200), (220, 110, 40), (120, 80, 160))
PANEL_W, PANEL_H, MARGIN = 460, 320, 56


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _axes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, y_max: float, font, small) -> None:
    x0, y0, x1, y1 = box
    draw.text((x0, y0 - 34), title, fill=(20, 20, 20), font=font)
    draw.rectangle(box, outline=(120, 120, 120))
    for k in range(5):
        y = y1 - (y1 - y0) * k / 4
        draw.line((x0, y, x1, y), fill=(230, 230, 230))
        draw.text((x0 - 40, y - 7), f"{y_max * k / 4:.2f}", fill=(90, 90, 90), font=small)


def draw_curves(draw, origin: tuple[int, int], metrics: list[dict], font, small) -> None:
    """Panel 1: the three rates over GRPO steps (NaN steps, e.g. no code run, are skipped)."""
    x0, y0 = origin
    box = (x0 + MARGIN, y0 + MARGIN, x0 + PANEL_W - 16, y0 + PANEL_H - 40)
    values = [m.get(key) for m in metrics for key, _, _ in CURVES]
    y_max = max([1.0] + [v for v in values if _finite(v)])
    _axes(draw, box, f"GRPO training rollouts, {len(metrics)} steps", y_max, font, small)
    steps = [int(m.get("step", i + 1)) for i, m in enumerate(metrics)]
    lo, hi = (min(steps), max(steps)) if steps else (0, 1)
    span = max(1, hi - lo)
    for key, label, colour in CURVES:
        points = [(box[0] + (box[2] - box[0]) * (s - lo) / span, box[3] - (box[3] - box[1]) * m[key] / y_max)
                  for s, m in zip(steps, metrics) if _finite(m.get(key))]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    for k, (_, label, colour) in enumerate(CURVES):
        lx = box[0] + 8 + k * 120
        draw.rectangle((lx, box[3] + 22, lx + 14, box[3] + 34), fill=colour)
        draw.text((lx + 20, box[3] + 20), label, fill=(20, 20, 20), font=small)
    draw.text((box[0], box[3] + 4), f"step {lo}", fill=(90, 90, 90), font=small)
    draw.text((box[2] - 60, box[3] + 4), f"step {hi}", fill=(90, 90, 90), font=small)


def draw_bars(draw, origin: tuple[int, int], tables: dict[str, dict], n: int, font, small) -> None:
    """Panel 2: every model's held-out figures ("all" row) side by side."""
    x0, y0 = origin
    box = (x0 + MARGIN, y0 + MARGIN, x0 + PANEL_W - 16, y0 + PANEL_H - 40)
    names = list(tables)
    figures = {name: tables[name].get("all", {}) for name in names}
    y_max = max([1.0] + [f.get(key) for f in figures.values() for key, _ in BARS if _finite(f.get(key))])
    _axes(draw, box, f"held-out evaluation, n={n} tasks", y_max, font, small)
    group_w = (box[2] - box[0]) / len(BARS)
    bar_w = group_w * 0.8 / max(1, len(names))
    for g, (key, label) in enumerate(BARS):
        gx = box[0] + g * group_w + group_w * 0.1
        for k, name in enumerate(names):
            value = figures[name].get(key)
            if not _finite(value):
                continue
            top = box[3] - (box[3] - box[1]) * value / y_max
            colour = MODEL_COLOURS[k % len(MODEL_COLOURS)]
            draw.rectangle((gx + k * bar_w, top, gx + (k + 1) * bar_w - 2, box[3]), fill=colour)
        draw.text((gx, box[3] + 4), label, fill=(20, 20, 20), font=small)
    for k, name in enumerate(names):
        lx = box[0] + 8 + k * 110
        draw.rectangle((lx, box[3] + 22, lx + 14, box[3] + 34), fill=MODEL_COLOURS[k % len(MODEL_COLOURS)])
        draw.text((lx + 20, box[3] + 20), name, fill=(20, 20, 20), font=small)


def learning_png(metrics: list[dict], comparison: dict, out: str | Path, note: str = "") -> Path:
    """Write the two-panel figure to `out`; returns its path."""
    font, small = _font(18), _font(13)
    lines = textwrap.wrap(note, 130) if note else []
    image = Image.new("RGB", (2 * PANEL_W + 40, PANEL_H + 40 + 18 * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw_curves(draw, (10, 20), metrics, font, small)
    draw_bars(draw, (PANEL_W + 30, 20), comparison.get("tables", {}), comparison.get("tasks", 0), font, small)
    for k, line in enumerate(lines):
        draw.text((MARGIN, PANEL_H + 30 + 18 * k), line, fill=(60, 60, 60), font=small)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True, help="the GRPO stage's metrics.jsonl")
    parser.add_argument("--compare", required=True, help="JSON written by python -m launch.eval_compare --out")
    parser.add_argument("--out", default="outputs/demo/learning.png")
    args = parser.parse_args(argv)
    comparison = json.loads(Path(args.compare).read_text())
    note = ""
    if "bootstrap" in comparison:
        from launch.eval_compare import format_bootstrap

        note = format_bootstrap(comparison["bootstrap"])
    print(f"wrote {learning_png(read_metrics(args.metrics), comparison, args.out, note)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
