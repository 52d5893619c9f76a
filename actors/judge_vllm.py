"""The judge model inside the Ray job: vLLM's OpenAI-compatible server on the job's own GPUs.

`VLLMJudgeGroup` reserves `gpus` GPUs in one placement group, as gpus / tensor_parallel_size bundles;
on each bundle a `VLLMJudgeServer` actor runs `vllm serve` (vLLM 0.32's public CLI) over the bundle's
GPUs (tensor parallel inside the replica), waits for its /health and returns its URL. The reward actor
then reaches every replica through the same HTTP client as `judge=openai` (rewards/judge.py), so one
client, its retries, cache and deadline serve both backends.

UNTESTED ON GPUs: vLLM cannot run on the project's CPU machines. Tests here cover the placement (with
Ray's pretend GPUs), the command line, and the clear error when vLLM is not installed.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.vllm_serve import vllm_serve_command
from rewards.config import VLLMJudgeConfig

VLLM_MISSING = (
    "judge=vllm needs vLLM on the GPU nodes, and it is not installed in this environment: install it with "
    "`pip install -c constraints.txt -e .[vllm]` (vLLM 0.32, CUDA GPUs), or use judge=openai with a running "
    "server, or judge=none for rules only"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@ray.remote(num_cpus=1)
class VLLMJudgeServer:
    """One `vllm serve` process on the GPUs Ray gave this actor (CUDA_VISIBLE_DEVICES)."""

    def __init__(self, cfg: Mapping[str, Any], replica: int):
        self.cfg = VLLMJudgeConfig(**{**cfg, "extra_args": tuple(cfg.get("extra_args", ()))})
        self.replica = replica
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"vllm-judge-{os.getpid()}-{replica}.log"

    def visible_gpus(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def start(self) -> str:
        """Start the server and wait for /health; returns its base URL (http://node-ip:port/v1)."""
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(VLLM_MISSING)
        port = _free_port()
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(vllm_serve_command(self.cfg, port), stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"vllm serve for the judge (replica {self.replica}) exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return f"http://{ray.util.get_node_ip_address()}:{port}/v1"
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(5)  # loading a 72B model takes minutes; polling faster buys nothing
        self.stop()
        raise TimeoutError(
            f"vllm serve (replica {self.replica}) was not healthy after judge.vllm.startup_timeout_s="
            f"{self.cfg.startup_timeout_s}s; see {self.log_path}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


class VLLMJudgeGroup:
    """gpus / tensor_parallel_size judge replicas on one placement group of their own."""

    def __init__(self, cfg: VLLMJudgeConfig, ready_timeout_s: float = 600.0):
        self.cfg = cfg
        self.ready_timeout_s = ready_timeout_s
        self.placement_group = None
        self.servers: list = []

    def place(self) -> list:
        """Reserve the GPUs and create the server actors (nothing is loaded yet)."""
        tp = self.cfg.tensor_parallel_size
        replicas = self.cfg.gpus // tp
        # One bundle per replica: its tensor-parallel GPUs must share a node.
        self.placement_group = placement_group([{"GPU": tp, "CPU": 1}] * replicas, strategy="PACK")
        ready, _ = ray.wait([self.placement_group.ready()], timeout=self.ready_timeout_s)
        if not ready:
            remove_placement_group(self.placement_group)
            raise TimeoutError(
                f"could not reserve {replicas} x {tp} GPUs for the vLLM judge within {self.ready_timeout_s}s; "
                "lower judge.vllm.gpus or free GPUs"
            )
        self.servers = [
            VLLMJudgeServer.options(
                num_gpus=tp,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=i),
            ).remote(asdict(self.cfg), i)
            for i in range(replicas)
        ]
        return self.servers

    def start(self) -> list[str]:
        """Place (if needed) and start every replica; returns their URLs for the judge client."""
        if not self.servers:
            self.place()
        try:
            return ray.get([s.start.remote() for s in self.servers])
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.servers:
            ray.get([s.stop.remote() for s in self.servers])
            for s in self.servers:
                ray.kill(s)
            self.servers = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None
