"""launch.train with a GRPO stage: `pipeline=[sft_small,grpo_small]` through the Hydra entry point, the
GRPO stage starting from the SFT stage's checkpoint, dynamic sampling with nothing to learn from, RL rows with a corrupt image and a broken line
skipped and counted; the configuration and placement checks that run before Ray starts."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from envs.data import RlRow, write_rl_rows
from launch.train import CONF_DIR, check_fits, compose_stages, run, typed
from learners.rl_data import load_rl_prompts, step_prompts
from learners.train_config import ConfigError
from learners.warm_start import QUESTION, colour_images


@pytest.fixture(scope="module")
def rl_file(scratch_dir):
    images = colour_images(scratch_dir / "cli-colours")
    rows = [RlRow(messages=[{"role": "user", "content": f"<image>\n{QUESTION}"}], images=[images[c]], solution=c,
                  question=QUESTION, id=f"row{i}", category="direct") for i, c in enumerate(["red", "green", "blue", "red"])]
    path = scratch_dir / "rl_rows.jsonl"
    write_rl_rows(rows, path)
    with open(path, "a") as f:  # one row whose image is not an image, one line that is not JSON
        f.write(json.dumps({"messages": [{"role": "user", "content": "<image>\nq"}], "images": ["bm90IGFuIGltYWdl"],
                            "solution": "x", "question": "q"}) + "\n")
        f.write("{not json\n")
    return path


def test_rl_rows_are_loaded_with_counted_skips(rl_file, scratch_dir):
    prompts, counts = load_rl_prompts(rl_file, scratch_dir / "rl-cache")
    assert [p["answer"] for p in prompts] == ["red", "green", "blue", "red"]
    assert counts.kept == 4 and counts.skipped == {"bad_image": 1, "bad_json": 1}
    assert prompts[0]["question"] == QUESTION and prompts[0]["category"] == "direct"
    # Each epoch is a seeded shuffle cut into steps: the same step always gets the same prompts.
    assert step_prompts(10, 3, seed=1, step=4) == step_prompts(10, 3, seed=1, step=4)
    epoch = [i for step in range(3) for i in step_prompts(10, 3, seed=1, step=step)]
    assert len(set(epoch)) == 9  # no prompt twice within an epoch (the tenth waits for the next one)
    assert step_prompts(10, 3, seed=1, step=3) != step_prompts(10, 3, seed=1, step=0)  # epoch 2 reshuffles


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
        return cfg, compose_stages(cfg, overrides)


def test_grpo_settings_and_placement_are_checked_before_ray():
    cfg, _ = _compose(["stage=grpo_small", "stage.grpo.group_size=3"])
    with pytest.raises(ConfigError, match="multiple of stage.grpo.group_size=3"):
        typed(cfg)
    cfg, _ = _compose(["stage=grpo_small", "stage.grpo.overlap=true"])
    with pytest.raises(ConfigError, match="max_staleness=1"):
        typed(cfg)
    cfg, _ = _compose(["stage=grpo_small", "+stage.grpo.klbeta=1"])
    with pytest.raises(ConfigError, match="unknown setting.*stage.grpo.klbeta"):
        typed(cfg)
    cfg, _ = _compose(["stage=grpo", "cluster=gpu_node"])
    config = typed(cfg)
    assert config.cluster.num_learners == 4  # cluster.rl_num_learners: GRPO leaves GPUs to the engines
    assert check_fits(config, cfg, 8, 64) == 50
    with pytest.raises(ConfigError, match=r"needs 8 GPUs but the cluster has 4 .*4 rollout engine\(s\)"):
        check_fits(config, cfg, 4, 64)


@pytest.mark.slow
def test_sft_then_grpo_pipeline(ray_cluster, tiny_model_dir, rl_file, scratch_dir):
    out = scratch_dir / "grpo_cli"
    overrides = ["pipeline=[sft_small,grpo_small]", f"output_dir={out}", f"model.path={tiny_model_dir}",
                 f"data.generate_dir={scratch_dir / 'cli_sft_tasks'}", "data.generate_per_category=2",
                 f"data.rl_path={rl_file}", "stage.max_steps=1", "logging=disabled", "++stage.grpo.zero_variance=drop",
                 "rollout.max_new_tokens_per_round=16", "rollout.max_turns=2", "+rollout.engine_options.torch_threads=1"]
    _, stages = _compose(overrides)
    sft, grpo = run(stages)
    assert (sft.steps, grpo.steps) == (1, 1) and grpo.metric == "reward"
    state = json.loads((out / "grpo/checkpoints/step_00000001/trainer_state.json").read_text())
    assert state["model_path"] == sft.hf_dir and state["num_prompts"] == 4  # from the SFT output; 2 rows skipped
    step = json.loads((out / "grpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert step["episodes"] == 16 and step["groups"] == 4 and step["step"] == 1
    for key in ("generate_s", "reward_s", "update_s", "sync_s", "reward", "format_rate"):
        assert key in step, key
    # A 1-step SFT model earns nothing: every group has equal rewards, is dropped (zero_variance=drop),
    # refilled twice from new prompts in vain; the step then skips its update instead of failing.
    assert step["zero_variance_groups"] == 4 and step["trajectories"] == 0 and step["update_skipped"] == 1
    assert json.loads((out / "train_result.json").read_text())[1]["hf_dir"] == grpo.hf_dir
