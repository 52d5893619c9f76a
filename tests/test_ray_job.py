"""`ray job submit` as users run it: a Ray head on 127.0.0.1 only (with its dashboard and job server),
`python -m launch.submit train ...` uploads this checkout and follows the job's status and log to
success, the entrypoint joins the cluster and sizes its learners from it, and the test stops the head
it started (only its own processes)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from process_probe import MARKER, end_all, is_loopback, listening, marked, new_marker

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_worker_range(taken: list[int], width: int = 201) -> int:
    """The first port of `width` free ports that holds none of `taken`. Searched below Linux's usual
    ephemeral range (32768+), where the single ports come from: a range starting at one more free
    port may contain one of them, and Ray then refuses to start (as it did once in CI)."""
    for low in range(20000, 32768 - width, width):
        span = range(low, low + width)
        if not any(p in span for p in taken) and all(_bindable(p) for p in span):
            return low
    raise RuntimeError("no free range of worker ports in 20000-32767")


@pytest.fixture
def ray_head():
    """A head started with `ray start --node-ip-address=127.0.0.1`, every port of its own (other Ray
    instances may run on this machine); yields (dashboard URL, marker, env)."""
    marker = new_marker()
    singles = _free_ports(9)
    gcs, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = singles
    worker_lo = _free_worker_range(singles)
    env = {**os.environ, MARKER: marker, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # the job's entrypoint runs `python`: this interpreter's, with the project installed
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    temp = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # Ray's socket paths must stay short
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--port={gcs}", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", f"--min-worker-port={worker_lo}", f"--max-worker-port={worker_lo + 200}",
           "--num-cpus=4", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dash}", marker, env
    finally:
        end_all(marker)
        deadline = time.time() + 30
        while marked(marker) and time.time() < deadline:
            time.sleep(0.5)
        assert not marked(marker), [p.name() for p in marked(marker)]


def test_submit_train_job_follows_it_to_success_on_a_loopback_head(ray_head, tiny_model_dir, sft_rows_file, tmp_path):
    address, marker, env = ray_head
    # Nothing of the head listens beyond 127.0.0.1: GCS, raylet, dashboard, job server, agents.
    sockets = listening(marker)
    assert (("127.0.0.1", int(address.rsplit(":", 1)[1])) in sockets), sockets
    assert len(sockets) >= 5 and all(is_loopback(ip) for ip, _port in sockets), sockets

    out = tmp_path / "job_out"
    # No cluster= override: launch.submit runs it with cluster=ray_cluster, sized from the head (no GPUs:
    # one CPU learner). Paths are absolute, as a cluster needs.
    cmd = [sys.executable, "-m", "launch.submit", "--address", address, "train", f"output_dir={out}",
           f"model.path={tiny_model_dir}", f"data.sft_path={sft_rows_file}", "stage.max_steps=2",
           "stage.global_batch=2", "stage.micro_batch=1", "cluster.cpus_per_learner=1", "logging=disabled"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=480)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert done.stdout.startswith("submitted job ") and done.stdout.rstrip().endswith("SUCCEEDED"), log[-3000:]
    # The job's log (printed while following) holds the step lines and the cluster sizing.
    assert "[sft] step      2 |" in log and "joining the Ray cluster" in log, log[-3000:]
    assert (out / "sft" / "checkpoints" / "step_00000002" / "hf" / "config.json").is_file()
    print(f"job submitted and finished in {time.perf_counter() - started:.0f} s")

    # Validation happens before anything is uploaded: a relative output_dir is refused at once.
    refused = subprocess.run([sys.executable, "-m", "launch.submit", "--address", address, "train", "output_dir=runs/x"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "output_dir=runs/x is relative" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    # The documented plain `ray job submit` with the runtime-env file, and the default config as the
    # entrypoint (cluster=local_cpu: it must join the job's cluster, not start its own Ray).
    plain_out = tmp_path / "plain_out"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--no-wait",
           "--runtime-env", "launch/runtime_env.yaml", "--submission-id", "plain-default", "--",
           "python", "-m", "launch.train", f"output_dir={plain_out}", f"model.path={tiny_model_dir}",
           f"data.sft_path={sft_rows_file}", "stage.max_steps=1", "logging=disabled"]
    submitted = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + 420
    while str(client.get_job_status("plain-default").value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline
        time.sleep(2)
    logs = client.get_job_logs("plain-default")
    assert str(client.get_job_status("plain-default").value) == "SUCCEEDED", logs[-4000:]
    assert "joining the Ray cluster" in logs and "starting a local Ray" not in logs and "[sft] step      1 |" in logs

    # The head's processes are still the only ones carrying the marker; the fixture ends them.
    assert marked(marker)
