"""launch.train's configuration: Hydra composition, typed validation, refusals that say what to change,
all before Ray starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from launch.train import CONF_DIR, REPO_ROOT, compose_stages, stage_overrides, typed
from learners.train_config import ConfigError, validate_resources


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
        return cfg, compose_stages(cfg, list(overrides))


def test_paper_stages_hold_the_paper_numbers():
    sft = typed(_compose("stage=sft")[0])
    assert (sft.stage.lr, sft.stage.global_batch, sft.stage.epochs, sft.stage.warmup_ratio) == (1e-5, 128, 3, 0.05)
    assert sft.stage.train_rounds == "last" and sft.stage.data == "sft"
    math = typed(_compose("stage=sft_math")[0])
    assert (math.stage.lr, math.stage.train_rounds, math.stage.init_from, math.stage.data) == (1e-6, "all", "previous", "math")


def test_default_is_laptop_sized_and_pipeline_composes_each_stage():
    cfg, stages = _compose()
    default = typed(cfg)
    assert default.cluster.gpus_per_learner == 0 and default.model.path is None and default.data.sft_path is None
    assert default.stage.global_batch <= 8
    _cfg, stages = _compose("pipeline=[sft_small,sft_math_small]", "stage.max_steps=3", "seed=5")
    names = [typed(s).stage.name for s in stages]
    assert names == ["sft", "sft_math"]
    # Other overrides apply to every stage of the pipeline.
    assert all(typed(s).stage.max_steps == 3 and typed(s).seed == 5 for s in stages)
    assert stage_overrides(["pipeline=[a,b]", "stage=x", "seed=1"], "b") == ["seed=1", "stage=b"]


@pytest.mark.parametrize("overrides, message", [
    (["stage.global_batch=10", "stage.micro_batch=2", "cluster.num_learners=3"],
     "stage.global_batch=10 is not a multiple of stage.micro_batch (2) x cluster.num_learners (3) = 6; "
     "set stage.global_batch to a multiple of 6 (e.g. 6 or 12)"),
    (["data.sft_path=/nonexistent/rows.jsonl"], "data.sft_path=/nonexistent/rows.jsonl does not exist"),
    (["stage.zero_stage=4"], "stage.zero_stage=4: DeepSpeed ZeRO stages are 0, 1, 2, 3"),
    (["stage.train_rounds=first"], "stage.train_rounds='first'"),
    (["+stage.learning_rate=1e-5"], "unknown setting(s) stage.learning_rate"),
    (["model=qwen2_5_vl_7b"], "model.path=/models/Qwen2.5-VL-7B-Instruct"),
    (["model.tiny_copy_pretrain_steps=-5"], "model.tiny_copy_pretrain_steps=-5: must be >= 0"),
])
def test_bad_configs_are_refused_with_what_to_change(overrides, message):
    with pytest.raises(ConfigError) as refused:
        typed(_compose(*overrides)[0])
    assert message in str(refused.value)


def test_more_gpus_than_the_cluster_has_is_refused():
    config = typed(_compose("cluster=gpu_node", "stage=sft")[0])
    with pytest.raises(ConfigError) as refused:
        validate_resources(config, available_gpus=2, available_cpus=64)
    assert "asked for 8 GPU(s) (cluster.num_learners=8 x cluster.gpus_per_learner=1) but the cluster has 2; " \
           "lower cluster.num_learners to 2" in str(refused.value)
    validate_resources(config, available_gpus=8, available_cpus=64)  # fits: no error


def test_cli_refuses_before_starting_ray(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "launch.train", "cluster.num_learners=4", "cluster.gpus_per_learner=1",
                           "cluster.num_gpus=0", f"output_dir={tmp_path}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "asked for 4 GPU(s)" in done.stderr and "cluster.gpus_per_learner=0 for CPU learners" in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout
    assert not (tmp_path / "sft").exists()
