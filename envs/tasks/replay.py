"""Re-execute an SFT row's code in a fresh sandbox episode and compare with what the row recorded.

Needs nothing but the row: the input image is decoded from the row itself, so a dataset can be
re-verified anywhere (code that names the original image path is pointed at the replayed input by the
sandbox's repair, as it would be for a model)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from envs.data.image_codec import image_bytes
from envs.data.sft_rows import SftRow
from envs.protocol import SANDBOX_CLOSE, SANDBOX_OPEN, code_blocks, extract_answer
from envs.tasks.answer_match import answers_match, last_line
from envs.tasks.experts.direct import read_measurement
from envs.tasks.trajectories import pixels_equal, render_round

_SANDBOX_BODY = re.compile(re.escape(SANDBOX_OPEN) + r"(.*?)" + re.escape(SANDBOX_CLOSE), re.DOTALL)


def _suffix(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


def replay_row(row: SftRow, sandbox) -> list[str]:
    """Problems found (empty = the row replays to the same outputs, images and answer)."""
    problems: list[str] = []
    codes = code_blocks(row.response)
    recorded = _SANDBOX_BODY.findall(row.response)
    if len(codes) != len(recorded):
        return [f"{len(codes)} code blocks but {len(recorded)} sandbox outputs"]
    answer = extract_answer(row.response) or ""
    reference = row.meta.get("reference", answer)
    if not answers_match(answer, reference):
        problems.append(f"answer {answer!r} differs from the reference {reference!r}")
    if not codes:
        return problems
    data = image_bytes(row.images[0])
    produced_images = row.images[1:]
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        input_path = Path(tmp) / f"input{_suffix(data)}"
        input_path.write_bytes(data)
        next_image = 0
        last_stdout = ""
        with sandbox.episode(images=[str(input_path)]) as episode:
            for number, (code, body) in enumerate(zip(codes, recorded), 1):
                run = episode.run(code)
                if not run.ok:
                    problems.append(f"round {number} failed on replay: {run.error}")
                    return problems
                rendered = render_round(run.stdout, len(run.images))
                if rendered != body:
                    problems.append(f"round {number} output {rendered[:80]!r} != recorded {body[:80]!r}")
                for path in run.images:
                    if next_image >= len(produced_images):
                        problems.append(f"round {number} produced more images than the row holds")
                        break
                    if not pixels_equal(Path(path).read_bytes(), produced_images[next_image]):
                        problems.append(f"round {number}: produced image {next_image + 1} differs from the row's")
                    next_image += 1
                last_stdout = run.stdout
        if next_image != len(produced_images):
            problems.append(f"replay produced {next_image} images, the row holds {len(produced_images)}")
    if "<image>" not in recorded[-1]:
        # A text result is what the final answer was read from: it must still give the same answer
        # (a measurement, style "measure-<kind>", through the reading its expert applies).
        style = str(row.meta.get("style", ""))
        given = last_line(last_stdout)
        if style.startswith("measure-"):
            given = read_measurement(style.removeprefix("measure-"), given)
        if not answers_match(given, answer):
            problems.append(f"replayed output {last_line(last_stdout)!r} does not give the answer {answer!r}")
    return problems
