"""Expert for easy questions: answer directly, no code (the paper's scenario (a)); or, for a share of
the colour, count and shape questions (config direct.measure_share), measure the answer with a few
lines of code and read it from the sandbox's output, as a model that cannot see well would have to."""
from __future__ import annotations

from envs.tasks.answer_match import last_line
from envs.tasks.drawing import COLOURS, TAG_COLOURS
from envs.tasks.experts.plan import ExpertContext, Plan, RoundOutput, Step
from envs.tasks.experts.snippets import centre_colour, count_blobs, fill_ratio
from envs.tasks.generators.direct import SHAPES

MEASURED_KINDS = ("colour", "count", "shape")
# The colours a circle can have (generators/direct.py), as the measuring code names them.
PALETTE = {name: COLOURS[name] for name in TAG_COLOURS}


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


def read_measurement(kind: str, printed: str) -> str:
    """The answer a measurement's printed last line gives ("" when it is not one). The code prints the
    answer itself (a colour, a shape name, a number): what is left to the model is to copy it."""
    if kind == "colour":
        return printed if printed in PALETTE else ""
    if kind == "shape":
        return printed if printed in SHAPES else ""
    return printed if printed.isdigit() else ""


def _measure(ctx: ExpertContext) -> Plan:
    kind, load = ctx.task.meta["kind"], ctx.load_line()
    thought, code = {
        "colour": ("I'll read the colour of the pixel at the centre of the image, where the circle is, and name it.",
                   centre_colour(PALETTE, load=load)),
        "count": ("I'll count the shapes as connected regions that differ from the background.", count_blobs(load=load)),
        "shape": ("I'll name the shape from how much of its bounding box it fills.", fill_ratio(load=load)),
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
