"""The demo's report: per-category tables, the paired bootstrap over held-out tasks, the learning PNG,
the category-list and prompt options of envs.tasks (pure logic, real files, no model)."""
from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from launch.eval_compare import category_table, compare, format_bootstrap, main as compare_main, paired_bootstrap


def _row(task_id: str, category: str, correct: bool, well_formed: bool, blocks: int = 1, ran: int = 1) -> dict:
    return {"id": task_id, "category": category, "correct": correct, "well_formed": well_formed,
            "code_blocks": blocks, "code_successes": ran, "turns": 1 + blocks, "undecided": False, "error": None,
            "reward": float(correct) + 0.5 * float(well_formed)}


def _write(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_category_table_counts_per_category_and_all():
    rows = [_row("a", "direct", True, True, 0, 0), _row("b", "direct", False, False, 0, 0),
            _row("c", "rotation", False, True, 2, 1)]
    table = category_table(rows)
    assert list(table) == ["direct", "rotation", "all"]
    assert table["direct"]["accuracy"] == 0.5 and table["direct"]["code ran"] is None
    assert table["rotation"]["code ran"] == 0.5 and table["rotation"]["turns"] == 3
    assert table["all"]["n"] == 3 and table["all"]["format ok"] == pytest.approx(2 / 3)
    assert table["all"]["reward"] == pytest.approx((1.5 + 0 + 0.5) / 3)


def test_paired_bootstrap_sees_a_real_shift_and_not_noise():
    rng = random.Random(1)
    a = [rng.choice([0.0, 0.5, 1.5]) for _ in range(200)]
    better = [x + 0.5 if x < 1.5 else x for x in a]  # the same tasks, some improved, none worse
    shifted = paired_bootstrap(a, better, resamples=2000)
    assert shifted["n"] == 200 and shifted["mean_diff"] > 0 and shifted["ci_low"] > 0 and shifted["excludes_zero"]
    same = paired_bootstrap(a, list(a), resamples=500)
    assert same["mean_diff"] == 0 and not same["excludes_zero"]
    noise = paired_bootstrap(a, [rng.choice([0.0, 0.5, 1.5]) for _ in range(200)], resamples=2000, seed=3)
    assert noise["ci_low"] < noise["mean_diff"] < noise["ci_high"]
    assert paired_bootstrap(a, better, resamples=500, seed=7) == paired_bootstrap(a, better, resamples=500, seed=7)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_compare_pairs_tasks_by_id_and_writes_json(tmp_path, capsys):
    sft = _write(tmp_path / "sft", [_row(f"t{i}", "direct", i % 3 == 0, True) for i in range(30)])
    grpo = _write(tmp_path / "grpo", [_row(f"t{i}", "direct", i % 3 != 2, True) for i in range(30)]
                  + [_row("extra", "direct", True, True)])  # a task only one model saw does not count
    result = compare({"sft": sft, "grpo": grpo}, resamples=1000)
    assert result["tasks"] == 30 and result["bootstrap"]["a"] == "sft" and result["bootstrap"]["b"] == "grpo"
    assert result["bootstrap"]["mean_diff"] == pytest.approx(10 / 30)
    assert "n=30" in format_bootstrap(result["bootstrap"])
    out = tmp_path / "compare.json"
    assert compare_main([f"sft={sft}", f"grpo={grpo}", "--resamples", "500", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"] == 30
    printed = capsys.readouterr().out
    assert "[sft] on 30 held-out tasks" in printed and "paired bootstrap 95% interval" in printed
    with pytest.raises(SystemExit):
        compare_main([f"sft={sft}", f"grpo={tmp_path / 'missing'}"])


def test_learning_png_is_written_with_nan_steps(tmp_path):
    from launch.learning_plot import learning_png
    from launch.learning_plot import main as plot_main

    metrics = [{"step": s, "reward": 0.3 + 0.05 * s, "format_rate": 0.8, "code_success_rate": float("nan") if s == 2 else 0.7}
               for s in range(1, 6)]
    rows = [_row(f"t{i}", "direct", i % 2 == 0, True) for i in range(10)]
    comparison = compare({"random": _write(tmp_path / "r", [_row(r["id"], "direct", False, False) for r in rows]),
                          "sft": _write(tmp_path / "s", rows), "grpo": _write(tmp_path / "g", rows)}, resamples=200)
    path = learning_png(metrics, comparison, tmp_path / "fig" / "learning.png", note="a note")
    image = Image.open(path)
    assert image.size[0] > 800 and len(set(image.convert("RGB").getdata())) > 5  # curves and bars drawn
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (tmp_path / "compare.json").write_text(json.dumps(comparison))
    assert plot_main(["--metrics", str(tmp_path / "metrics.jsonl"), "--compare", str(tmp_path / "compare.json"),
                      "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_category_list_is_round_robin_and_validated(tmp_path):
    from envs.tasks.__main__ import _categories
    from envs.tasks.build import generate_tasks, plan

    assert plan("direct,rotation", 5) == [("direct", 0), ("rotation", 0), ("direct", 1), ("rotation", 1), ("direct", 2)]
    assert _categories("direct, rotation") == "direct,rotation"
    for bad in ("direct,nope", "direct,direct", "", "all,direct"):
        with pytest.raises(Exception):
            _categories(bad)
    # task k of a category is the same task in a list as alone (same seed, same pixels)
    mixed = generate_tasks("direct,rotation", 4, seed=3, split="eval", out_dir=tmp_path / "mixed", progress=False)
    alone = generate_tasks("rotation", 2, seed=3, split="eval", out_dir=tmp_path / "alone", progress=False)
    assert [t.question for t in mixed if t.category == "rotation"] == [t.question for t in alone]
    assert Image.open(mixed[1].image_paths[0]).tobytes() == Image.open(alone[0].image_paths[0]).tobytes()


def test_generate_writes_rows_with_the_named_prompt(tmp_path):
    from envs.data.thyme_prompt import load_prompt_texts
    from envs.tasks.__main__ import main

    assert main(["generate", "--category", "direct", "--n", "2", "--seed", "0", "--out", str(tmp_path), "--prompt", "demo"]) == 0
    row = json.loads((tmp_path / "rl.jsonl").read_text().splitlines()[0])
    demo = load_prompt_texts("demo")
    assert row["messages"][0]["content"] == demo.system
    assert "Reply <think>" in row["messages"][1]["content"]
    with pytest.raises(SystemExit):
        main(["generate", "--category", "direct", "--n", "1", "--out", str(tmp_path / "x"), "--prompt", "nope"])
    # expert code copying the image's path needs a prompt that shows it: refused before any task is made
    with pytest.raises(SystemExit, match="literal_path_share=0"):
        main(["generate", "--category", "direct", "--n", "1", "--out", str(tmp_path / "y"), "--prompt", "demo",
              "--trajectories"])
    assert not (tmp_path / "y").exists()


def test_difficulty_per_category(tmp_path):
    from envs.tasks.__main__ import _difficulty
    from envs.tasks.build import generate_tasks

    assert _difficulty("0.3") == 0.3 and _difficulty("computation=0,rotation=0.5") == {"computation": 0.0, "rotation": 0.5}
    for bad in ("1.5", "nope=0.2", "computation=2", "x"):
        with pytest.raises(Exception):
            _difficulty(bad)
    tasks = generate_tasks("direct,computation", 6, seed=2, split="eval", out_dir=tmp_path, progress=False,
                           difficulty={"computation": 0.0})
    assert {t.difficulty["level"] for t in tasks if t.category == "computation"} == {0.0}
    assert len({t.difficulty["level"] for t in tasks if t.category == "direct"}) == 3  # drawn per task


def test_an_episode_of_256_model_tokens_is_trainable():
    """The rollout record's loss_mask travels as int8 (EpisodeRecord.to_dict): a Python sum of 256 ones
    wrapped to 0 and the episode was set apart as "no_model_tokens" (seen as an overflow warning in the demo)."""
    import numpy as np

    from learners.grpo_batch import untrainable_reason

    record = {"token_ids": np.arange(300) % 50, "loss_mask": np.array([0] * 44 + [1] * 256, dtype=np.int8)}
    assert untrainable_reason(record, vision_ids={999}, max_tokens=4096) is None
    record["loss_mask"] = np.zeros(300, dtype=np.int8)
    assert untrainable_reason(record, vision_ids={999}, max_tokens=4096) == "no_model_tokens"


def test_the_demo_pipeline_composes_with_its_recipe():
    """launch.demo's pipeline and prompt compose into the stages docs/training.md describes."""
    from hydra import compose, initialize_config_dir

    from launch.demo import PIPELINE, PROMPT
    from launch.train import CONF_DIR, compose_stages, typed

    overrides = [PIPELINE, f"prompt={PROMPT}", "data.math_categories=[]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
        stages = compose_stages(cfg, overrides)
        configs = [typed(c, check_paths=False) for c in stages]
    assert [c.stage.name for c in configs] == ["sft", "sft_math", "grpo"]
    sft, math, grpo = (c.stage for c in configs)
    assert (sft.lr, sft.epochs, sft.global_batch, sft.train_rounds) == (2e-3, 6, 8, "last")
    assert (math.lr, math.train_rounds, math.init_from) == (2e-4, "all", "previous")
    assert (grpo.trainer, grpo.max_steps, grpo.global_batch, grpo.grpo["group_size"]) == ("grpo", 40, 16, 4)
    assert all(s.prompt.system.startswith("Solve the question") for s in stages)


def test_the_demo_task_settings_are_a_valid_generator_config():
    from envs.tasks.config import load_config
    from launch.demo import TASK_SETTINGS

    config = load_config(overrides=list(TASK_SETTINGS))
    assert config.direct.kinds == ["colour", "count", "shape"] and config.direct.measure_share == 1.0
    assert config.literal_path_share == 0
