"""Expert SFT trajectories: generated through the CLI with the real sandbox, every kept row replays in a
fresh sandbox to the same outputs, images and answer, and the filters really drop bad trajectories."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from envs.data import load_sft_rows
from envs.data.thyme_prompt import load_prompt_texts
from envs.protocol import code_blocks, extract_answer
from envs.tasks import CATEGORIES, load_tasks
from envs.tasks.evidence import check_crop
from envs.tasks.experts import Plan, Step
from envs.tasks.experts.snippets import crop_cv2
from envs.tasks.replay import replay_row
from envs.tasks.trajectories import run_expert

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 18  # three per category
pytestmark = pytest.mark.slow  # ~25 s to generate and run the set on a busy 2-core machine


@pytest.fixture(scope="module")
def sandbox():
    from envs.sandbox import Sandbox

    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("expert-set")
    run = subprocess.run([sys.executable, "-m", "envs.tasks", "generate", "--category", "all", "--n", str(N_TASKS),
                          "--seed", "11", "--split", "train", "--out", str(out), "--trajectories"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_every_task_gets_a_kept_trajectory(generated):
    stats = json.loads((generated / "sft_stats.json").read_text())
    assert stats["tasks"] == N_TASKS and stats["kept"] == N_TASKS, stats["drop_reasons"]
    rows, counts = load_sft_rows(generated / "sft.jsonl")
    assert counts.total_skipped == 0 and len(rows) == N_TASKS
    assert {r.category for r in rows} == set(CATEGORIES)
    for row in rows:
        blocks = code_blocks(row.response)
        placeholders = row.response.count("<image>")
        assert len(row.images) == 1 + placeholders
        assert row.question.startswith("<image>\n") and "x" in row.question  # size "WxH" in the prompt
        if row.category == "direct":
            assert not blocks and len(row.images) == 1
        elif row.category == "multi_round":
            assert len(blocks) == 2 and placeholders == 2
        elif row.category == "computation":
            assert len(blocks) == 1 and placeholders == 0
        else:
            assert len(blocks) in (1, 2) and placeholders == len(blocks)
    assert len({row.meta["style"] for row in rows}) >= 8  # cv2 and PIL styles, one and two rounds, direct
    from envs.data import load_hf_dataset

    for name in ("sft.jsonl", "rl.jsonl"):
        assert load_hf_dataset(generated / name).num_rows == N_TASKS


def test_every_kept_trajectory_replays_to_the_same_output_and_answer(generated, sandbox):
    rows, _ = load_sft_rows(generated / "sft.jsonl")
    problems = {row.id: replay_row(row, sandbox) for row in rows}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    task_answers = {t.id: t.answer for t in load_tasks(generated)}
    assert all(extract_answer(row.response) == task_answers[row.id] for row in rows)


def test_replay_notices_a_changed_trajectory(generated, sandbox):
    rows, _ = load_sft_rows(generated / "sft.jsonl")
    row = next(r for r in rows if r.category == "computation")
    row.response = row.response.replace("print(", "print(1 + ", 1)
    assert replay_row(row, sandbox)
    crop = next(r for r in rows if r.category == "small_object")
    crop.images[1] = crop.images[0]  # the recorded zoom replaced by another image
    assert any("differs" in p for p in replay_row(crop, sandbox))


def _task(generated, category):
    return next(t for t in load_tasks(generated) if t.category == category)


def test_filters_drop_failing_executions_wrong_evidence_and_wrong_answers(generated, sandbox, tmp_path):
    prompt = load_prompt_texts()

    def crash(ctx):
        return Plan(style="broken", steps=[Step("x", "undefined_name + 1", lambda out: None)],
                    finish=lambda outs: ("", ctx.task.answer))

    result = run_expert(_task(generated, "rotation"), sandbox, produced_dir=tmp_path, prompt=prompt, planner=crash)
    assert result.row is None and result.dropped_by == "execution" and "undefined_name" in result.reason

    # An expert that believes the target is elsewhere: its crop runs fine but the evidence check,
    # made against the task's true target box, drops it.
    task = _task(generated, "small_object")
    x1, y1, x2, y2 = task.meta["target_box"]
    width = task.meta["image_size"][0]
    shift = -400 if x1 > width / 2 else 400
    wrong = [x1 + shift - 20, y1 - 20, x2 + shift + 20, y2 + 20]

    def misplaced(ctx):
        source = ctx.source()
        code = crop_cv2(wrong, 2, ctx.output_path("zoom"))
        check = lambda out: check_crop(source, out.images[0], wrong, ctx.task.meta["target_box"], 2,  # noqa: E731
                                       ctx.task.meta["font_px"], ctx.legible_font_px)
        return Plan(style="misplaced", steps=[Step("crop", code, check)], finish=lambda outs: ("", ctx.task.answer))

    result = run_expert(task, sandbox, produced_dir=tmp_path, prompt=prompt, planner=misplaced)
    assert result.row is None and result.dropped_by == "evidence" and "does not contain the target" in result.reason

    # Numbers misread from the image: the program prints another result than the reference.
    task = _task(generated, "computation")
    values = task.meta["values"]
    key = "qty" if "qty" in values else ("value" if "value" in values else "price")
    values[key] = [v + 1 for v in values[key]]
    if task.meta["operation"] == "max_minus_min_price":
        values["price"][0] += 1000
    result = run_expert(task, sandbox, produced_dir=tmp_path, prompt=prompt)
    assert result.row is None and result.dropped_by == "answer", result.reason


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_literal_path_share_decides_how_the_code_finds_the_image(generated, sandbox, tmp_path, share):
    from envs.tasks.config import TaskGenConfig

    task = _task(generated, "low_contrast")
    result = run_expert(task, sandbox, produced_dir=tmp_path, prompt=load_prompt_texts(),
                        config=TaskGenConfig(literal_path_share=share))
    assert result.row is not None, result.reason
    assert (f'image_path = "{task.image_paths[0]}"' in result.row.response) == (share == 1.0)
    # a plain output name: nothing in it the model would have to invent
    assert '"/mnt/data/temp_processed_images/enhanced.png"' in result.row.response


@pytest.fixture(scope="module")
def direct_tasks(tmp_path_factory):
    from envs.tasks.build import generate_tasks
    from envs.tasks.config import load_config

    out = tmp_path_factory.mktemp("direct-set")
    config = load_config(overrides=["direct.kinds=[colour,count,shape]"])
    return generate_tasks("direct", 12, seed=5, split="train", out_dir=out, difficulty=1.0, config=config)


def test_measuring_expert_reads_colour_count_and_shape_from_the_sandbox(direct_tasks, sandbox, tmp_path):
    from envs.tasks.config import load_config

    config = load_config(overrides=["direct.measure_share=1"])
    prompt = load_prompt_texts()
    kinds = set()
    for task in direct_tasks:
        result = run_expert(task, sandbox, produced_dir=tmp_path, prompt=prompt, config=config)
        assert result.row is not None, result.reason
        kind = task.meta["kind"]
        kinds.add(kind)
        assert result.style == f"measure-{kind}"
        response = result.row.response
        assert len(code_blocks(response)) == 1 and extract_answer(response) == task.answer
        printed = response.split("<sandbox_output>")[1].split("</sandbox_output>")[0].strip()
        assert f"The code printed {printed}, so the answer is {task.answer}." in response
        assert printed == task.answer  # the code prints the answer: the model copies it
    assert kinds == {"colour", "count", "shape"}
    # replays to the same output and answer in a fresh episode
    assert replay_row(result.row, sandbox) == []


def test_measuring_is_off_by_default_and_a_wrong_reading_is_dropped(direct_tasks, sandbox, tmp_path):
    from envs.tasks.config import load_config
    from envs.tasks.experts.direct import read_measurement

    prompt = load_prompt_texts()
    plain = run_expert(direct_tasks[0], sandbox, produced_dir=tmp_path, prompt=prompt)
    assert plain.style == "direct" and not code_blocks(plain.row.response)
    assert read_measurement("colour", "red") == "red" and read_measurement("colour", "(220, 30, 30)") == ""
    assert read_measurement("shape", "circle") == "circle" and read_measurement("count", "3") == "3"
    assert read_measurement("count", "three") == "" and read_measurement("shape", "red") == ""
    colour_task = next(t for t in direct_tasks if t.meta["kind"] == "colour")
    wrong = next(c for c in ("red", "blue") if c != colour_task.answer)
    colour_task = dataclasses.replace(colour_task, answer=wrong)
    result = run_expert(colour_task, sandbox, produced_dir=tmp_path, prompt=prompt,
                        config=load_config(overrides=["direct.measure_share=1"]))
    assert result.row is None and result.dropped_by == "answer", result.reason
    with pytest.raises(ValueError, match="measure_share"):
        load_config(overrides=["direct.measure_share=1.5"])
    with pytest.raises(ValueError, match="direct.kinds"):
        load_config(overrides=["direct.kinds=[colour,smell]"])
