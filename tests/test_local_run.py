"""A local `python -m launch.train` seen from outside, as a laptop user would run it (two CPU learners):
every socket it listens on is on 127.0.0.1 (Ray's GCS, raylet, workers, agents, the learners'
rendezvous and gloo); Hydra's train.log holds the step lines and the start-up messages; a SIGKILL of
the driver leaves no process of the run behind; and nothing is written under $HOME."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_probe import MARKER, end_all, is_loopback, listening, marked, new_marker

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _train_log(out: Path) -> str:
    logs = list((out / ".hydra").glob("*/train.log"))
    return logs[0].read_text() if logs else ""


def test_local_run_listens_on_loopback_logs_steps_and_a_killed_driver_leaves_nothing(tiny_model_dir, sft_rows_file,
                                                                                       tmp_path):
    marker, out, home = new_marker(), tmp_path / "out", tmp_path / "home"
    home.mkdir()
    # A user's shell: no W&B/HF/Ray folders configured, an empty home; only the op cache is shared (it
    # takes minutes to build) and the marker finds every process the run starts.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HF_", "RAY_", "TRANSFORMERS_"))}
    env.update({MARKER: marker, "HOME": str(home), "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline",
                "HF_HUB_OFFLINE": "1"})
    cmd = [sys.executable, "-m", "launch.train", f"output_dir={out}", f"model.path={tiny_model_dir}",
           f"data.sft_path={sft_rows_file}", "stage.global_batch=2", "stage.micro_batch=1", "stage.epochs=500",
           "cluster.num_learners=2", "checkpoint.every_steps=0"]
    console = open(tmp_path / "console.txt", "w")  # what the user's terminal would show
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=console, stderr=subprocess.STDOUT)
    sockets: dict = {}
    try:
        deadline = time.time() + 420
        while "[sft] step      3 |" not in _train_log(out):
            assert proc.poll() is None, f"the run ended early ({proc.returncode}):\n{_train_log(out)[-3000:]}"
            assert time.time() < deadline, _train_log(out)[-3000:]
            sockets.update(listening(marker))
            time.sleep(0.5)
        sockets.update(listening(marker))  # learners, rendezvous and gloo are all up by now
        proc.kill()  # SIGKILL: no handler of the driver runs
        proc.wait(timeout=30)
        killed_at = time.time()
        while marked(marker) and time.time() - killed_at < 60:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in marked(marker)]
        print(f"after SIGKILL of the driver, its Ray was gone in {time.time() - killed_at:.1f} s")
    finally:
        end_all(marker)
        console.close()

    assert not left, f"processes of the killed run still alive: {left}"
    names = set(sockets.values())
    assert len(sockets) >= 6 and any("raylet" in n for n in names) and any("Learner" in n for n in names), sockets
    assert all(is_loopback(ip) for ip, _port in sockets), {k: v for k, v in sockets.items() if not is_loopback(k[0])}
    log = _train_log(out)
    for line in ("starting a local Ray on 127.0.0.1", "preparing DeepSpeed's CPU communication op",
                 "starting 2 learner(s)", "[sft] step      1 | loss", "[sft] step      2 | loss"):
        assert line in log, (line, log[-3000:])
    # The warnings a user cannot act on stay out of the console: DeepSpeed's per-learner accelerator
    # guess and W&B's git warning (the learners' own output reaches the console through Ray).
    shown = (tmp_path / "console.txt").read_text()
    assert "(Learner pid=" in shown and "[sft] step      1 |" in shown
    assert "Setting accelerator to CPU" not in shown and "wandb: WARNING" not in shown, shown[-3000:]
    written = [str(p.relative_to(home)) for p in home.rglob("*")]
    assert not written, f"files under $HOME: {written}"
