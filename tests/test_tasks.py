"""Procedural tasks: determinism, split disjointness, difficulty knobs, the manifest round trip, the CLI."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from envs.tasks import CATEGORIES, Task, load_tasks, write_tasks
from envs.tasks.build import generate_task, generate_tasks
from envs.tasks.config import TaskGenConfig

REPO = Path(__file__).resolve().parents[1]


def pixel_hash(path: str) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


def _comparable(task: Task) -> dict:
    row = task.to_dict()
    row.pop("image_paths")
    return row


@pytest.mark.parametrize("category", CATEGORIES)
def test_same_seed_same_task_other_seed_other_task(category, tmp_path):
    config = _small_config()  # determinism does not depend on size; small canvases keep the test fast
    a = generate_task(category, 3, seed=7, split="train", out_dir=tmp_path / "a", config=config)
    b = generate_task(category, 3, seed=7, split="train", out_dir=tmp_path / "b", config=config)
    c = generate_task(category, 3, seed=8, split="train", out_dir=tmp_path / "c", config=config)
    assert _comparable(a) == _comparable(b)
    assert pixel_hash(a.image_paths[0]) == pixel_hash(b.image_paths[0])
    assert pixel_hash(a.image_paths[0]) != pixel_hash(c.image_paths[0])
    # Each task stands alone: task 3 does not depend on tasks 0-2 having been generated first.
    together = generate_tasks(category, 4, seed=7, split="train", out_dir=tmp_path / "d", progress=False, config=config)
    assert pixel_hash(together[3].image_paths[0]) == pixel_hash(a.image_paths[0])


def test_train_and_eval_never_share_an_image(tmp_path):
    config = TaskGenConfig()
    config.small_object.canvas_min, config.small_object.canvas_max = 1024, 1200  # speed only
    config.multi_round.canvas_min, config.multi_round.canvas_max = 1400, 1600
    hashes = {}
    for split in ("train", "eval"):
        tasks = generate_tasks("all", 24, seed=0, split=split, out_dir=tmp_path / split, config=config, progress=False)
        assert {t.split for t in tasks} == {split}
        hashes[split] = {pixel_hash(t.image_paths[0]) for t in tasks}
        assert len(hashes[split]) == 24, "two tasks of one split share an image"
    assert not hashes["train"] & hashes["eval"]


def _levels(category, tmp_path, difficulty, n=3, config=None):
    return [generate_task(category, i, seed=1, split="train", out_dir=tmp_path / f"{category}-{difficulty}",
                          difficulty=difficulty, config=config) for i in range(n)]


def test_small_object_knob_shrinks_the_target_and_keeps_it_unreadable(tmp_path):
    config = TaskGenConfig()
    easy, hard = _levels("small_object", tmp_path, 0.0, config=config), _levels("small_object", tmp_path, 1.0, config=config)
    for task in easy + hard:
        w, h = task.difficulty["canvas"]
        assert 2048 <= min(w, h) and max(w, h) <= 4096
        assert task.difficulty["area_fraction"] <= 0.05
        assert task.difficulty["font_px_at_model_input"] <= config.illegible_font_px
        x1, y1, x2, y2 = task.meta["target_box"]
        assert (x2 - x1) * (y2 - y1) / (w * h) == pytest.approx(task.difficulty["area_fraction"])
    mean = lambda ts, key: float(np.mean([t.difficulty[key] for t in ts]))  # noqa: E731
    assert mean(hard, "area_fraction") < mean(easy, "area_fraction") / 2
    assert mean(hard, "font_px") < mean(easy, "font_px")


def test_other_knobs_move_what_they_claim(tmp_path):
    lc_easy, lc_hard = _levels("low_contrast", tmp_path, 0.0), _levels("low_contrast", tmp_path, 1.0)
    assert min(t.meta["delta"] for t in lc_easy) > max(t.meta["delta"] for t in lc_hard)
    for task in lc_easy + lc_hard:  # the measured grey-level gap is the one claimed
        with Image.open(task.image_paths[0]) as im:
            grey = np.asarray(im.convert("L"), dtype=float)
        x1, y1, x2, y2 = task.meta["text_box"]
        inside, outside = np.median(grey[y1:y2, x1:x2]), np.median(grey)
        assert abs(task.meta["background"] - outside) <= 1
        assert abs(task.meta["ink"] - task.meta["background"]) == task.meta["delta"]

    rot_easy, rot_hard = _levels("rotation", tmp_path, 0.0, n=4), _levels("rotation", tmp_path, 1.0, n=4)
    assert all(t.meta["angle"] in (90, 180, 270) for t in rot_easy)
    assert all(t.meta["arbitrary"] and 25 <= t.meta["angle"] <= 335 for t in rot_hard)

    comp_easy, comp_hard = _levels("computation", tmp_path, 0.0), _levels("computation", tmp_path, 1.0)
    assert max(t.difficulty["items"] for t in comp_easy) < min(t.difficulty["items"] for t in comp_hard)

    config = TaskGenConfig()
    mr_easy, mr_hard = _levels("multi_round", tmp_path, 0.0, config=config), _levels("multi_round", tmp_path, 1.0, config=config)
    for task in mr_easy + mr_hard:
        outer, inner = task.meta["outer_box"], task.meta["inner_box"]
        assert outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]
        assert task.difficulty["font_px_at_model_input"] <= config.illegible_font_px + 0.5
    assert np.mean([t.difficulty["card_area_fraction"] for t in mr_hard]) < np.mean([t.difficulty["card_area_fraction"] for t in mr_easy])


def test_rotation_reference_is_the_image_turned_back(tmp_path):
    for task in _levels("rotation", tmp_path, 0.0, n=3):
        with Image.open(task.image_paths[0]) as im, Image.open(Path(task.image_paths[0]).parents[1] / task.meta["references"]["upright"]) as up:
            turned = np.rot90(np.asarray(im, dtype=float), k=-task.meta["angle"] // 90)
            # The task image adds noise and JPEG to the clean upright view, nothing else.
            assert turned.shape == np.asarray(up).shape
            assert np.abs(turned - np.asarray(up, dtype=float)).mean() < 4


def test_manifest_round_trip_and_relocation(tmp_path):
    tasks = generate_tasks("all", 6, seed=3, split="eval", out_dir=tmp_path / "set", progress=False,
                           config=_small_config())
    loaded = load_tasks(tmp_path / "set")
    assert [t.to_dict() for t in loaded] == [t.to_dict() for t in tasks]
    manifest_rows = [json.loads(line) for line in (tmp_path / "set" / "tasks.jsonl").read_text().splitlines()]
    assert all(not Path(p).is_absolute() for row in manifest_rows for p in row["image_paths"])
    shutil.move(str(tmp_path / "set"), str(tmp_path / "moved"))
    moved = load_tasks(tmp_path / "moved", category="rotation")
    assert len(moved) == 1 and Path(moved[0].image_paths[0]).is_file()


def test_bad_manifest_and_bad_fields_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m envs.tasks generate"):
        load_tasks(tmp_path)
    (tmp_path / "tasks.jsonl").write_text('{"id": "x", "category": "rotation"}\n')
    with pytest.raises(ValueError, match=r"tasks.jsonl:1: .*missing field"):
        load_tasks(tmp_path)
    with pytest.raises(ValueError, match="unknown category"):
        Task(id="x", category="zoom", split="train", image_paths=["a.png"], question="q", answer="a")
    write_tasks([Task(id="x", category="direct", split="train", image_paths=[str(tmp_path / "a.png")], question="q", answer="a")], tmp_path)
    assert load_tasks(tmp_path)[0].image_paths == [str((tmp_path / "a.png").resolve())]


def _small_config() -> TaskGenConfig:
    config = TaskGenConfig()
    config.small_object.canvas_min, config.small_object.canvas_max = 1024, 1200
    config.multi_round.canvas_min, config.multi_round.canvas_max = 1400, 1600
    return config


def test_cli_generate_and_show(tmp_path):
    out = tmp_path / "set"
    run = subprocess.run([sys.executable, "-m", "envs.tasks", "generate", "--category", "rotation", "--n", "4",
                          "--seed", "0", "--split", "eval", "--out", str(out), "--difficulty", "1.0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "task/s" in run.stderr  # the tqdm progress bar
    tasks = load_tasks(out)
    assert len(tasks) == 4 and all(t.meta["arbitrary"] for t in tasks)
    assert len((out / "rl.jsonl").read_text().splitlines()) == 4
    sheet = tmp_path / "sheet.png"
    run = subprocess.run([sys.executable, "-m", "envs.tasks", "show", str(out), "--n", "4", "--out", str(sheet)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with Image.open(sheet) as im:
        assert im.width >= 4 * 320 and np.asarray(im.convert("L")).std() > 10  # not blank
    bad = subprocess.run([sys.executable, "-m", "envs.tasks", "generate", "--category", "zoom", "--n", "1", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


def test_parallel_generation_gives_the_same_set(tmp_path):
    config = _small_config()
    one = generate_tasks("all", 6, seed=4, split="train", out_dir=tmp_path / "one", config=config, progress=False)
    two = generate_tasks("all", 6, seed=4, split="train", out_dir=tmp_path / "two", config=config, progress=False, workers=2)
    assert [_comparable(t) for t in one] == [_comparable(t) for t in two]
    assert [pixel_hash(t.image_paths[0]) for t in one] == [pixel_hash(t.image_paths[0]) for t in two]


def test_config_loading_validates_and_rejects_unknown_keys(tmp_path):
    from envs.tasks.config import load_config

    yaml_file = tmp_path / "tasks.yaml"
    yaml_file.write_text("small_object:\n  canvas_max: 3000\n")
    config = load_config(str(yaml_file), ["low_contrast.delta_hard=3"])
    assert config.small_object.canvas_max == 3000 and config.low_contrast.delta_hard == 3
    with pytest.raises(ValueError, match="canvas_min/canvas_max"):
        load_config(None, ["small_object.canvas_max=100"])
    with pytest.raises(ValueError, match="0.05"):
        load_config(None, ["small_object.max_area_fraction=0.2"])
    with pytest.raises(ValueError, match="nope"):
        load_config(None, ["rotation.nope=1"])
    with pytest.raises(ValueError, match="literal_path_share"):
        load_config(None, ["literal_path_share=1.5"])
