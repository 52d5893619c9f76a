"""Hydra multirun and resume identity, as the issue reported them broken: every job of
`-m stage.lr=A,B` trains in its own folder (no job resumes another's checkpoint), is its own W&B
run and group, and the sweep ends with a table of settings -> final loss; rerunning a job's folder
with another learning rate is refused naming the setting, while an operational change resumes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from launch.train import CONF_DIR, run
from learners.train_config import ConfigError
from learners.wandb_run import pipeline_group

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_sweep_jobs_have_their_own_folders_runs_and_a_summary(tiny_model_dir, sft_rows_file, tmp_path, ray_cluster):
    out = tmp_path / "sweep"
    common = [f"model.path={tiny_model_dir}", f"data.sft_path={sft_rows_file}", "stage.max_steps=2",
              "stage.global_batch=2", "stage.micro_batch=1", "stage.warmup_ratio=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "launch.train", "-m", "stage.lr=1e-3,3e-3", f"output_dir={out}", *common],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    [sweep] = out.glob("sweep-*")
    jobs = [sweep / "job0", sweep / "job1"]
    lrs, run_ids = [], []
    for job in jobs:
        record = json.loads((job / "sft" / "run_config.json").read_text())
        lrs.append(record["config"]["stage"]["lr"])
        assert record["config"]["output_dir"] == str(job)
        assert (job / "sft" / "checkpoints" / "step_00000002" / "hf" / "config.json").is_file()
        assert "[sft] step      2 |" in (job / "train.log").read_text()  # Hydra's per-job log has the steps
        [offline] = (job / "sft" / "wandb").glob("offline-run-*")
        run_ids.append(offline.name.rsplit("-", 3)[-3:])
    assert lrs == [1e-3, 3e-3] and run_ids[0] != run_ids[1]
    assert pipeline_group(str(jobs[0]), None) != pipeline_group(str(jobs[1]), None)

    # The summary: one row per job, the swept setting and each job's own final loss.
    results = [json.loads((job / "train_result.json").read_text())[0] for job in jobs]
    assert results[0]["losses"] != results[1]["losses"]  # job 2 trained, it did not load job 1's result
    table = (sweep / "sweep_summary.md").read_text()
    assert table.splitlines()[0] == "| job | stage.lr | sft steps | sft final loss | status |"
    for job, result in zip(("job0", "job1"), results):
        assert f"{result['last_loss']:.4f}" in next(line for line in table.splitlines() if line.startswith(f"| {job} "))
    assert table in done.stdout
    # W&B says where each offline run went, but neither its git warning nor its end-of-run summary block.
    assert "Run data is saved locally" in done.stderr
    assert "wandb: Run summary" not in done.stderr and "wandb: WARNING" not in done.stderr

    # Rerunning job0's folder with another learning rate is refused, the setting named, before training.
    def config(lr="1e-3", *extra):
        overrides = [f"output_dir={jobs[0]}", f"stage.lr={lr}", *common, *extra]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose(config_name="config", overrides=overrides)
    with pytest.raises(ConfigError) as refused:
        run([config("2e-3")])
    assert "stage.lr: 0.001 (recorded) -> 0.002 (this run)" in str(refused.value)
    assert "checkpoint.resume=false" in str(refused.value)
    # An operational change (how often to log) is the same training run: it finds the stage complete.
    [again] = run([config("1e-3", "logging.every_steps=5")])
    assert again.losses == results[0]["losses"]
