"""Mistakes users make, answered with what is wrong and what to change, before anything slow starts and
without a traceback: typos in overrides ("did you mean"), config-group and pipeline typos, a bad job
in a sweep, model folders that are not models, empty task folders, data files of the wrong kind,
images the sandbox would refuse, and fix-suggestions that are themselves valid."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from launch.overrides_check import check_overrides
from learners.train_config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd=REPO_ROOT, timeout=180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("overrides, message", [
    (["stage.learning_rate=1e-4"], "unknown setting stage.learning_rate; did you mean stage.lr?"),
    (["+stage.learning_rate=1e-4"], "unknown setting stage.learning_rate; did you mean stage.lr?"),
    (["lr=1e-4"], "unknown setting lr; did you mean stage.lr?"),
    (["cluster.num_learner=2"], "did you mean cluster.num_learners?"),
    (["rollout.sampling.temprature=0"], "did you mean rollout.sampling.temperature?"),
    (["cluster=ray_clustr"], "cluster=ray_clustr: there is no conf/cluster/ray_clustr.yaml; did you mean cluster=ray_cluster?"),
    (["stage=sft,sft_mth"], "stage=sft_mth: there is no conf/stage/sft_mth.yaml; did you mean stage=sft_math?"),
    (["pipeline=[sft_small,sft_mat_small]"], "pipeline stage 'sft_mat_small'"),
    (["seed.x=1"], "seed is a single value, not a section"),
])
def test_override_typos_get_did_you_mean(overrides, message):
    with pytest.raises(ConfigError) as refused:
        check_overrides(overrides)
    assert message in str(refused.value)
    assert "+stage" not in str(refused.value)  # never Hydra's advice to append a typo


def test_valid_overrides_pass():
    check_overrides(["model=qwen2_5_vl_7b", "model.path=/x", "stage.lr=1e-4,2e-4", "hydra.verbose=true",
                     "+rollout.engine_options.max_batch_size=4", "pipeline=[sft_small,sft_math_small]"])


def test_cli_typo_and_bad_sweep_job_are_refused_before_anything_runs(tmp_path):
    done = _cli("-m", "launch.train", "stage.learning_rate=1e-4", f"output_dir={tmp_path}")
    assert done.returncode == 2 and "did you mean stage.lr?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "+stage.learning_rate" not in done.stderr
    # The second job of the sweep cannot split its batch: refused before the first job starts.
    done = _cli("-m", "launch.train", "-m", "stage.micro_batch=2,3", f"output_dir={tmp_path}")
    assert done.returncode == 2, done.stderr
    assert "sweep job stage.micro_batch=3" in done.stderr and "not a multiple of stage.micro_batch (3)" in done.stderr
    assert not any(tmp_path.iterdir())  # no sweep folder, no job ran


def test_resource_suggestions_are_valid_settings():
    from launch.train import CONF_DIR, typed
    from hydra import compose, initialize_config_dir
    from learners.train_config import validate_resources

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        config = typed(compose(config_name="config", overrides=["cluster=gpu_node", "stage=sft"]))
    with pytest.raises(ConfigError) as refused:
        validate_resources(config, available_gpus=0, available_cpus=64)
    message = str(refused.value)
    assert "cluster.num_learners to 0" not in message and "set cluster.gpus_per_learner=0" in message


def test_model_folder_mistakes_name_the_folder_to_use(tiny_model_dir, tmp_path):
    from policy.model_dir import model_dir_problem

    stage = tmp_path / "run" / "sft"
    hf = stage / "checkpoints" / "step_00000004" / "hf"
    shutil.copytree(tiny_model_dir, hf)
    assert model_dir_problem(hf, "--model") is None
    assert f"did you mean --model {hf}?" in model_dir_problem(hf.parent, "--model")  # step_N instead of step_N/hf
    assert f"did you mean model.path={hf}?" in model_dir_problem(stage, "model.path")  # the stage folder
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    assert "is not a model folder (no config.json)" in model_dir_problem(tmp_path / "notes", "--model")
    (tmp_path / "notes" / "config.json").write_text("{}")
    assert "no weights" in model_dir_problem(tmp_path / "notes", "--model")
    # chat answers before loading anything: no traceback, no sentencepiece.
    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48)).save(image)
    done = _cli("-m", "launch.chat", "--model", str(hf.parent), "--image", str(image), "q")
    assert done.returncode == 1 and f"did you mean --model {hf}?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "sentencepiece" not in done.stderr


def test_images_the_sandbox_would_refuse_name_the_users_file_and_the_setting(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (7000, 7000)).save(huge)  # 49 M pixels, over sandbox.max_image_pixels (40 M), a small file
    # Checked before the model: the model folder does not even exist.
    done = _cli("-m", "launch.chat", "--model", str(tmp_path / "no-model"), "--image", str(huge), "q")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"--image {huge} is 7000x7000 = 49,000,000 pixels" in done.stderr
    assert "--sandbox max_image_pixels=50000000" in done.stderr and "thyme-sandbox" not in done.stderr
    # The suggested setting is valid: with it, the image passes the same check.
    from launch.chat import sandbox_settings
    from launch.input_checks import image_problem

    assert image_problem(str(huge), sandbox_settings(["max_image_pixels=50000000"])) is None
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    assert "is not an image PIL can read" in image_problem(str(text), sandbox_settings([]))


def test_eval_on_an_empty_folder_says_how_to_make_tasks(tiny_model_dir, tmp_path):
    done = _cli("-m", "launch.eval", "--model", str(tiny_model_dir), "--tasks", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"--tasks {tmp_path} has no tasks.jsonl; make one with `python -m envs.tasks generate" in done.stderr


def test_a_data_file_of_the_wrong_kind_is_named(tiny_model_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from launch.train import CONF_DIR, run

    manifest = tmp_path / "tasks.jsonl"
    manifest.write_text(json.dumps({"id": "t0", "category": "direct", "split": "train", "image_paths": ["a.png"],
                                    "question": "q", "answer": "a"}) + "\n")
    overrides = [f"output_dir={tmp_path / 'out'}", f"model.path={tiny_model_dir}", f"data.sft_path={manifest}",
                 "logging=disabled"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(ConfigError) as refused:
        run([cfg])  # refused while preparing data: before Ray starts
    assert f"data.sft_path={manifest}" in str(refused.value) and "is a task manifest" in str(refused.value)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=[*overrides[:2], f"data.sft_path={image}"])
    with pytest.raises(ConfigError, match=r"is a \.png file; training rows are \.jsonl or \.parquet"):
        run([cfg])


def test_an_unreachable_cluster_is_refused_at_once(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _cli("-m", "launch.train", "cluster=ray_cluster", f"cluster.address=127.0.0.1:{port}", f"output_dir={tmp_path}",
                timeout=60)  # Ray alone would retry the address for minutes
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"could not join the Ray cluster at 127.0.0.1:{port}: nothing answers" in done.stderr


def test_submit_refuses_paths_a_cluster_job_would_lose(tmp_path):
    done = _cli("-m", "launch.submit", "--address", "http://127.0.0.1:9", "eval", "--model", "outputs/m",
                "--tasks", "/shared/tasks", "--out", "/shared/eval")
    assert done.returncode == 2 and "--model outputs/m is relative" in done.stderr and "Traceback" not in done.stderr
    done = _cli("-m", "launch.submit", "--address", "http://127.0.0.1:9", "train", "stage.lrr=1")
    assert done.returncode == 2 and "did you mean stage.lr?" in done.stderr


def test_sandbox_messages_name_the_users_file():
    from launch.input_checks import staged_paths_to_user_paths

    message = "input image '/tmp/thyme-sandbox-q6m4a_qb/inputs/7b67b25bd2b5b39c13fb/huge.png' is 7000x7000"
    assert staged_paths_to_user_paths(message, ["/home/me/huge.png"]) == "input image '/home/me/huge.png' is 7000x7000"
