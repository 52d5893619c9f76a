"""Expert for easy questions: answer directly, no code (the paper's scenario (a)); or, for a share of
the colour, count and shape questions (config direct.measure_share), measure the answer with a few
lines of code and read it from the sandbox's output, as a model that cannot see well would have to."""
from __future__ import annotations

from envs.tasks.answer_match import last_line
from envs.tasks.drawing import COLOURS
from envs.tasks.experts.plan import ExpertContext, Plan, RoundOutput, Step
from envs.tasks.experts.snippets import centre_colour, count_blobs, fill_ratio

MEASURED_KINDS = ("colour", "count", "shape")
# What a fill ratio (rounded to one decimal, as the code prints it) means.
SHAPE_OF_RATIO = {"1.0": "square", "0.8": "circle", "0.5": "triangle"}


def plan(ctx: ExpertContext) -> Plan:
    task, meta = ctx.task, ctx.task.meta
    # Drawn only when measuring is on, so task sets made without it keep their expert streams.
    if meta["kind"] in MEASURED_KINDS and ctx.measure_share > 0 and ctx.rng.random() < ctx.measure_share:
        return _measure(ctx)
    seen = {
        "word": f"The image shows one large word in plain letters: {task.answer}.",
        "colour": f"There is a single large circle, and it is {task.answer}.",
        "shape": f"The image contains one large {task.answer} on a plain background.",
        "count": f"The shapes are large and well separated; counting them gives {task.answer}.",
    }[meta["kind"]]
    opening = ctx.choice((f"{seen} No image processing is needed.", f"This is easy to see directly. {seen}"))
    return Plan(style="direct", steps=[], finish=lambda outputs: ("", task.answer), opening=opening)


def colour_name(printed: str) -> str:
    """The palette colour a printed pixel `(r, g, b)` is (nearest in RGB), or "" when it is not a pixel."""
    try:
        pixel = tuple(int(v) for v in printed.strip("()[] ").split(","))
    except ValueError:
        return ""
    if len(pixel) != 3:
        return ""
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], pixel)))


def read_measurement(kind: str, printed: str) -> str:
    """The answer a measurement's printed last line gives ("" when it gives none)."""
    if kind == "colour":
        return colour_name(printed)
    if kind == "shape":
        return SHAPE_OF_RATIO.get(printed, "")
    return printed if printed.isdigit() else ""


def _measure(ctx: ExpertContext) -> Plan:
    kind, load = ctx.task.meta["kind"], ctx.load_line()
    thought, code = {
        "colour": ("I'll read the colour of the pixel at the centre of the image, where the circle is.",
                   centre_colour(load=load)),
        "count": ("I'll count the shapes as connected regions that differ from the background.", count_blobs(load=load)),
        "shape": ("I'll measure how much of its bounding box the shape fills.", fill_ratio(load=load)),
    }[kind]

    def read(printed: str) -> str:
        return read_measurement(kind, printed)

    def check(out: RoundOutput) -> str | None:
        return None if read(last_line(out.stdout)) else f"could not read a {kind} from {out.stdout!r}"

    def finish(outputs: list[RoundOutput]) -> tuple[str, str]:
        printed = last_line(outputs[-1].stdout)
        answer = read(printed)
        return f"The code printed {printed}, so the answer is {answer}.", answer

    return Plan(style=f"measure-{kind}", steps=[Step(thought=thought, code=code, check=check)], finish=finish)
