"""launch.chat and launch.eval end to end on the tiny model, the real sandbox and a generated task set."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from policy.agent_transcript import split_model_text

ZOOM = ("<think>zoom in</think><code>\n```python\nfrom PIL import Image\n"
        "Image.open(image_path).crop((0, 0, 50, 50)).save('zoom.png')\nprint('zoomed in')\n```\n</code>")


@pytest.fixture(scope="module")
def image_path(scratch_dir):
    path = scratch_dir / "chat-eval.png"
    Image.new("RGB", (200, 150), (20, 160, 20)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def task_dir(scratch_dir):
    from envs.tasks.build import generate_tasks

    out = scratch_dir / "chat-eval-tasks"
    generate_tasks("all", 3, seed=0, split="eval", out_dir=out, progress=False)
    return out


def test_split_model_text():
    text = "<think>look</think> first <code>\n```python\nprint(1)\n```\n</code> then <answer>red</answer>"
    assert split_model_text(text) == [("thought", "look first"), ("code", "print(1)"), ("thought", "then"),
                                      ("answer", "red")]
    assert split_model_text("<code>x = 1") == [("code", "x = 1")]  # an unclosed block runs to the end


def test_chat_prints_the_transcript_and_saves_images(tiny_model_dir, image_path, scratch_dir, capsys):
    from launch.chat import main

    out = scratch_dir / "chat-out"
    code = main(["--model", str(tiny_model_dir), "--image", image_path, "--out", str(out), "--prefix", ZOOM,
                 "--set", "max_new_tokens_per_round=6", "--seed", "1", "What is in the corner?"])
    printed = capsys.readouterr().out
    assert code == 0
    for piece in ("[question]\nWhat is in the corner?", "[code (forced prefix)]", "print('zoomed in')",
                  "[sandbox output: ok", "zoomed in", "[end]", "code runs: 1/1 ok"):
        assert piece in printed
    [saved] = list((out / "chat").iterdir())
    assert f"image: {saved}" in printed and Image.open(saved).size == (50, 50)
    with pytest.raises(SystemExit, match="no such file"):
        main(["--model", str(tiny_model_dir), "--image", str(scratch_dir / "missing.png"), "q"])
    # a chat that cannot start (more input images than the episode may hold) fails the command
    assert main(["--model", str(tiny_model_dir), "--image", image_path, "--image", image_path,
                 "--set", "max_images_per_episode=1", "q"]) == 1
    assert "max_images_per_episode" in capsys.readouterr().out


def test_eval_writes_table_summary_and_predictions(tiny_model_dir, task_dir, scratch_dir, capsys):
    from launch.eval import main

    out = scratch_dir / "eval-out"
    assert main(["--model", str(tiny_model_dir), "--tasks", str(task_dir), "--out", str(out),
                 "--set", "batch_size=2", "--set", "max_new_tokens_per_round=6"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "code use" in printed and "rewards.rules" in printed
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 3 and summary["categories"]["all"]["n"] == 3
    assert summary["decoding"].startswith("greedy")
    for row in rows:
        assert row["category"] in summary["categories"] and row["turns"] >= 1 and row["model_tokens"] > 0
    # W&B (offline here): the table per category and the sample transcripts with the images the model saw.
    [run] = (out / "wandb").glob("offline-run-*")
    [categories] = (run / "files" / "media" / "table" / "eval").glob("categories_*.table.json")
    table = json.loads(categories.read_text())
    assert [r[0] for r in table["data"]] == list(summary["categories"]) and "accuracy" in table["columns"]
    [transcripts] = (run / "files" / "media" / "table" / "eval").glob("transcripts_*.table.json")
    table = json.loads(transcripts.read_text())
    assert len(table["data"]) == 3 and "[question]" in table["data"][0][table["columns"].index("transcript")]
    images = list((run / "files" / "media" / "images" / "eval" / "images").rglob("*.png"))
    assert {p.parent.name for p in images} == {row["id"] for row in rows}, images  # each sample's input image


def test_eval_scores_answers_and_code_use(tiny_model_dir, image_path):
    """Real records (forced replies) through the real rule checker and the per-category table."""
    from envs.sandbox import Sandbox
    from launch.eval import answer_checker, format_table, prediction_row, summarise
    from envs.tasks import Task
    from policy.agent_config import load_rollout_config
    from policy.agent_loop import AgentLoop, EpisodeInput
    from policy.engine import SamplingSettings
    from policy.hf_engine import HFEngine

    tasks = [Task("t1", "direct", "eval", [image_path], "How many dots?", "7"),
             Task("t2", "direct", "eval", [image_path], "What colour?", "green"),
             Task("t3", "small_object", "eval", [image_path], "Zoom: what colour?", "green")]
    replies = ["<think>count</think><answer>seven dots: 7</answer>", "<answer>blue</answer>", ZOOM]
    config = load_rollout_config(overrides={"max_new_tokens_per_round": 4, "max_turns": 2})
    with Sandbox() as sandbox, AgentLoop(HFEngine(tiny_model_dir), sandbox, config) as loop:
        records = loop.run([EpisodeInput(t.question, t.image_paths, id=t.id, assistant_prefix=r)
                            for t, r in zip(tasks, replies)], sampling=SamplingSettings.greedy())
    name, check = answer_checker()
    rows = [prediction_row(rec, task, check) for rec, task in zip(records, tasks)]
    assert [r["correct"] for r in rows] == [True, False, False]
    # The first two follow the tag contract; the zoom episode ran out of turns without an answer.
    assert [r["well_formed"] for r in rows] == [True, True, False], [r["format_reason"] for r in rows]
    summary = summarise(rows)
    assert summary["direct"]["accuracy"] == 0.5 and summary["direct"]["code_use_rate"] == 0.0
    assert summary["direct"]["well_formed_rate"] == 1.0 and summary["small_object"]["well_formed_rate"] == 0.0
    assert summary["small_object"]["code_use_rate"] == 1.0 and summary["small_object"]["code_success_rate"] == 1.0
    assert summary["all"]["n"] == 3 and summary["all"]["mean_turns"] == pytest.approx((1 + 1 + 2) / 3)
    table = format_table(summary)
    assert table.splitlines()[-1].startswith("all") and "50.0%" in table
