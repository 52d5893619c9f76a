"""launch.train's on-the-fly SFT rows are written with the run's prompt (prompt=demo included), and a
folder of rows written with another prompt is refused instead of silently trained on."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from envs.data.thyme_prompt import load_prompt_texts
from launch.stage_inputs import PROMPT_FILE, ensure_generated_data
from launch.train import CONF_DIR, typed
from learners.train_config import ConfigError


def _config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return typed(cfg), OmegaConf.to_container(cfg.prompt, resolve=True)


def test_generated_rows_use_the_runs_prompt(tmp_path):
    config, prompt = _config("prompt=demo", f"data.generate_dir={tmp_path / 'rows'}", "data.generate_per_category=1")
    rows = ensure_generated_data(config, prompt)
    demo = load_prompt_texts("demo")
    questions = [json.loads(line)["question"] for line in rows.read_text().splitlines()]
    assert questions and all(q.endswith("Reply <think> ... </think> <answer> ... </answer>") for q in questions)
    assert not any("/images/" in q for q in questions)  # the demo prompt names no file
    assert load_prompt_texts(str(tmp_path / "rows" / PROMPT_FILE)) == demo
    # the same folder under another prompt: refused with what to do, the rows left as they are
    thyme_config, thyme = _config("prompt=thyme", f"data.generate_dir={tmp_path / 'rows'}")
    before = rows.read_text()
    with pytest.raises(ConfigError, match="another prompt"):
        ensure_generated_data(thyme_config, thyme)
    assert rows.read_text() == before
