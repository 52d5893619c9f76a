"""Knobs of the task generators, in one place (no magic numbers in the generators).

`difficulty` (0 = easiest, 1 = hardest) is the one knob every category has; each category maps it to
concrete quantities (target size, canvas size, angle kind, contrast, number of values) and records the
measured result in Task.difficulty so tests and benchmarks can check the knob moves what it claims.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from envs.tasks.drawing import ITEMS as _ITEM_NAMES_LIMIT


@dataclass
class SmallObjectConfig:
    canvas_min: int = 2048                 # large canvases: the paper's RL data is >2048 px high-res images
    canvas_max: int = 4096
    font_easy: int = 30                    # target text size (px) at difficulty 0 ...
    font_hard: int = 14                    # ... and at 1; still readable once cropped and zoomed
    max_area_fraction: float = 0.05        # the paper's small-object rule: target <= 5% of the image
    clutter_easy: int = 60                 # background shapes at difficulty 0 and 1 (per 2048x2048 px)
    clutter_hard: int = 220
    distractors_easy: int = 3              # other tags with other text
    distractors_hard: int = 12
    jpeg_quality: int = 92


@dataclass
class RotationConfig:
    canvas_min: int = 640
    canvas_max: int = 1024
    font_easy: int = 84
    font_hard: int = 48
    chars_easy: int = 4
    chars_hard: int = 8
    arbitrary_angle_min: float = 25.0      # arbitrary angles stay away from upright, where no fix is needed
    arbitrary_angle_max: float = 335.0
    noise_sigma: float = 2.0
    jpeg_quality: int = 92


@dataclass
class LowContrastConfig:
    canvas_min: int = 640
    canvas_max: int = 1024
    delta_easy: int = 28                   # text-background grey-level difference at difficulty 0 ...
    delta_hard: int = 5                    # ... and 1 (out of 255)
    noise_sigma: float = 1.5               # sensor-like noise so the faint text is not a clean edge
    font_min: int = 44
    font_max: int = 80


@dataclass
class ComputationConfig:
    width: int = 1000
    items_easy: int = 3
    items_hard: int = 9
    value_max_easy: int = 50
    value_max_hard: int = 999
    font: int = 26


@dataclass
class MultiRoundConfig:
    canvas_min: int = 2048
    canvas_max: int = 3584
    board_fraction_easy: float = 0.40      # board width / canvas width at difficulty 0 and 1
    board_fraction_hard: float = 0.22
    cards_easy: int = 4                    # cards on the board (grid)
    cards_hard: int = 12
    font_easy: int = 18
    font_hard: int = 12
    jpeg_quality: int = 92


DIRECT_KINDS = ("colour", "count", "word", "shape")


@dataclass
class DirectConfig:
    canvas_min: int = 384
    canvas_max: int = 768
    objects_easy: int = 1
    objects_hard: int = 5
    # Question kinds drawn from (uniformly). Reading a word needs OCR; colour, count and shape can also
    # be measured with a few lines of code (measure_share), which is what the demo keeps.
    kinds: list[str] = field(default_factory=lambda: list(DIRECT_KINDS))
    # Share of colour, count and shape questions whose expert measures the answer with code (centre
    # pixel, connected regions, fill ratio) instead of answering at a glance (experts/direct.py).
    measure_share: float = 0.0


@dataclass
class TaskGenConfig:
    """All generator settings. model_input_pixels: how many pixels the policy sees of an uncropped image
    (Qwen2.5-VL's default max_pixels = 1280 * 28 * 28); text whose font is smaller than
    illegible_font_px after that downscale counts as unreadable without cropping."""

    model_input_pixels: int = 1280 * 28 * 28
    illegible_font_px: float = 8.0
    legible_font_px: float = 20.0          # font size (after zoom) an expert accepts as clearly readable
    # Share of expert code that first writes `image_path = "<the prompt's path>"` instead of using the
    # sandbox's preset `image_path`. Copying a path is learnt only from many different folders; a
    # generated set has one, so a high share mostly teaches a small model to recite training paths.
    literal_path_share: float = 0.25
    small_object: SmallObjectConfig = field(default_factory=SmallObjectConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    low_contrast: LowContrastConfig = field(default_factory=LowContrastConfig)
    computation: ComputationConfig = field(default_factory=ComputationConfig)
    multi_round: MultiRoundConfig = field(default_factory=MultiRoundConfig)
    direct: DirectConfig = field(default_factory=DirectConfig)

    def model_scale(self, width: int, height: int) -> float:
        """The factor (<= 1) the policy's image processor shrinks an uncropped WxH image by."""
        return min(1.0, (self.model_input_pixels / float(width * height)) ** 0.5)


def lerp(easy: float, hard: float, difficulty: float) -> float:
    return easy + (hard - easy) * min(max(difficulty, 0.0), 1.0)


def validate(config: TaskGenConfig) -> TaskGenConfig:
    """Raise ValueError listing every setting that would make a generator misbehave."""
    problems = []
    groups = {"small_object": config.small_object, "rotation": config.rotation, "low_contrast": config.low_contrast,
              "multi_round": config.multi_round, "direct": config.direct}
    for name, group in groups.items():
        if not 64 <= group.canvas_min <= group.canvas_max:
            problems.append(f"{name}.canvas_min/canvas_max must satisfy 64 <= min <= max, got "
                            f"{group.canvas_min}/{group.canvas_max}")
    so = config.small_object
    if not 0 < so.max_area_fraction <= 0.05:
        problems.append(f"small_object.max_area_fraction must be in (0, 0.05] (the paper's small-object rule), got {so.max_area_fraction}")
    if min(so.font_easy, so.font_hard, config.multi_round.font_hard, config.multi_round.font_easy) < 8:
        problems.append("font sizes below 8 px cannot be read even after zooming")
    if not 0 < config.low_contrast.delta_hard <= config.low_contrast.delta_easy < 128:
        problems.append(f"low_contrast needs 0 < delta_hard <= delta_easy < 128, got "
                        f"{config.low_contrast.delta_hard}/{config.low_contrast.delta_easy}")
    if not 0 < config.rotation.arbitrary_angle_min < config.rotation.arbitrary_angle_max < 360:
        problems.append("rotation needs 0 < arbitrary_angle_min < arbitrary_angle_max < 360")
    if not 1 <= config.computation.items_easy <= config.computation.items_hard <= len(_ITEM_NAMES_LIMIT):
        problems.append(f"computation items must satisfy 1 <= items_easy <= items_hard <= {len(_ITEM_NAMES_LIMIT)}")
    kinds = config.direct.kinds
    if not kinds or set(kinds) - set(DIRECT_KINDS) or len(set(kinds)) != len(kinds):
        problems.append(f"direct.kinds must be distinct names from {list(DIRECT_KINDS)}, got {list(kinds)}")
    if not 0 <= config.direct.measure_share <= 1:
        problems.append(f"direct.measure_share must be in [0, 1], got {config.direct.measure_share}")
    if not 0 <= config.literal_path_share <= 1:
        problems.append(f"literal_path_share must be in [0, 1], got {config.literal_path_share}")
    if config.model_input_pixels <= 0 or config.illegible_font_px <= 0 or config.legible_font_px <= config.illegible_font_px:
        problems.append("need model_input_pixels > 0 and 0 < illegible_font_px < legible_font_px")
    if problems:
        raise ValueError("invalid task generator config:\n  " + "\n  ".join(problems))
    return config


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TaskGenConfig:
    """Defaults, then a YAML file shaped like TaskGenConfig, then dotted overrides (`small_object.canvas_max=3000`);
    validated. Unknown keys are errors (OmegaConf structured merge)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = OmegaConf.structured(TaskGenConfig)
    try:
        if path:
            node = OmegaConf.merge(node, OmegaConf.load(path))
        if overrides:
            node = OmegaConf.merge(node, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad task generator config ({path or 'overrides'}): {exc}") from exc
    return validate(OmegaConf.to_object(node))
