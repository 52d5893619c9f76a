"""Start a local Ray bound to 127.0.0.1, or join a running cluster; what every trainer's driver uses.

Which one: `cluster.address` when set ("auto", "ray://host:10001", "host:6379"), else the RAY_ADDRESS
that `ray job submit` gives a job's entrypoint, else a local Ray of our own.

A local Ray listens on 127.0.0.1 only: Ray's job API runs anyone's code without authentication, so a
laptop's Ray must not be reachable from its network. Ray resolves "127.0.0.1" given as
`_node_ip_address` to the machine's network address, and its servers then listen on every interface;
with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's single-machine mode, the default on macOS) its node
address is the loopback one and GCS, raylet, workers, agents and the learners' rendezvous
(ray.util.get_node_ip_address) all stay on it. A local session also starts launch.ray_reaper, so a
killed driver leaves no Ray process behind.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

from launch.ray_reaper import TOKEN_VAR
from learners.spinner import spinner
from learners.train_config import ConfigError

log = logging.getLogger("launch.ray_session")
LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV_FILE = REPO_ROOT / "launch" / "runtime_env.yaml"


def joined_address(cluster_address: str | None) -> str | None:
    """The cluster to join (config first, then a job entrypoint's RAY_ADDRESS), or None for a local Ray."""
    return cluster_address or os.environ.get("RAY_ADDRESS") or None


def bind_local_only() -> None:
    """Make this process and the Ray it starts use 127.0.0.1 (see the module docstring)."""
    os.environ[LOCAL_ONLY_VAR] = "0"
    if "ray" in sys.modules:  # imported already (tests): the constant was read from the environment at import
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def worker_env() -> dict:
    """The driver's settings every Ray worker of the run needs too (op cache, W&B and HF folders)."""
    env = {}
    for key in ("TORCH_EXTENSIONS_DIR", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "HF_HOME", "HF_HUB_OFFLINE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a host:port address (Ray itself would retry for minutes), else None."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None  # "auto" and the like: Ray finds the local cluster or fails at once
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"


def job_runtime_env(extra_env: dict | None = None) -> dict:
    """launch/runtime_env.yaml with this checkout as the working dir and `extra_env` added to its env vars."""
    from omegaconf import OmegaConf

    env = OmegaConf.to_container(OmegaConf.load(RUNTIME_ENV_FILE), resolve=True)
    env["working_dir"] = str(REPO_ROOT)
    env["env_vars"] = {**env.get("env_vars", {}), **(extra_env or {})}
    return env


class RaySession:
    """`session.start(...)` once, `session.stop()` at the end (a no-op when Ray was already running)."""

    def __init__(self, cluster_address: str | None):
        self.address = joined_address(cluster_address)
        self.started = False
        self._reaper: subprocess.Popen | None = None

    @property
    def joined(self) -> bool:
        return self.address is not None

    def start(self, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        """Join the cluster, or start the local Ray with these logical CPUs/GPUs."""
        import ray

        if ray.is_initialized():  # tests run their own session-wide Ray
            return
        if self.joined:
            # A job's entrypoint already runs inside the job's runtime env (working dir, env vars): pass
            # none of our own, or Ray would replace the job's. Joining from a shell on the head instead
            # ships this checkout as `ray job submit` would.
            in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or os.environ.get("RAY_ADDRESS") == self.address
            runtime_env = None if in_job else job_runtime_env(worker_env())
            unreachable = _unreachable(self.address)
            if unreachable:
                raise self._join_refused(unreachable)
            try:
                with spinner(f"joining the Ray cluster at {self.address}"):
                    ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise self._join_refused(str(exc)) from None
        else:
            bind_local_only()
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes a token under $HOME
            token = self._start_reaper()
            env = {"PYTHONPATH": str(REPO_ROOT), **worker_env()}
            # Only Ray's processes may carry the token (GCS and raylet inherit it now, workers from the
            # raylet): anything else the driver starts later (W&B's service) must outlive this session.
            os.environ[TOKEN_VAR] = token
            try:
                with spinner(f"starting a local Ray on 127.0.0.1 ({num_cpus} CPUs, {num_gpus or 0} GPUs)"):
                    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                             runtime_env={"env_vars": env})
            finally:
                os.environ.pop(TOKEN_VAR, None)
        self.started = True

    def _start_reaper(self) -> str:
        token = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        self._reaper = subprocess.Popen([sys.executable, "-m", "launch.ray_reaper", token, str(os.getpid())],
                                        stdin=subprocess.PIPE, cwd=REPO_ROOT, env={**env, "PYTHONPATH": str(REPO_ROOT)},
                                        start_new_session=True)
        return token

    def _join_refused(self, why: str) -> ConfigError:
        return ConfigError(f"could not join the Ray cluster at {self.address}: {why}; start it first (`ray start "
                           "--head` on the head node), fix cluster.address, or use cluster=local_cpu with "
                           "RAY_ADDRESS unset for a local Ray")

    def stop(self) -> None:
        import ray

        if self.started:
            ray.shutdown()
            self.started = False
        if self._reaper is not None:
            # Closing the pipe tells the reaper we are done: it removes whatever Ray left and exits.
            self._reaper.stdin.close()
            self._reaper = None
