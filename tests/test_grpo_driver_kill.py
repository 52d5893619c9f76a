"""A GRPO run whose driver is SIGKILLed while it writes a checkpoint, seen from outside as a user would
run it (`python -m launch.train stage=grpo_small ...`): no process of the run is left behind, the
half-written checkpoint is invisible and the previous one loads, and the same command run again
resumes at that checkpoint's step and finishes the schedule with one metrics line per step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_probe import MARKER, end_all, marked, new_marker

from envs.data import RlRow, write_rl_rows
from learners.checkpoint_io import TMP_PREFIX, list_checkpoints
from learners.warm_start import QUESTION, colour_images

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
MAX_STEPS = 4  # 2 epochs of 4 prompts, 2 prompts (8 episodes) a step


def _rl_rows(folder: Path) -> Path:
    images = colour_images(folder / "colours")
    rows = [RlRow(messages=[{"role": "user", "content": f"<image>\n{QUESTION}"}], images=[images[c]], solution=c,
                  question=QUESTION, id=f"row{i}", category="direct") for i, c in enumerate(["red", "green", "blue", "red"])]
    path = folder / "rl_rows.jsonl"
    write_rl_rows(rows, path)
    return path


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_gone(marker: str, timeout_s: float = 60) -> list:
    started = time.time()
    while marked(marker) and time.time() - started < timeout_s:
        time.sleep(0.5)
    return [(p.pid, p.name()) for p in marked(marker)]


def test_driver_killed_mid_checkpoint_leaves_nothing_and_the_rerun_resumes(tiny_model_dir, tmp_path):
    marker, out = new_marker(), tmp_path / "out"
    env = {**os.environ, MARKER: marker, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    # The random tiny model is enough here: with zero_variance=keep every step trains and checkpoints.
    cmd = [sys.executable, "-m", "launch.train", "stage=grpo_small", f"output_dir={out}", f"model.path={tiny_model_dir}",
           f"data.rl_path={_rl_rows(tmp_path)}", f"stage.max_steps={MAX_STEPS}", "stage.epochs=2", "stage.global_batch=8",
           "stage.micro_batch=4", "cluster.num_learners=1", "checkpoint.every_steps=1", "checkpoint.keep_last=3",
           "logging=disabled", "rollout.max_new_tokens_per_round=16", "rollout.max_turns=2",
           "+rollout.engine_options.torch_threads=1"]
    checkpoints = out / "grpo" / "checkpoints"
    proc = _start(cmd, env, tmp_path / "first.log")
    try:
        # Poll far faster than a checkpoint is written; kill the driver as soon as the temp folder of a
        # checkpoint after the first appears (the first complete one is then what must survive).
        deadline, killed_during = time.time() + 600, None
        while killed_during is None:
            assert proc.poll() is None, f"the run ended early ({proc.returncode}):\n{(tmp_path / 'first.log').read_text()[-3000:]}"
            assert time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            temps = [p.name for p in checkpoints.glob(TMP_PREFIX + "step_*")] if checkpoints.is_dir() else []
            if temps and temps[0] != TMP_PREFIX + "step_00000001":
                proc.kill()  # SIGKILL: no handler of the driver runs
                killed_during = int(temps[0].rsplit("_", 1)[1])
            time.sleep(0.005)
        proc.wait(timeout=30)
        left = _wait_gone(marker)
    finally:
        end_all(marker)
    assert not left, f"processes of the killed run still alive: {left}"

    # The interrupted write stays a temp folder; the newest complete checkpoint is the step before it and loads.
    assert (checkpoints / f"{TMP_PREFIX}step_{killed_during:08d}").is_dir(), "the kill did not land mid-write"
    complete = list_checkpoints(checkpoints)
    assert complete and complete[-1][0] == killed_during - 1, (killed_during, complete)
    state = json.loads((complete[-1][1] / "trainer_state.json").read_text())
    assert state["step"] == killed_during - 1
    from policy.model import load_policy

    model, _processor = load_policy(complete[-1][1] / "hf")
    assert sum(p.numel() for p in model.parameters()) > 0

    # The same command again: resumes there and ends the schedule.
    marker = new_marker()
    env[MARKER] = marker
    rerun = _start(cmd, env, tmp_path / "rerun.log")
    try:
        rc = rerun.wait(timeout=900)
        left = _wait_gone(marker)
    finally:
        end_all(marker)
    log = (tmp_path / "rerun.log").read_text()
    assert rc == 0, log[-3000:]
    assert not left, f"processes of the finished rerun still alive: {left}"
    assert f"(step {killed_during - 1})" in log and "resumed grpo from" in log, log[-3000:]
    assert list_checkpoints(checkpoints)[-1][0] == MAX_STEPS
    assert not list(checkpoints.glob(TMP_PREFIX + "*")), "the stale temp folder was not cleared"
    steps = [json.loads(line)["step"] for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))
